//! The paged latent KV cache on the device. Per layer, one f32 latent array
//! `[rows, kv_lora_rank]` and one rope-key array `[rows, qk_rope_head_dim]`, where
//! `rows = blocks × KV_BLOCK_TOKENS`: a pool of fixed-size blocks shared by every sequence.
//! Each sequence has a block table (its blocks in token order, kept on the host by
//! [`BlockAllocator`]) that grows as tokens are appended, so a sequence takes memory for the
//! tokens it holds (rounded up to one block), not for a whole context, and may grow to the
//! model's context while blocks remain. Token `p` of a sequence lives in row
//! `table[p / KV_BLOCK_TOKENS] × KV_BLOCK_TOKENS + p % KV_BLOCK_TOKENS` of every layer.

use super::blocks::{BlockAllocator, BlockError, KV_BLOCK_TOKENS};
use super::plan::KvBudget;
use crate::config::ModelConfig;
use crate::kv_cache::SeqId;
use moe_kernels::gpu::GpuError;
use runtime_rocm::{Device, DeviceBuffer};
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of the next cache made: ids are never reused, so a graph captured over one cache's
/// arrays (keyed by its id) is never replayed over another's.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The latent KV cache of every live sequence, on one device.
#[derive(Debug)]
pub struct GpuKvCache {
    budget: KvBudget,
    /// Unique per cache made in this process (see [`NEXT_ID`]).
    pub(crate) id: u64,
    kv_lora_rank: usize,
    rope_dim: usize,
    /// Per layer: latent `[rows, kv_lora_rank]` and rope key `[rows, qk_rope_head_dim]`.
    pub(crate) layers: Vec<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
    pub(crate) blocks: BlockAllocator,
}

impl GpuKvCache {
    /// Allocates the cache for `budget` on `device` (the model's plan has checked it fits).
    pub(crate) fn new(
        device: &Device,
        config: &ModelConfig,
        budget: KvBudget,
    ) -> Result<Self, GpuError> {
        let rows = budget.tokens();
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                Ok((
                    device.alloc_zeroed(rows * config.kv_lora_rank)?,
                    device.alloc_zeroed(rows * config.qk_rope_head_dim)?,
                ))
            })
            .collect::<Result<_, GpuError>>()?;
        Ok(Self {
            budget,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            kv_lora_rank: config.kv_lora_rank,
            rope_dim: config.qk_rope_head_dim,
            layers,
            blocks: BlockAllocator::new(budget.blocks),
        })
    }

    /// The budget the cache was made for.
    pub fn budget(&self) -> KvBudget {
        self.budget
    }

    /// Tokens cached for `seq` (0 for a sequence the cache does not hold).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.blocks.seq_len(seq)
    }

    /// Whether the cache holds `seq`.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.blocks.contains(seq)
    }

    /// Number of sequences held.
    pub fn num_sequences(&self) -> usize {
        self.blocks.num_sequences()
    }

    /// `seq`'s blocks in token order (empty for a sequence the cache does not hold).
    pub fn block_table(&self, seq: SeqId) -> &[u32] {
        self.blocks.table(seq)
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.blocks.used_blocks()
    }

    /// Blocks free for growth and new sequences.
    pub fn free_blocks(&self) -> usize {
        self.blocks.free_blocks()
    }

    /// Token rows held by sequences (whole blocks: a partly filled block counts in full).
    pub fn used_tokens(&self) -> usize {
        self.used_blocks() * KV_BLOCK_TOKENS
    }

    /// Drop `seq` and return its blocks to the pool; `false` when it was not held.
    pub fn free(&mut self, seq: SeqId) -> bool {
        self.blocks.free(seq)
    }

    /// Whether this cache was made for a model with these dimensions.
    pub(crate) fn matches(&self, config: &ModelConfig) -> bool {
        self.layers.len() == config.num_hidden_layers
            && self.kv_lora_rank == config.kv_lora_rank
            && self.rope_dim == config.qk_rope_head_dim
    }

    /// Takes the blocks a forward call's appends need, all or nothing.
    pub(crate) fn grow(&mut self, appends: &[(SeqId, usize)]) -> Result<(), BlockError> {
        self.blocks.grow(appends)
    }

    /// Count `tokens` appended to every layer of `seq`.
    pub(crate) fn commit(&mut self, seq: SeqId, tokens: usize) {
        self.blocks.commit(seq, tokens);
    }
}
