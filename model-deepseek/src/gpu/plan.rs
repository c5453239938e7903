//! Device memory planning: how many bytes the weights, the KV cache and the workspace of a
//! [`super::GpuModel`] take, and a clear refusal, before anything is allocated, when they do
//! not fit the device.

use super::blocks::{KV_BLOCK_TOKENS, blocks_for};
use crate::config::ModelConfig;
use crate::loader::catalog::Role;
use crate::loader::header::Dtype;
use crate::loader::{LinearFormat, Plan};
use crate::weights::{FeedForward, Linear, Matrix, MlpWeights, ModelWeights, QueryWeights};
use moe_kernels::gpu::model_ops::{
    MlaWorkspace, dense_is_bf16, linear_device_bytes, mla_weight_bytes,
};
use moe_kernels::gpu::{REQUEST_WIDTH, RESULT_WIDTH, SamplingKernel};
use thiserror::Error;

/// Bytes kept free for what the plan does not count: the driver context, loaded kernel code,
/// allocator rounding.
pub const DEFAULT_RESERVE_BYTES: u64 = 512 << 20;

/// How much KV cache to set aside: a pool of `blocks` blocks of [`KV_BLOCK_TOKENS`] tokens,
/// shared by all sequences (a sequence takes blocks as it grows, up to the model's context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    /// Blocks in the pool.
    pub blocks: usize,
}

impl KvBudget {
    /// The smallest pool that holds `tokens` tokens (whole blocks).
    pub fn for_tokens(tokens: usize) -> Self {
        Self {
            blocks: blocks_for(tokens),
        }
    }

    /// Tokens over all blocks.
    pub fn tokens(&self) -> usize {
        self.blocks * KV_BLOCK_TOKENS
    }
}

/// Why a model cannot be placed on a device.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// Weights, KV cache, workspace and reserve need more than the device has free.
    #[error(
        "does not fit on {device}: weights {weights} B + KV cache {kv_cache} B + workspace \
         {workspace} B + reserve {reserve} B = {needed} B, but only {available} B are free"
    )]
    DoesNotFit {
        /// The device, as `cuda:0` / `rocm:0`.
        device: String,
        /// Bytes of the weights.
        weights: u64,
        /// Bytes of the KV cache.
        kv_cache: u64,
        /// Bytes of the workspace.
        workspace: u64,
        /// Bytes kept free.
        reserve: u64,
        /// The sum.
        needed: u64,
        /// Free device memory.
        available: u64,
    },
    /// A budget parameter is zero or too large for the kernels.
    #[error("{parameter} = {value}: {reason}")]
    Parameter {
        /// Which parameter.
        parameter: &'static str,
        /// Its value.
        value: usize,
        /// What is allowed.
        reason: String,
    },
}

/// The device memory one model instance needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Weights as uploaded (dense linear layers, embedding and router in bf16 — f32 where a
    /// value is not a bf16 —, norms and biases f32, MXFP4 packed codes and scales;
    /// `kv_b_proj` split into per-head `W_UKᵀ` and `W_UV`, bf16 where exact, else f32).
    pub weights: u64,
    /// The latent KV cache: the block pool (f32 latent and rope key, every layer) and its
    /// block tables as uploaded per call (4 bytes a block).
    pub kv_cache: u64,
    /// Activations and scratch for `max_batch_tokens` tokens per forward call.
    pub workspace: u64,
    /// Kept free for what is not counted.
    pub reserve: u64,
}

impl MemoryPlan {
    /// The plan for `weights` of `config` with a KV budget and at most `max_batch_tokens`
    /// tokens per forward call.
    pub fn new(
        config: &ModelConfig,
        weights: &ModelWeights,
        kv: KvBudget,
        max_batch_tokens: usize,
    ) -> Result<Self, PlanError> {
        let slots = weights
            .layers
            .iter()
            .filter_map(|l| match &l.feed_forward {
                FeedForward::Moe(m) => Some(m.experts.len()),
                FeedForward::Dense(_) => None,
            })
            .max();
        Self::from_parts(
            config,
            device_weight_bytes(weights),
            slots,
            kv,
            max_batch_tokens,
        )
    }

    /// The plan for a checkpoint from its load plan, before any weight is read: a model that
    /// cannot fit is refused without loading it. The MoE workspace is counted with the shared
    /// expert's slots stacked next to the routed experts (exact when it has their format, a
    /// few bytes over otherwise).
    pub fn for_checkpoint(
        plan: &Plan,
        kv: KvBudget,
        max_batch_tokens: usize,
    ) -> Result<Self, PlanError> {
        let c = &plan.config.model;
        let slots = (c.n_routed_experts > 0).then(|| c.n_routed_experts + c.n_shared_experts);
        Self::from_parts(c, planned_weight_bytes(plan), slots, kv, max_batch_tokens)
    }

    pub(crate) fn from_parts(
        config: &ModelConfig,
        weights: u64,
        moe_slots: Option<usize>,
        kv: KvBudget,
        max_batch_tokens: usize,
    ) -> Result<Self, PlanError> {
        let positive = |parameter, value: usize| {
            if value == 0 {
                Err(PlanError::Parameter {
                    parameter,
                    value,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("kv blocks", kv.blocks)?;
        if i32::try_from(kv.tokens()).is_err() {
            return Err(PlanError::Parameter {
                parameter: "kv blocks",
                value: kv.blocks,
                reason: format!(
                    "the kernels address cache rows with 32-bit indices: at most {} blocks",
                    i32::MAX as usize / KV_BLOCK_TOKENS
                ),
            });
        }
        positive("max_batch_tokens", max_batch_tokens)?;
        Ok(Self {
            weights,
            kv_cache: kv.blocks as u64 * kv_bytes_per_block(config),
            workspace: workspace_bytes(config, moe_slots, max_batch_tokens),
            reserve: DEFAULT_RESERVE_BYTES,
        })
    }

    /// Blocks of KV cache (each [`kv_bytes_per_block`]) that fit in `available` bytes next to
    /// this plan's weights, workspace and reserve: the largest pool the device can hold.
    pub fn kv_blocks_fitting(&self, config: &ModelConfig, available: u64) -> usize {
        let rest = self.weights + self.workspace + self.reserve;
        (available.saturating_sub(rest) / kv_bytes_per_block(config)) as usize
    }

    /// Everything the plan needs, reserve included.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.workspace + self.reserve
    }

    /// `Ok` when the plan fits in `available` free bytes of `device`; else the numbers.
    pub fn check_fits(&self, device: &str, available: u64) -> Result<(), PlanError> {
        if self.total() <= available {
            Ok(())
        } else {
            Err(PlanError::DoesNotFit {
                device: device.to_owned(),
                weights: self.weights,
                kv_cache: self.kv_cache,
                workspace: self.workspace,
                reserve: self.reserve,
                needed: self.total(),
                available,
            })
        }
    }
}

/// Bytes of one cached token over all layers (f32 latent and rope key).
pub fn kv_bytes_per_token(config: &ModelConfig) -> usize {
    config.num_hidden_layers * (config.kv_lora_rank + config.qk_rope_head_dim) * 4
}

/// Bytes of one KV block: its tokens over all layers, plus its block-table entry.
pub fn kv_bytes_per_block(config: &ModelConfig) -> u64 {
    (KV_BLOCK_TOKENS * kv_bytes_per_token(config) + 4) as u64
}

fn linear_bytes(l: &Linear) -> u64 {
    linear_device_bytes(l) as u64
}

fn matrix_bytes(m: &Matrix) -> u64 {
    (if dense_is_bf16(&m.data) { 2 } else { 4 } * m.data.len()) as u64
}

fn mlp_bytes(m: &MlpWeights) -> u64 {
    linear_bytes(&m.gate_proj) + linear_bytes(&m.up_proj) + linear_bytes(&m.down_proj)
}

fn vec_bytes(v: &[f32]) -> u64 {
    (v.len() * 4) as u64
}

/// Bytes the weights take on the device, as [`super::GpuModel`] uploads them.
pub fn device_weight_bytes(w: &ModelWeights) -> u64 {
    let mut total = matrix_bytes(&w.embed_tokens) + vec_bytes(&w.norm);
    total += w.lm_head.as_ref().map_or(0, linear_bytes);
    for layer in &w.layers {
        let a = &layer.attention;
        total += vec_bytes(&layer.input_layernorm) + vec_bytes(&layer.post_attention_layernorm);
        total += match &a.query {
            QueryWeights::Lora {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => linear_bytes(q_a_proj) + vec_bytes(q_a_layernorm) + linear_bytes(q_b_proj),
            QueryWeights::Direct { q_proj } => linear_bytes(q_proj),
        };
        total += linear_bytes(&a.kv_a_proj_with_mqa) + vec_bytes(&a.kv_a_layernorm);
        total += mla_weight_bytes(&a.kv_b_proj) as u64;
        total += linear_bytes(&a.o_proj);
        total += match &layer.feed_forward {
            FeedForward::Dense(m) => mlp_bytes(m),
            FeedForward::Moe(moe) => {
                matrix_bytes(&moe.router)
                    + vec_bytes(&moe.correction_bias)
                    + moe.experts.iter().map(mlp_bytes).sum::<u64>()
                    + moe.shared.as_ref().map_or(0, mlp_bytes)
            }
        };
    }
    total
}

/// Bytes the weights of a checkpoint's load plan will take on the device, as
/// [`device_weight_bytes`] counts them once loaded: bf16 linear layers, embedding and router
/// stay bf16 (f32 and f16 tensors are counted at 4 bytes, an upper bound: one whose values all
/// happen to be bf16 goes up in 2), norms and biases widen to f32, MXFP4 layers keep codes and
/// scales, `kv_b_proj` goes up dense (bf16 when the checkpoint stores it bf16 or MXFP4, whose
/// values are all bf16; else counted at 4 bytes); the multi-token-prediction layers (not run)
/// are not counted.
pub fn planned_weight_bytes(plan: &Plan) -> u64 {
    let layers = plan.config.model.num_hidden_layers;
    plan.expected
        .iter()
        .filter(|e| {
            let layer = e
                .canonical
                .strip_prefix("model.layers.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<usize>().ok());
            layer.is_none_or(|l| l < layers)
        })
        .map(|e| {
            let elements: usize = e.shape.iter().product();
            let dense = (elements * 4) as u64;
            let tensor = match e.role {
                Role::Linear => format!("{}.weight", e.name),
                _ => e.name.clone(),
            };
            let stored_bf16 = plan
                .checkpoint
                .tensors()
                .get(&tensor)
                .is_some_and(|t| t.dtype == Dtype::Bf16);
            match (e.role, e.format) {
                _ if e.canonical.ends_with("self_attn.kv_b_proj") => match e.format {
                    LinearFormat::Mxfp4 { .. } => dense / 2,
                    _ if stored_bf16 => dense / 2,
                    _ => dense,
                },
                (Role::Linear, LinearFormat::Mxfp4 { .. }) => (elements / 2 + elements / 32) as u64,
                (Role::Linear | Role::Embedding | Role::Router, _) if stored_bf16 => dense / 2,
                _ => dense,
            }
        })
        .sum()
}

/// Widest input of any linear layer (the activation fake-quantization scratch row).
fn widest_input(c: &ModelConfig) -> usize {
    [
        c.hidden_size,
        c.q_lora_rank.unwrap_or(0),
        c.kv_lora_rank,
        c.num_attention_heads * c.v_head_dim,
        c.intermediate_size,
        c.moe_intermediate_size * c.n_shared_experts.max(1),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// Per-token f32 activation widths of the forward pass (see `forward.rs`, which allocates
/// exactly these buffers).
pub(crate) fn activation_widths(c: &ModelConfig) -> [(&'static str, usize); 13] {
    let mlp_width = c
        .intermediate_size
        .max(c.moe_intermediate_size * c.n_shared_experts);
    [
        ("x", c.hidden_size),
        ("normed", c.hidden_size),
        ("delta", c.hidden_size),
        ("q_a", c.q_lora_rank.unwrap_or(1)),
        ("q_a_normed", c.q_lora_rank.unwrap_or(1)),
        ("q", c.num_attention_heads * c.qk_head_dim()),
        // kv_a_proj's output, after q_a_proj's where the two are stacked.
        (
            "kv_a",
            c.q_lora_rank.unwrap_or(0) + c.kv_lora_rank + c.qk_rope_head_dim,
        ),
        ("attn", c.num_attention_heads * c.v_head_dim),
        ("quant scratch", widest_input(c)),
        ("gate", mlp_width),
        ("up", mlp_width),
        ("act", mlp_width),
        ("router logits", c.n_routed_experts.max(1)),
    ]
}

/// Bytes of the workspace for `t` tokens per call.
fn workspace_bytes(c: &ModelConfig, moe_slots: Option<usize>, t: usize) -> u64 {
    let per_token: usize = activation_widths(c).iter().map(|(_, n)| n * 4).sum();
    // Rope cos/sin, positions, cache rows, block-table offsets, token ids, rows to take
    // logits of, and a sampling request (f64s), scan workspace (u64s) and result (i32s) per
    // chunk (at most one chunk a token).
    let per_token_small = c.qk_rope_head_dim * 4
        + 5 * 4
        + REQUEST_WIDTH * 8
        + SamplingKernel::scan_len(c.vocab_size) * 8
        + RESULT_WIDTH * 4;
    // Logits of up to every token, and the last-row copy of the residual stream.
    let logits = c.vocab_size * 4 + c.hidden_size * 4;
    let moe = moe_slots.map_or(0, |slots| moe_workspace_bytes(c, slots, t));
    let attention = MlaWorkspace::bytes(&c.mla_dims(), t) as u64;
    ((per_token + per_token_small + logits) * t) as u64 + moe + attention
}

/// What `moe_kernels::gpu::MoeWorkspace::new` allocates for `t` tokens and `slots` stacked
/// experts (mirrored from its buffers); the MoE reads and writes the f32 activation buffers.
fn moe_workspace_bytes(c: &ModelConfig, slots: usize, t: usize) -> u64 {
    let (h, inter) = (c.hidden_size, c.moe_intermediate_size);
    let n_shared = c.n_shared_experts;
    let pairs = t * (c.num_experts_per_tok + n_shared);
    let shared_pairs = (t * n_shared).max(1);
    let grouping = |pairs: usize, experts: usize| (experts + 1 + 2 * pairs + experts + 1) * 4;
    let bytes = t * h
        + t * h / 32
        + pairs * 8
        + grouping(pairs, slots)
        + shared_pairs * 8
        + grouping(shared_pairs, n_shared.max(1))
        + pairs * inter * 4
        + pairs * inter
        + pairs * inter / 32
        + pairs * h * 4
        + shared_pairs * h * 4;
    bytes as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;
    use crate::synthetic::{SyntheticSpec, synthetic_weights};

    fn tiny() -> (ModelConfig, ModelWeights) {
        let config = parse_config(
            &serde_json::json!({
                "architectures": ["DeepseekV3ForCausalLM"],
                "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
                "moe_intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 32,
                "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
                "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.5,
                "first_k_dense_replace": 1, "max_position_embeddings": 256,
                "rms_norm_eps": 1e-6, "tie_word_embeddings": false
            })
            .to_string(),
        )
        .unwrap()
        .model;
        let weights = synthetic_weights(&config, &SyntheticSpec::quark_w4a4(), 7).unwrap();
        (config, weights)
    }

    #[test]
    fn counts_weights_kv_and_workspace() {
        let (config, weights) = tiny();
        // 300 tokens round up to 5 blocks of 64.
        let kv = KvBudget::for_tokens(300);
        assert_eq!((kv.blocks, kv.tokens()), (5, 320));
        let plan = MemoryPlan::new(&config, &weights, kv, 16).unwrap();
        // The KV cache: 320 tokens × 2 layers × (32 + 8) f32, and 4 table bytes a block.
        assert_eq!(plan.kv_cache, 320 * 2 * 40 * 4 + 5 * 4);
        // Upload bytes differ from host bytes only in kv_b_proj, which goes up dense: bf16,
        // since the MXFP4 values are all bf16.
        let kv_b_host: u64 = weights
            .layers
            .iter()
            .map(|l| linear_bytes(&l.attention.kv_b_proj))
            .sum();
        let kv_b_dense = (2 * 4 * 32 * 32 * 2) as u64;
        assert_eq!(
            plan.weights,
            weights.size_bytes() as u64 - kv_b_host + kv_b_dense
        );
        // The workspace grows linearly with the batch.
        let bigger = MemoryPlan::new(&config, &weights, kv, 32).unwrap();
        assert!(bigger.workspace > plan.workspace && bigger.workspace <= 2 * plan.workspace + 64);
    }

    #[test]
    fn a_checkpoint_plan_counts_what_its_loaded_weights_take() {
        use crate::fusion::FusionMode;
        use crate::loader::{self, LoadOptions};
        use crate::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
        let kv = KvBudget { blocks: 2 };
        for (layout, experts) in [(TinyLayout::DeepseekV3, 256), (TinyLayout::KimiK25, 384)] {
            for shared in [SharedExperts::Quantized, SharedExperts::Bf16] {
                for fusion in [FusionMode::Auto, FusionMode::Off] {
                    let dir = tempfile::tempdir().unwrap();
                    let spec = TinySpec {
                        layout,
                        shared_experts: shared,
                        n_routed_experts: experts,
                        ..TinySpec::default()
                    };
                    write_tiny_checkpoint(dir.path(), &spec).unwrap();
                    let options = LoadOptions {
                        fusion,
                        ..LoadOptions::default()
                    };
                    let planned = loader::plan(dir.path(), &options).unwrap();
                    let before = MemoryPlan::for_checkpoint(&planned, kv, 8).unwrap();
                    let model = loader::load(dir.path(), &options).unwrap().model;
                    let after = MemoryPlan::new(model.config(), model.weights(), kv, 8).unwrap();
                    let case = format!("{layout:?} {shared:?} {fusion:?}");
                    assert_eq!(before.weights, after.weights, "{case}");
                    assert_eq!(before.kv_cache, after.kv_cache, "{case}");
                    // The checkpoint plan assumes the shared slots are stacked.
                    assert!(before.workspace >= after.workspace, "{case}");
                }
            }
        }
    }

    #[test]
    fn refuses_with_the_numbers_when_it_does_not_fit() {
        let (config, weights) = tiny();
        let kv = KvBudget { blocks: 4000 };
        let plan = MemoryPlan::new(&config, &weights, kv, 64).unwrap();
        // A fake device with exactly enough memory fits; one byte less does not.
        assert!(plan.check_fits("cuda:0", plan.total()).is_ok());
        let err = plan.check_fits("cuda:0", plan.total() - 1).unwrap_err();
        assert_eq!(
            err,
            PlanError::DoesNotFit {
                device: "cuda:0".into(),
                weights: plan.weights,
                kv_cache: plan.kv_cache,
                workspace: plan.workspace,
                reserve: DEFAULT_RESERVE_BYTES,
                needed: plan.total(),
                available: plan.total() - 1,
            }
        );
        let text = err.to_string();
        assert!(text.contains("KV cache") && text.contains(&plan.kv_cache.to_string()));
    }

    #[test]
    fn the_largest_fitting_pool_fits_and_one_more_block_does_not() {
        let (config, weights) = tiny();
        let one = MemoryPlan::new(&config, &weights, KvBudget { blocks: 1 }, 16).unwrap();
        for extra in [0u64, 1, 12_345, 1 << 30] {
            let available = one.total() + extra;
            let blocks = one.kv_blocks_fitting(&config, available);
            let fits = MemoryPlan::new(&config, &weights, KvBudget { blocks }, 16).unwrap();
            assert!(fits.check_fits("cuda:0", available).is_ok(), "{extra}");
            let over = KvBudget { blocks: blocks + 1 };
            let over = MemoryPlan::new(&config, &weights, over, 16).unwrap();
            assert!(over.check_fits("cuda:0", available).is_err(), "{extra}");
        }
        assert_eq!(
            one.kv_blocks_fitting(&config, one.total() - one.kv_cache - 1),
            0
        );
    }

    #[test]
    fn rejects_empty_budgets() {
        let (config, weights) = tiny();
        for (kv, t, name) in [
            (KvBudget { blocks: 0 }, 4, "kv blocks"),
            (KvBudget { blocks: 1 }, 0, "max_batch_tokens"),
            (KvBudget { blocks: 1 << 25 }, 4, "kv blocks"),
        ] {
            match MemoryPlan::new(&config, &weights, kv, t) {
                Err(PlanError::Parameter { parameter, .. }) => assert_eq!(parameter, name),
                other => panic!("{kv:?} {t}: {other:?}"),
            }
        }
    }
}
