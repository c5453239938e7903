//! Shared-expert fusion decisions (with their reasons) for the published checkpoint shapes and
//! the cases that must not fuse, under every mode; and fused against unfused logits when a
//! two-wide shared MLP is cut into two expert slots.

use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::tiny::config::config_json;
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use model_deepseek::weights::FeedForward;
use model_deepseek::{KvCache, SeqId, SequenceChunk};
use serde_json::{Value, json};

fn spec(layout: TinyLayout, experts: usize, shared: usize, format: SharedExperts) -> TinySpec {
    TinySpec {
        layout,
        shared_experts: format,
        n_routed_experts: experts,
        n_shared_experts: shared,
        seed: 1,
    }
}

/// The decisions under auto, on and off: each a plan or the error text.
fn decisions(config: &Value) -> Value {
    let text = config.to_string();
    let mut out = serde_json::Map::new();
    for mode in [FusionMode::Auto, FusionMode::On, FusionMode::Off] {
        let value = match loader::fusion_for_config(&text, mode) {
            Ok(plan) => serde_json::to_value(plan).unwrap(),
            Err(e) => json!({ "error": e.to_string() }),
        };
        out.insert(mode.to_string(), value);
    }
    Value::Object(out)
}

fn text_config(config: &mut Value) -> &mut Value {
    if config.get("text_config").is_some() {
        &mut config["text_config"]
    } else {
        config
    }
}

#[test]
fn deepseek_v3_mxfp4() {
    let config = config_json(&spec(
        TinyLayout::DeepseekV3,
        256,
        1,
        SharedExperts::Quantized,
    ));
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn kimi_k25_mxfp4_quantized_shared_expert() {
    let config = config_json(&spec(TinyLayout::KimiK25, 384, 1, SharedExperts::Quantized));
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn kimi_k25_mxfp4_old_revision_bf16_shared_expert() {
    let config = config_json(&spec(TinyLayout::KimiK25, 384, 1, SharedExperts::Bf16));
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn deepseek_v2_style_160_experts_2_shared() {
    let config = config_json(&spec(
        TinyLayout::DeepseekV3,
        160,
        2,
        SharedExperts::Quantized,
    ));
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn no_shared_experts() {
    let config = config_json(&spec(
        TinyLayout::DeepseekV3,
        256,
        0,
        SharedExperts::Quantized,
    ));
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn norm_topk_prob_false() {
    let mut config = config_json(&spec(
        TinyLayout::DeepseekV3,
        256,
        1,
        SharedExperts::Quantized,
    ));
    text_config(&mut config)["norm_topk_prob"] = json!(false);
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn routed_scaling_factor_missing() {
    let mut config = config_json(&spec(TinyLayout::KimiK25, 384, 1, SharedExperts::Quantized));
    let removed = text_config(&mut config)
        .as_object_mut()
        .unwrap()
        .remove("routed_scaling_factor");
    assert!(removed.is_some());
    insta::assert_yaml_snapshot!(decisions(&config));
}

#[test]
fn kimi_int4_compressed_tensors_is_unsupported() {
    let mut config = config_json(&spec(TinyLayout::KimiK25, 384, 1, SharedExperts::Bf16));
    // moonshotai/Kimi-K2.5's own export: int4 routed experts, everything else ignored.
    config["quantization_config"] = json!({
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "symmetric": true,
                        "strategy": "group", "group_size": 32, "dynamic": false},
            "input_activations": null,
        }},
        "ignore": ["re:.*self_attn.*", "re:.*shared_experts.*",
                   "re:.*mlp\\.(gate|up|gate_up|down)_proj.*", "re:.*lm_head.*",
                   "re:vision_tower.*", "re:mm_projector.*"],
    });
    let decided = decisions(&config);
    for mode in ["auto", "on", "off"] {
        let error = decided[mode]["error"].as_str().unwrap();
        assert!(
            error.contains("unsupported quantization"),
            "{mode}: {error}"
        );
        assert!(error.contains("compressed-tensors"), "{mode}: {error}");
    }
    insta::assert_yaml_snapshot!(decided);
}

/// A DeepSeek-V2-style shared MLP (2 × moe_intermediate) cut into two expert slots computes
/// the same logits as the separate MLP, with either activation mode.
#[test]
fn two_shared_slots_fused_equal_unfused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        seed: 5,
        ..spec(TinyLayout::DeepseekV3, 160, 2, SharedExperts::Quantized)
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    let prompt = [296u32, 72, 101, 108, 108, 111, 32, 119, 111, 114];
    for activations in [ActivationMode::Unquantized, ActivationMode::Quantized] {
        let logits = |fusion| {
            let loaded = loader::load(
                dir.path(),
                &LoadOptions {
                    fusion,
                    activations,
                },
            )
            .unwrap();
            let moe = loaded
                .model
                .weights()
                .layers
                .iter()
                .find_map(|l| match &l.feed_forward {
                    FeedForward::Moe(m) => Some((m.experts.len(), m.shared.is_some())),
                    FeedForward::Dense(_) => None,
                })
                .unwrap();
            let expected = if fusion == FusionMode::On {
                (162, false)
            } else {
                (160, true)
            };
            assert_eq!(moe, expected, "fusion {fusion}");
            let model = loaded.model;
            let mut cache = KvCache::new(model.config(), prompt.len());
            let chunk = SequenceChunk {
                seq: SeqId(0),
                tokens: &prompt,
            };
            model
                .forward_all_positions(&[chunk], &mut cache)
                .unwrap()
                .pop()
                .unwrap()
        };
        let fused = logits(FusionMode::On);
        let unfused = logits(FusionMode::Off);
        let scale = unfused.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = fused
            .data
            .iter()
            .zip(&unfused.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Only the summation order differs (and, with quantized activations, nothing else:
        // each slot quantizes the same input rows).
        assert!(
            worst <= 1e-5 * scale.max(1.0),
            "{activations:?}: {worst} (scale {scale})"
        );
    }
}
