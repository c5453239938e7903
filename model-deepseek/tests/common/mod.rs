//! Tiny configs, models and checkpoints shared by the forward-pass tests.

// Each test crate includes this module and uses a different subset of it.
#![allow(dead_code)]

use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::synthetic::{SyntheticSpec, synthetic_weights};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use model_deepseek::{ActivationMode, ForwardOptions, Model, ModelConfig, parse_config};

/// A DeepSeek-V3-shaped config with tiny dims and a real expert count: 256 experts use
/// DeepSeek-V3's 8 groups / 4 kept, 384 Kimi's single group. YaRN is on (factor 4 over a
/// 64-token original context, `mscale_all_dim` 1) so rope scaling and the softmax mscale² are
/// exercised.
pub fn tiny_config(experts: usize, tie_word_embeddings: bool) -> ModelConfig {
    let (n_group, topk_group) = if experts == 256 { (8, 4) } else { (1, 1) };
    let text = serde_json::json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0
        },
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 0,
        "eos_token_id": 1
    });
    parse_config(&text.to_string())
        .expect("tiny config parses")
        .model
}

/// A model of `config` with random weights from `seed`.
pub fn tiny_model(
    config: &ModelConfig,
    spec: &SyntheticSpec,
    seed: u64,
    activations: ActivationMode,
) -> Model {
    let weights = synthetic_weights(config, spec, seed).expect("tiny dims are block aligned");
    Model::new(config.clone(), weights, ForwardOptions { activations }).expect("valid model")
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute value.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// The model of a tiny checkpoint of `layout` written from `seed` and loaded with `options`,
/// with the layout's real expert count (DeepSeek-V3's 256, Kimi's 384) so routing runs the
/// grouping of the real models.
pub fn load_tiny_checkpoint(
    layout: TinyLayout,
    shared: SharedExperts,
    seed: u64,
    options: &LoadOptions,
) -> Model {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        layout,
        shared_experts: shared,
        n_routed_experts: match layout {
            TinyLayout::DeepseekV3 => 256,
            _ => 384,
        },
        seed,
        ..TinySpec::default()
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    loader::load(dir.path(), options).unwrap().model
}

/// Relative L2 error of `got` against `want`.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}
