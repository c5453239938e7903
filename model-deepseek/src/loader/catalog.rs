//! The catalog of weights a DeepSeek-V3 text model has, by canonical name and shape.
//!
//! Canonical names are the DeepSeek-V3 checkpoint names (`model.layers.N.…`, `lm_head`); the
//! [`Layout`](crate::config::Layout) prefixes them for Kimi-K2.5. The loader checks a checkpoint
//! against this catalog and the tiny-checkpoint generator writes exactly this catalog, so the two
//! cannot drift apart.

use crate::config::ModelConfig;

/// What a weight is, which decides whether it may be quantized and how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A linear layer `[out, in]`: `NAME.weight`, plus `NAME.weight_scale` when MXFP4.
    Linear,
    /// The token embedding `[vocab, hidden]`, stored as `NAME` (never quantized).
    Embedding,
    /// An RMSNorm gain `[n]`, stored as `NAME` (never quantized).
    Norm,
    /// The MoE router `mlp.gate.weight` `[n_routed, hidden]` (never quantized).
    Router,
    /// The router's `e_score_correction_bias` `[n_routed]` (never quantized).
    RouterBias,
}

/// One weight of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightSpec {
    /// Canonical name: the module for [`Role::Linear`] (tensors `NAME.weight[_scale]`), the
    /// full tensor name otherwise.
    pub name: String,
    /// Logical shape: `[out, in]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    /// What the weight is.
    pub role: Role,
}

impl WeightSpec {
    fn new(name: String, shape: &[usize], role: Role) -> Self {
        Self {
            name,
            shape: shape.to_vec(),
            role,
        }
    }
}

/// The three projections of a SwiGLU MLP of width `inter` under `prefix` (e.g. `…mlp.`).
pub fn mlp(prefix: &str, hidden: usize, inter: usize) -> [WeightSpec; 3] {
    [
        WeightSpec::new(format!("{prefix}gate_proj"), &[inter, hidden], Role::Linear),
        WeightSpec::new(format!("{prefix}up_proj"), &[inter, hidden], Role::Linear),
        WeightSpec::new(format!("{prefix}down_proj"), &[hidden, inter], Role::Linear),
    ]
}

/// Every weight of decoder layer `layer` (which may be an MTP layer: `layer >=
/// num_hidden_layers` gets the MTP extras too).
pub fn layer(c: &ModelConfig, layer: usize) -> Vec<WeightSpec> {
    let h = c.hidden_size;
    let p = format!("model.layers.{layer}.");
    let heads = c.num_attention_heads;
    let mut out = vec![
        WeightSpec::new(format!("{p}input_layernorm.weight"), &[h], Role::Norm),
        WeightSpec::new(
            format!("{p}post_attention_layernorm.weight"),
            &[h],
            Role::Norm,
        ),
    ];
    let a = format!("{p}self_attn.");
    match c.q_lora_rank {
        Some(r) => out.extend([
            WeightSpec::new(format!("{a}q_a_proj"), &[r, h], Role::Linear),
            WeightSpec::new(format!("{a}q_a_layernorm.weight"), &[r], Role::Norm),
            WeightSpec::new(
                format!("{a}q_b_proj"),
                &[heads * c.qk_head_dim(), r],
                Role::Linear,
            ),
        ]),
        None => out.push(WeightSpec::new(
            format!("{a}q_proj"),
            &[heads * c.qk_head_dim(), h],
            Role::Linear,
        )),
    }
    out.extend([
        WeightSpec::new(
            format!("{a}kv_a_proj_with_mqa"),
            &[c.kv_lora_rank + c.qk_rope_head_dim, h],
            Role::Linear,
        ),
        WeightSpec::new(
            format!("{a}kv_a_layernorm.weight"),
            &[c.kv_lora_rank],
            Role::Norm,
        ),
        WeightSpec::new(
            format!("{a}kv_b_proj"),
            &[heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank],
            Role::Linear,
        ),
        WeightSpec::new(
            format!("{a}o_proj"),
            &[h, heads * c.v_head_dim],
            Role::Linear,
        ),
    ]);
    let m = format!("{p}mlp.");
    if c.is_moe_layer(layer) {
        let e = c.n_routed_experts;
        out.push(WeightSpec::new(
            format!("{m}gate.weight"),
            &[e, h],
            Role::Router,
        ));
        out.push(WeightSpec::new(
            format!("{m}gate.e_score_correction_bias"),
            &[e],
            Role::RouterBias,
        ));
        for x in 0..e {
            out.extend(mlp(&format!("{m}experts.{x}."), h, c.moe_intermediate_size));
        }
        if c.n_shared_experts > 0 {
            out.extend(mlp(
                &format!("{m}shared_experts."),
                h,
                c.n_shared_experts * c.moe_intermediate_size,
            ));
        }
    } else {
        out.extend(mlp(&m, h, c.intermediate_size));
    }
    if layer >= c.num_hidden_layers {
        // DeepSeek-V3's multi-token-prediction head (not run; present in the checkpoint).
        out.extend([
            WeightSpec::new(format!("{p}enorm.weight"), &[h], Role::Norm),
            WeightSpec::new(format!("{p}hnorm.weight"), &[h], Role::Norm),
            WeightSpec::new(format!("{p}eh_proj"), &[h, 2 * h], Role::Linear),
            WeightSpec::new(format!("{p}shared_head.norm.weight"), &[h], Role::Norm),
            WeightSpec::new(
                format!("{p}shared_head.head"),
                &[c.vocab_size, h],
                Role::Linear,
            ),
            WeightSpec::new(
                format!("{p}embed_tokens.weight"),
                &[c.vocab_size, h],
                Role::Embedding,
            ),
        ]);
    }
    out
}

/// Every weight outside the decoder layers.
pub fn globals(c: &ModelConfig) -> Vec<WeightSpec> {
    let h = c.hidden_size;
    let mut out = vec![
        WeightSpec::new(
            "model.embed_tokens.weight".to_owned(),
            &[c.vocab_size, h],
            Role::Embedding,
        ),
        WeightSpec::new("model.norm.weight".to_owned(), &[h], Role::Norm),
    ];
    if !c.tie_word_embeddings {
        out.push(WeightSpec::new(
            "lm_head".to_owned(),
            &[c.vocab_size, h],
            Role::Linear,
        ));
    }
    out
}
