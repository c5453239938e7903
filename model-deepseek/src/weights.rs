//! The in-memory weights the forward pass consumes. The loader fills them from a checkpoint
//! (bf16 tensors widened to f32 at load, Quark MXFP4 tensors kept packed); tests build them
//! from a seed. Each field's doc names the checkpoint tensor it comes from, relative to the
//! layer prefix `model.layers.{i}.` (after the loader has normalised Kimi-K2.5's
//! `language_model.` prefixes).

use crate::config::ModelConfig;
use thiserror::Error;

pub use moe_kernels::reference::{ActivationQuant, Linear, Matrix, MlpWeights, Mxfp4Matrix};

/// A MoE block: router, routed experts and the shared expert(s), fused into the expert list
/// or kept as a separate MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeWeights {
    /// `mlp.gate.weight` `[n_routed_experts, hidden]`; never quantized.
    pub router: Matrix,
    /// `mlp.gate.e_score_correction_bias` `[n_routed_experts]` (used for selection only).
    pub correction_bias: Vec<f32>,
    /// `mlp.experts.{e}.{gate,up,down}_proj` for `e < n_routed_experts`, then, when fused,
    /// `fused_shared_slots` slots cut from `mlp.shared_experts.*` along the intermediate
    /// dimension (slot `n_routed_experts + j` holds rows/columns
    /// `[j·moe_intermediate, (j+1)·moe_intermediate)`).
    pub experts: Vec<MlpWeights>,
    /// `mlp.shared_experts.{gate,up,down}_proj` (`n_shared × moe_intermediate` wide) when not
    /// fused; `None` when fused or when the model has no shared expert.
    pub shared: Option<MlpWeights>,
    /// Shared-expert slots appended to `experts` (0 when unfused).
    pub fused_shared_slots: usize,
}

impl MoeWeights {
    /// Move the separate shared MLP into the expert list as slots `n_routed..`, one per
    /// `moe_intermediate` (the routed experts' width) of its intermediate dimension: the MLP is
    /// separable along that dimension, so slot outputs sum to the shared expert's output.
    /// Returns `self` unchanged when already fused or when there is no shared expert.
    pub fn into_fused(self) -> Result<MoeWeights, WeightsError> {
        let Some(shared) = self.shared else {
            return Ok(self);
        };
        let width = match self.experts.first() {
            Some(e) => e.intermediate_size(),
            None => return Err(WeightsError::Structure("MoE block has no experts".into())),
        };
        let total = shared.intermediate_size();
        if width == 0 || !total.is_multiple_of(width) {
            return Err(WeightsError::Structure(format!(
                "shared expert intermediate {total} is not a multiple of the experts' {width}"
            )));
        }
        let slots = total / width;
        let mut experts = self.experts;
        for j in 0..slots {
            let range = j * width..(j + 1) * width;
            let down_proj = shared.down_proj.slice_in(range.clone()).ok_or_else(|| {
                WeightsError::Structure(format!(
                    "shared_experts.down_proj ({}): slot {j} columns {range:?} do not fall on MXFP4 blocks",
                    shared.down_proj.format_name()
                ))
            })?;
            experts.push(MlpWeights {
                gate_proj: shared.gate_proj.slice_out(range.clone()),
                up_proj: shared.up_proj.slice_out(range),
                down_proj,
            });
        }
        Ok(MoeWeights {
            router: self.router,
            correction_bias: self.correction_bias,
            experts,
            shared: None,
            fused_shared_slots: slots,
        })
    }
}

/// The query projection: LoRA-factored (DeepSeek-V3) or a single matrix.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryWeights {
    /// `q_lora_rank` set.
    Lora {
        /// `self_attn.q_a_proj` `[q_lora_rank, hidden]`.
        q_a_proj: Linear,
        /// `self_attn.q_a_layernorm.weight` `[q_lora_rank]`.
        q_a_layernorm: Vec<f32>,
        /// `self_attn.q_b_proj` `[heads × qk_head_dim, q_lora_rank]`.
        q_b_proj: Linear,
    },
    /// `q_lora_rank` null: `self_attn.q_proj` `[heads × qk_head_dim, hidden]`.
    Direct {
        /// `self_attn.q_proj`.
        q_proj: Linear,
    },
}

/// Multi-head latent attention weights of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionWeights {
    /// The query projection.
    pub query: QueryWeights,
    /// `self_attn.kv_a_proj_with_mqa` `[kv_lora_rank + qk_rope_head_dim, hidden]`.
    pub kv_a_proj_with_mqa: Linear,
    /// `self_attn.kv_a_layernorm.weight` `[kv_lora_rank]`.
    pub kv_a_layernorm: Vec<f32>,
    /// `self_attn.kv_b_proj` `[heads × (qk_nope_head_dim + v_head_dim), kv_lora_rank]`: per
    /// head, `qk_nope_head_dim` key rows then `v_head_dim` value rows.
    pub kv_b_proj: Linear,
    /// `self_attn.o_proj` `[hidden, heads × v_head_dim]`.
    pub o_proj: Linear,
}

/// The feed-forward block of one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedForward {
    /// Layers below `first_k_dense_replace` (and off the `moe_layer_freq` grid): `mlp.*`
    /// `[intermediate_size, hidden]`.
    Dense(MlpWeights),
    /// MoE layers.
    Moe(MoeWeights),
}

/// One decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// `input_layernorm.weight` `[hidden]`.
    pub input_layernorm: Vec<f32>,
    /// `self_attn.*`.
    pub attention: AttentionWeights,
    /// `post_attention_layernorm.weight` `[hidden]`.
    pub post_attention_layernorm: Vec<f32>,
    /// `mlp.*`.
    pub feed_forward: FeedForward,
}

/// Everything the forward pass reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelWeights {
    /// `model.embed_tokens.weight` `[vocab, hidden]`; never quantized.
    pub embed_tokens: Matrix,
    /// `model.layers.{i}` for `i < num_hidden_layers` (MTP layers are not run).
    pub layers: Vec<LayerWeights>,
    /// `model.norm.weight` `[hidden]`.
    pub norm: Vec<f32>,
    /// `lm_head.weight` `[vocab, hidden]`; `None` when `tie_word_embeddings` (the embedding
    /// matrix is used).
    pub lm_head: Option<Linear>,
}

/// A weight whose shape or kind disagrees with the config.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WeightsError {
    /// A tensor has the wrong shape.
    #[error("weight `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor, named as in the checkpoint (relative to `model.`).
        name: String,
        /// `[out, in]` (or `[n]`) the config implies.
        expected: Vec<usize>,
        /// What the weights hold.
        found: Vec<usize>,
    },
    /// A structural mismatch (wrong number of layers or experts, wrong block kind, …).
    #[error("weights: {0}")]
    Structure(String),
}

impl ModelWeights {
    /// Bytes the weights occupy in memory (f32 values, packed MXFP4 codes and scales).
    pub fn size_bytes(&self) -> usize {
        let linear = |l: &Linear| match l {
            Linear::Dense(m) => m.data.len() * 4,
            Linear::Mxfp4 { weight, .. } => weight.packed().len() + weight.scales().len(),
        };
        let mlp = |m: &MlpWeights| linear(&m.gate_proj) + linear(&m.up_proj) + linear(&m.down_proj);
        let mut total = (self.embed_tokens.data.len() + self.norm.len()) * 4;
        total += self.lm_head.as_ref().map_or(0, linear);
        for layer in &self.layers {
            let a = &layer.attention;
            total += (layer.input_layernorm.len() + layer.post_attention_layernorm.len()) * 4;
            total += match &a.query {
                QueryWeights::Lora {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                } => linear(q_a_proj) + q_a_layernorm.len() * 4 + linear(q_b_proj),
                QueryWeights::Direct { q_proj } => linear(q_proj),
            };
            total += linear(&a.kv_a_proj_with_mqa) + a.kv_a_layernorm.len() * 4;
            total += linear(&a.kv_b_proj) + linear(&a.o_proj);
            total += match &layer.feed_forward {
                FeedForward::Dense(m) => mlp(m),
                FeedForward::Moe(moe) => {
                    (moe.router.data.len() + moe.correction_bias.len()) * 4
                        + moe.experts.iter().map(mlp).sum::<usize>()
                        + moe.shared.as_ref().map_or(0, mlp)
                }
            };
        }
        total
    }

    /// Check every shape and the layer structure against `config`.
    pub fn validate(&self, config: &ModelConfig) -> Result<(), WeightsError> {
        let c = config;
        let h = c.hidden_size;
        check_matrix("embed_tokens.weight", &self.embed_tokens, c.vocab_size, h)?;
        check_vector("norm.weight", &self.norm, h)?;
        match (&self.lm_head, c.tie_word_embeddings) {
            (Some(head), false) => check_linear("lm_head.weight", head, c.vocab_size, h)?,
            (None, true) => {}
            (Some(_), true) => {
                return Err(WeightsError::Structure(
                    "lm_head present but tie_word_embeddings is true".into(),
                ));
            }
            (None, false) => {
                return Err(WeightsError::Structure(
                    "lm_head missing and tie_word_embeddings is false".into(),
                ));
            }
        }
        if self.layers.len() != c.num_hidden_layers {
            return Err(WeightsError::Structure(format!(
                "{} layers, config has num_hidden_layers = {}",
                self.layers.len(),
                c.num_hidden_layers
            )));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            layer.validate(c, i)?;
        }
        Ok(())
    }
}

impl LayerWeights {
    fn validate(&self, c: &ModelConfig, i: usize) -> Result<(), WeightsError> {
        let p = format!("layers.{i}.");
        let h = c.hidden_size;
        check_vector(
            &format!("{p}input_layernorm.weight"),
            &self.input_layernorm,
            h,
        )?;
        check_vector(
            &format!("{p}post_attention_layernorm.weight"),
            &self.post_attention_layernorm,
            h,
        )?;
        self.attention.validate(c, &p)?;
        match (&self.feed_forward, c.is_moe_layer(i)) {
            (FeedForward::Dense(mlp), false) => {
                check_mlp(&format!("{p}mlp."), mlp, h, c.intermediate_size)
            }
            (FeedForward::Moe(moe), true) => moe.validate(c, &format!("{p}mlp.")),
            (_, moe) => Err(WeightsError::Structure(format!(
                "layer {i} should have a {} block",
                if moe { "MoE" } else { "dense MLP" }
            ))),
        }
    }
}

impl AttentionWeights {
    fn validate(&self, c: &ModelConfig, p: &str) -> Result<(), WeightsError> {
        let h = c.hidden_size;
        let heads = c.num_attention_heads;
        let q_out = heads * c.qk_head_dim();
        match (&self.query, c.q_lora_rank) {
            (
                QueryWeights::Lora {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                },
                Some(rank),
            ) => {
                check_linear(&format!("{p}self_attn.q_a_proj"), q_a_proj, rank, h)?;
                check_vector(
                    &format!("{p}self_attn.q_a_layernorm.weight"),
                    q_a_layernorm,
                    rank,
                )?;
                check_linear(&format!("{p}self_attn.q_b_proj"), q_b_proj, q_out, rank)?;
            }
            (QueryWeights::Direct { q_proj }, None) => {
                check_linear(&format!("{p}self_attn.q_proj"), q_proj, q_out, h)?;
            }
            _ => {
                return Err(WeightsError::Structure(format!(
                    "{p}self_attn: query projection kind disagrees with q_lora_rank = {:?}",
                    c.q_lora_rank
                )));
            }
        }
        check_linear(
            &format!("{p}self_attn.kv_a_proj_with_mqa"),
            &self.kv_a_proj_with_mqa,
            c.kv_lora_rank + c.qk_rope_head_dim,
            h,
        )?;
        check_vector(
            &format!("{p}self_attn.kv_a_layernorm.weight"),
            &self.kv_a_layernorm,
            c.kv_lora_rank,
        )?;
        check_linear(
            &format!("{p}self_attn.kv_b_proj"),
            &self.kv_b_proj,
            heads * (c.qk_nope_head_dim + c.v_head_dim),
            c.kv_lora_rank,
        )?;
        check_linear(
            &format!("{p}self_attn.o_proj"),
            &self.o_proj,
            h,
            heads * c.v_head_dim,
        )
    }
}

/// Check an MLP's three projections against `hidden` and `intermediate`; `p` prefixes names.
fn check_mlp(
    p: &str,
    mlp: &MlpWeights,
    hidden: usize,
    intermediate: usize,
) -> Result<(), WeightsError> {
    check_linear(
        &format!("{p}gate_proj"),
        &mlp.gate_proj,
        intermediate,
        hidden,
    )?;
    check_linear(&format!("{p}up_proj"), &mlp.up_proj, intermediate, hidden)?;
    check_linear(
        &format!("{p}down_proj"),
        &mlp.down_proj,
        hidden,
        intermediate,
    )
}

impl MoeWeights {
    fn validate(&self, c: &ModelConfig, p: &str) -> Result<(), WeightsError> {
        let h = c.hidden_size;
        let e = c.n_routed_experts;
        check_matrix(&format!("{p}gate.weight"), &self.router, e, h)?;
        check_vector(
            &format!("{p}gate.e_score_correction_bias"),
            &self.correction_bias,
            e,
        )?;
        if self.experts.len() != e + self.fused_shared_slots {
            return Err(WeightsError::Structure(format!(
                "{p}experts: {} slots, expected n_routed_experts {e} + fused shared slots {}",
                self.experts.len(),
                self.fused_shared_slots
            )));
        }
        let fused = self.fused_shared_slots > 0;
        if fused && (self.shared.is_some() || self.fused_shared_slots != c.n_shared_experts) {
            return Err(WeightsError::Structure(format!(
                "{p}: {} fused shared slots (config n_shared_experts = {}) and a separate shared MLP: {}",
                self.fused_shared_slots,
                c.n_shared_experts,
                self.shared.is_some()
            )));
        }
        if !fused && self.shared.is_some() != (c.n_shared_experts > 0) {
            return Err(WeightsError::Structure(format!(
                "{p}shared_experts: present = {}, config n_shared_experts = {}",
                self.shared.is_some(),
                c.n_shared_experts
            )));
        }
        for (slot, expert) in self.experts.iter().enumerate() {
            let name = if slot < e {
                format!("{p}experts.{slot}.")
            } else {
                format!("{p}shared_experts[slot {}].", slot - e)
            };
            check_mlp(&name, expert, h, c.moe_intermediate_size)?;
        }
        if let Some(shared) = &self.shared {
            check_mlp(
                &format!("{p}shared_experts."),
                shared,
                h,
                c.n_shared_experts * c.moe_intermediate_size,
            )?;
        }
        Ok(())
    }
}

fn check_vector(name: &str, v: &[f32], n: usize) -> Result<(), WeightsError> {
    if v.len() == n {
        Ok(())
    } else {
        Err(WeightsError::Shape {
            name: name.into(),
            expected: vec![n],
            found: vec![v.len()],
        })
    }
}

fn check_matrix(name: &str, m: &Matrix, rows: usize, cols: usize) -> Result<(), WeightsError> {
    check_shape(name, [m.rows, m.cols], rows, cols)
}

fn check_linear(name: &str, l: &Linear, out: usize, input: usize) -> Result<(), WeightsError> {
    check_shape(name, [l.out_features(), l.in_features()], out, input)
}

fn check_shape(
    name: &str,
    found: [usize; 2],
    rows: usize,
    cols: usize,
) -> Result<(), WeightsError> {
    if found == [rows, cols] {
        Ok(())
    } else {
        Err(WeightsError::Shape {
            name: name.into(),
            expected: vec![rows, cols],
            found: found.to_vec(),
        })
    }
}
