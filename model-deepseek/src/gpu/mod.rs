//! The model on a GPU from `runtime-rocm`: memory planning, device weights, the paged latent
//! KV cache on the device (a block pool and a block table per sequence), and the forward pass built from `moe_kernels::gpu` launchers. The CPU
//! [`crate::Model`] is the oracle it is tested against.
//!
//! What runs where: every op of the forward pass runs on the device (embedding gather,
//! RMSNorm, linear layers, rope, latent-cache store, absorbed MLA attention, the MoE, the
//! output head); the host computes the rotary cos/sin of each token's position (as the CPU
//! reference does, in f64), queues copies of token ids, cache rows and block tables into
//! buffers allocated once, launches the step (a decode step as one replay of a captured
//! graph), and reads back the last token's logits of each chunk ([`GpuModel::forward`]) — or,
//! with [`GpuModel::forward_sampled`], only the token each chunk picks on the device (and the
//! logits row of a pick that asks for it).

pub mod blocks;
mod cache;
mod model;
pub mod plan;
pub mod synthetic;
mod weights;

pub use blocks::{BlockError, KV_BLOCK_TOKENS};
pub use cache::GpuKvCache;
pub use model::{GpuModel, GpuOptions, context_length};
pub use plan::{KvBudget, MemoryPlan, PlanError};

use crate::kv_cache::SeqId;
use crate::model::ForwardError;
use crate::weights::WeightsError;
use moe_kernels::gpu::GpuError;
use thiserror::Error;

/// Why the GPU model could not be built or a forward call failed.
#[derive(Debug, Error)]
pub enum GpuModelError {
    /// The model does not fit on the device (nothing was allocated).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A kernel launch, allocation, copy or compilation failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The forward call was refused (same reasons as the CPU model's).
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The weights have a layout the GPU path does not run.
    #[error("GPU model: {0}")]
    Unsupported(String),
    /// The device given is the CPU.
    #[error("the GPU model needs a GPU device; use model_deepseek::Model on the CPU")]
    NotAGpu,
    /// A sequence would outgrow the longest context the attention kernels index (32-bit key
    /// positions; see [`context_length`]), for a model whose own limit is longer still.
    #[error("{seq}: {length} tokens exceed the {max} keys the attention kernels index per query")]
    AttentionContext {
        /// The sequence.
        seq: SeqId,
        /// Cached plus new tokens.
        length: usize,
        /// The kernels' limit.
        max: usize,
    },
    /// The KV block pool cannot hold the call's new tokens (nothing was taken).
    #[error(transparent)]
    Blocks(#[from] BlockError),
    /// More tokens than the workspace was sized for.
    #[error("{tokens} tokens in one call exceed max_batch_tokens = {max}")]
    BatchTooLarge {
        /// Tokens in the call.
        tokens: usize,
        /// The limit.
        max: usize,
    },
}

impl From<runtime_rocm::Error> for GpuModelError {
    fn from(e: runtime_rocm::Error) -> Self {
        GpuModelError::Gpu(e.into())
    }
}

impl From<WeightsError> for GpuModelError {
    fn from(e: WeightsError) -> Self {
        GpuModelError::Unsupported(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    /// The server moves the model and its cache into its engine task.
    #[test]
    fn model_and_cache_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<super::GpuModel>();
        send::<super::GpuKvCache>();
    }
}
