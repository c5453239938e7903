//! `config.json` of a tiny checkpoint, in the published DeepSeek-V3 and Kimi-K2.5 shapes.

use serde_json::{Value, json};

use super::{SharedExperts, TinyLayout, TinySpec, tokenizer};

/// Residual width: two MXFP4 groups, small enough to run fast on two cores.
pub const HIDDEN: usize = 64;
/// Decoder layers: one dense, then MoE.
pub const LAYERS: usize = 3;
/// Vocabulary rows; at least the tokenizer's ids.
pub const VOCAB: usize = 384;
const _: () = assert!(VOCAB >= tokenizer::VOCAB_LEN);

/// Quark's MXFP4 quantizer spec; `dynamic` for activations, static for weights.
fn mxfp4(dynamic: bool) -> Value {
    json!({
        "dtype": "fp4", "qscheme": "per_group", "ch_axis": -1, "group_size": 32,
        "symmetric": null, "round_method": "half_even", "scale_type": "float",
        "scale_format": "e8m0", "scale_calculation_mode": "even", "mx_element_dtype": null,
        "observer_cls": "PerBlockMXObserver", "is_dynamic": dynamic,
    })
}

/// The exclude list: DeepSeek-V3 in literal style (every name spelled out, as some AMD exports
/// do), Kimi-K2.5 in regex style (as amd/Kimi-K2.5-MXFP4 does).
fn exclude(spec: &TinySpec) -> Vec<String> {
    let bf16_shared = spec.shared_experts == SharedExperts::Bf16;
    match spec.layout {
        TinyLayout::DeepseekV3 => {
            let mut out = vec!["lm_head".to_owned()];
            // kv_b_proj stays bf16 in every layer (the MTP layer included): it feeds the latent
            // attention's absorbed matmuls.
            for layer in 0..=LAYERS {
                out.push(format!("model.layers.{layer}.self_attn.kv_b_proj"));
                if bf16_shared && layer >= 1 {
                    for proj in ["gate_proj", "up_proj", "down_proj"] {
                        out.push(format!("model.layers.{layer}.mlp.shared_experts.{proj}"));
                    }
                }
            }
            out
        }
        TinyLayout::KimiK25 | TinyLayout::KimiK25Flat => {
            let mut out: Vec<String> = ["re:.*lm_head", r"re:.*self_attn.*"]
                .map(str::to_owned)
                .to_vec();
            if bf16_shared {
                // amd/Kimi-K2.5-MXFP4 before revision 94d8c1bd: shared experts and the dense
                // MLP stayed bf16.
                out.push("re:.*shared_experts.*".to_owned());
                out.push(r"re:.*mlp\.(gate|up|gate_up|down)_proj.*".to_owned());
            }
            out.extend(["re:vision_tower.*", "re:mm_projector.*"].map(str::to_owned));
            out
        }
    }
}

fn quantization_config(spec: &TinySpec) -> Value {
    json!({
        "quant_method": "quark",
        "quant_mode": "eager_mode",
        "version": "0.11",
        "global_quant_config": {
            "weight": mxfp4(false),
            "input_tensors": mxfp4(true),
            "output_tensors": null,
            "bias": null,
            "target_device": null,
        },
        "layer_type_quant_config": {},
        "layer_quant_config": {},
        "kv_cache_quant_config": {},
        "exclude": exclude(spec),
        "algo_config": null,
        "export": {
            "kv_cache_group": [],
            "min_kv_scale": 0.0,
            "pack_method": "reorder",
            "weight_format": "real_quantized",
            "weight_merge_groups": null,
        },
    })
}

/// The DeepSeek-V3 text config with tiny dimensions and the real routing constants.
fn text_config(spec: &TinySpec) -> Value {
    let kimi = spec.layout != TinyLayout::DeepseekV3;
    // DeepSeek-V3 routes over 8 groups keeping 4; Kimi over one group.
    let (n_group, topk_group) = if kimi { (1, 1) } else { (8, 4) };
    let yarn_factor: f64 = if kimi { 64.0 } else { 40.0 };
    // As in the published configs, the context is exactly factor × the original context:
    // transformers derives yarn's factor from that ratio when both are given.
    let original_context = 64;
    json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": if kimi { "kimi_k2" } else { "deepseek_v3" },
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "num_hidden_layers": LAYERS,
        "num_nextn_predict_layers": if kimi { 0 } else { 1 },
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": spec.n_routed_experts,
        "n_shared_experts": spec.n_shared_experts,
        "num_experts_per_tok": 8,
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": if kimi { 2.827 } else { 2.5 },
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": true,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "hidden_act": "silu",
        "rms_norm_eps": if kimi { 1e-5 } else { 1e-6 },
        "rope_theta": if kimi { 50000.0 } else { 10000.0 },
        "rope_scaling": {
            "type": "yarn",
            "factor": yarn_factor,
            "original_max_position_embeddings": original_context,
            "beta_fast": if kimi { 1.0 } else { 32.0 },
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "max_position_embeddings": (yarn_factor as usize) * original_context,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": false,
        "bos_token_id": tokenizer::BOS_ID,
        "eos_token_id": tokenizer::EOS_ID,
        "torch_dtype": "bfloat16",
        "use_cache": true,
    })
}

/// The whole `config.json`.
pub fn config_json(spec: &TinySpec) -> Value {
    let mut text = text_config(spec);
    match spec.layout {
        TinyLayout::DeepseekV3 => {
            text["quantization_config"] = quantization_config(spec);
            text
        }
        TinyLayout::KimiK25 | TinyLayout::KimiK25Flat => json!({
            "architectures": ["KimiK25ForConditionalGeneration"],
            "model_type": "kimi_k25",
            "text_config": text,
            "vision_config": {
                "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 64, "merge_kernel_size": [2, 2],
                "text_hidden_size": HIDDEN,
            },
            "media_placeholder_token_id": tokenizer::BOS_ID + 4,
            "quantization_config": quantization_config(spec),
            "torch_dtype": "bfloat16",
        }),
    }
}

/// The Kimi-K2.5 vision tensors (skipped by the text path): name and shape.
pub fn vision_tensors() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("vision_tower.patch_embed.proj.weight", vec![32, 3, 14, 14]),
        ("vision_tower.encoder.blocks.0.wqkv.weight", vec![96, 32]),
        ("vision_tower.encoder.blocks.0.wo.weight", vec![32, 32]),
        ("mm_projector.proj.0.weight", vec![HIDDEN, 128]),
        ("mm_projector.proj.2.weight", vec![HIDDEN, HIDDEN]),
    ]
}
