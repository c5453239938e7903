//! The published layouts load to the same model: Kimi-K2.5's two name spellings, its
//! `quantization_config` at either level, and a bf16 shared expert next to MXFP4 routed ones.

use model_deepseek::Model;
use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadError, LoadOptions, Prefix};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use model_deepseek::weights::Matrix;
use model_deepseek::{KvCache, SeqId, SequenceChunk};

const PROMPT: [u32; 6] = [296, 72, 101, 108, 108, 111];

fn logits(model: &Model) -> Matrix {
    let mut cache = KvCache::new(model.config(), PROMPT.len());
    let chunk = SequenceChunk {
        seq: SeqId(0),
        tokens: &PROMPT,
    };
    let out = model.forward_all_positions(&[chunk], &mut cache).unwrap();
    out.into_iter().next().unwrap()
}

fn kimi(layout: TinyLayout, shared: SharedExperts) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        layout,
        shared_experts: shared,
        n_routed_experts: 384,
        n_shared_experts: 1,
        seed: 4,
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    dir
}

#[test]
fn kimi_nested_and_flat_spellings_load_the_same_model() {
    let nested = kimi(TinyLayout::KimiK25, SharedExperts::Quantized);
    let flat = kimi(TinyLayout::KimiK25Flat, SharedExperts::Quantized);
    let a = loader::load(nested.path(), &LoadOptions::default()).unwrap();
    let b = loader::load(flat.path(), &LoadOptions::default()).unwrap();
    assert_eq!(a.report.layout, Prefix::KimiNested);
    assert_eq!(b.report.layout, Prefix::KimiFlat);
    assert_eq!(a.model.weights(), b.model.weights());
    assert_eq!(logits(&a.model).data, logits(&b.model).data);
    let skipped: Vec<&str> = a.report.skipped.iter().map(|s| s.rule.as_str()).collect();
    assert_eq!(
        skipped,
        [
            "mm_projector.* (Kimi-K2.5 vision path; text only)",
            "vision_tower.* (Kimi-K2.5 vision path; text only)"
        ]
    );
}

#[test]
fn quantization_config_inside_text_config_is_honoured() {
    let dir = kimi(TinyLayout::KimiK25, SharedExperts::Bf16);
    let before = loader::load(dir.path(), &LoadOptions::default()).unwrap();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let q = config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config")
        .unwrap();
    config["text_config"]["quantization_config"] = q;
    std::fs::write(&path, config.to_string()).unwrap();
    let after = loader::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(before.report.layers, after.report.layers);
    assert_eq!(before.model.weights(), after.model.weights());
}

#[test]
fn bf16_shared_expert_next_to_mxfp4_experts_loads_unfused_and_runs() {
    let dir = kimi(TinyLayout::KimiK25, SharedExperts::Bf16);
    let auto = loader::load(dir.path(), &LoadOptions::default()).unwrap();
    assert!(!auto.report.fusion.model.fused);
    assert!(
        auto.report.fusion.layers[0]
            .decision
            .reason
            .contains("excluded from quantization by \"re:.*shared_experts.*\""),
        "{}",
        auto.report.fusion.layers[0].decision.reason
    );
    let schemes = &auto.report.layers[1].schemes;
    assert_eq!(schemes["mlp.shared_experts.gate_proj"], "unquantized");
    assert_eq!(
        schemes["mlp.experts.*.gate_proj"],
        "MXFP4 W4A4 (even scale rule)"
    );
    let out = logits(&auto.model);
    assert!(out.data.iter().all(|v| v.is_finite()));
    let off = loader::load(
        dir.path(),
        &LoadOptions {
            fusion: FusionMode::Off,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(logits(&off.model).data, out.data);
    let forced = loader::load(
        dir.path(),
        &LoadOptions {
            fusion: FusionMode::On,
            ..LoadOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&forced, LoadError::Fusion(why) if why.contains("shared_experts.gate_proj")),
        "{forced}"
    );
}
