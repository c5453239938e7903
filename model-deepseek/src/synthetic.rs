//! Random in-memory weights for a config, from a seed: for tests and benchmarks that need a
//! model without a checkpoint. MXFP4 layers are quantized with `quant-quark`'s codec.
//!
//! Values are drawn so activations stay O(1) through the layers: linear weights uniform in
//! `±sqrt(3/in)` (unit variance out for unit variance in), norm weights near 1, router logits
//! spread enough that top-k choices are distinct, correction biases large enough to change
//! some choices.

use crate::config::ModelConfig;
use crate::weights::{
    ActivationQuant, AttentionWeights, FeedForward, LayerWeights, Linear, Matrix, MlpWeights,
    ModelWeights, MoeWeights, Mxfp4Matrix, QueryWeights, WeightsError,
};
use quant_quark::ScaleRule;
use quant_quark::mxfp4::quantize;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The storage format of a class of linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32.
    Dense,
    /// MXFP4 weights (quantized with the `even` rule, as Quark exports), with this input spec.
    Mxfp4(ActivationQuant),
}

/// Which format each class of layers gets, and whether the shared expert is fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Routed experts.
    pub routed_experts: WeightFormat,
    /// Shared experts.
    pub shared_experts: WeightFormat,
    /// Attention projections.
    pub attention: WeightFormat,
    /// Dense-layer MLPs.
    pub dense_mlp: WeightFormat,
    /// `lm_head` (ignored when embeddings are tied).
    pub lm_head: WeightFormat,
    /// Put the shared expert into the expert list (see [`MoeWeights::into_fused`]).
    pub fuse_shared: bool,
}

impl SyntheticSpec {
    /// The amd MXFP4 recipe: W4A4 (`even` rule) experts, dense MLPs and attention, lm_head
    /// unquantized; shared experts quantized like the routed ones; unfused.
    pub fn quark_w4a4() -> Self {
        let w4a4 = WeightFormat::Mxfp4(ActivationQuant::Mxfp4(ScaleRule::Even));
        Self {
            routed_experts: w4a4,
            shared_experts: w4a4,
            attention: w4a4,
            dense_mlp: w4a4,
            lm_head: WeightFormat::Dense,
            fuse_shared: false,
        }
    }
}

/// Random weights of `config`'s shapes. The same seed gives the same weights whatever
/// `fuse_shared` is: fusion only rearranges the shared expert. Fails when an MXFP4 layer's
/// input features are not a multiple of 32.
pub fn synthetic_weights(
    config: &ModelConfig,
    spec: &SyntheticSpec,
    seed: u64,
) -> Result<ModelWeights, WeightsError> {
    let c = config;
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    let h = c.hidden_size;
    let embed_tokens = g.matrix(c.vocab_size, h, 1.0);
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let attention = g.attention(c, spec.attention)?;
            let input_layernorm = g.norm(h);
            let post_attention_layernorm = g.norm(h);
            let feed_forward = if c.is_moe_layer(i) {
                FeedForward::Moe(g.moe(c, spec)?)
            } else {
                FeedForward::Dense(g.mlp(h, c.intermediate_size, spec.dense_mlp)?)
            };
            Ok(LayerWeights {
                input_layernorm,
                attention,
                post_attention_layernorm,
                feed_forward,
            })
        })
        .collect::<Result<_, WeightsError>>()?;
    let norm = g.norm(h);
    let lm_head = match c.tie_word_embeddings {
        true => None,
        false => Some(g.linear(c.vocab_size, h, spec.lm_head)?),
    };
    Ok(ModelWeights {
        embed_tokens,
        layers,
        norm,
        lm_head,
    })
}

struct Gen(ChaCha8Rng);

impl Gen {
    fn values(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-bound..bound)).collect()
    }

    fn matrix(&mut self, rows: usize, cols: usize, bound: f32) -> Matrix {
        Matrix {
            rows,
            cols,
            data: self.values(rows * cols, bound),
        }
    }

    fn norm(&mut self, n: usize) -> Vec<f32> {
        self.values(n, 0.2).into_iter().map(|v| 1.0 + v).collect()
    }

    fn linear(
        &mut self,
        out: usize,
        input: usize,
        format: WeightFormat,
    ) -> Result<Linear, WeightsError> {
        let dense = self.matrix(out, input, (3.0 / input as f32).sqrt());
        match format {
            WeightFormat::Dense => Ok(Linear::Dense(dense)),
            WeightFormat::Mxfp4(activations) => {
                let not_blocks = |e: &dyn std::fmt::Display| {
                    WeightsError::Structure(format!("MXFP4 layer [{out}, {input}]: {e}"))
                };
                if !input.is_multiple_of(32) {
                    return Err(not_blocks(&"input features not a multiple of 32"));
                }
                let mut packed = vec![0u8; out * input / 2];
                let mut scales = vec![0u8; out * input / 32];
                quantize(&dense.data, ScaleRule::Even, &mut packed, &mut scales)
                    .map_err(|e| not_blocks(&e))?;
                let weight =
                    Mxfp4Matrix::new(out, input, packed, scales).map_err(|e| not_blocks(&e))?;
                Ok(Linear::Mxfp4 {
                    weight,
                    activations,
                })
            }
        }
    }

    fn mlp(
        &mut self,
        hidden: usize,
        inter: usize,
        format: WeightFormat,
    ) -> Result<MlpWeights, WeightsError> {
        Ok(MlpWeights {
            gate_proj: self.linear(inter, hidden, format)?,
            up_proj: self.linear(inter, hidden, format)?,
            down_proj: self.linear(hidden, inter, format)?,
        })
    }

    fn attention(
        &mut self,
        c: &ModelConfig,
        f: WeightFormat,
    ) -> Result<AttentionWeights, WeightsError> {
        let h = c.hidden_size;
        let q_out = c.num_attention_heads * c.qk_head_dim();
        let query = match c.q_lora_rank {
            Some(rank) => QueryWeights::Lora {
                q_a_proj: self.linear(rank, h, f)?,
                q_a_layernorm: self.norm(rank),
                q_b_proj: self.linear(q_out, rank, f)?,
            },
            None => QueryWeights::Direct {
                q_proj: self.linear(q_out, h, f)?,
            },
        };
        Ok(AttentionWeights {
            query,
            kv_a_proj_with_mqa: self.linear(c.kv_lora_rank + c.qk_rope_head_dim, h, f)?,
            kv_a_layernorm: self.norm(c.kv_lora_rank),
            kv_b_proj: self.linear(
                c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim),
                c.kv_lora_rank,
                f,
            )?,
            o_proj: self.linear(h, c.num_attention_heads * c.v_head_dim, f)?,
        })
    }

    fn moe(&mut self, c: &ModelConfig, spec: &SyntheticSpec) -> Result<MoeWeights, WeightsError> {
        let h = c.hidden_size;
        let router = self.matrix(c.n_routed_experts, h, (3.0 / h as f32).sqrt() * 2.0);
        let correction_bias = self.values(c.n_routed_experts, 0.1);
        let experts = (0..c.n_routed_experts)
            .map(|_| self.mlp(h, c.moe_intermediate_size, spec.routed_experts))
            .collect::<Result<_, _>>()?;
        let shared = match c.n_shared_experts {
            0 => None,
            n => Some(self.mlp(h, n * c.moe_intermediate_size, spec.shared_experts)?),
        };
        let moe = MoeWeights {
            router,
            correction_bias,
            experts,
            shared,
            fused_shared_slots: 0,
        };
        if spec.fuse_shared {
            moe.into_fused()
        } else {
            Ok(moe)
        }
    }
}
