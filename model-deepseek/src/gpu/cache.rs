//! The latent KV cache on the device: per layer, one f32 latent array and one rope-key array
//! of `sequences × tokens_per_sequence` rows. Each live sequence owns one contiguous slab of
//! `tokens_per_sequence` rows (not paged: a short sequence still reserves a whole slab; a
//! block table per sequence is the next step).

use super::plan::KvBudget;
use crate::config::ModelConfig;
use crate::kv_cache::SeqId;
use moe_kernels::gpu::GpuError;
use runtime_rocm::{Device, DeviceBuffer};
use std::collections::HashMap;

/// One sequence's place in the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slab {
    /// Slab index; its rows start at `index × tokens_per_sequence`.
    pub index: usize,
    /// Tokens committed.
    pub len: usize,
}

/// The latent KV cache of every live sequence, on one device.
#[derive(Debug)]
pub struct GpuKvCache {
    budget: KvBudget,
    kv_lora_rank: usize,
    rope_dim: usize,
    /// Per layer: latent `[rows, kv_lora_rank]` and rope key `[rows, qk_rope_head_dim]`.
    pub(crate) layers: Vec<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
    sequences: HashMap<SeqId, Slab>,
    free_slabs: Vec<usize>,
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
            kv_lora_rank: config.kv_lora_rank,
            rope_dim: config.qk_rope_head_dim,
            layers,
            sequences: HashMap::new(),
            free_slabs: (0..budget.sequences).rev().collect(),
        })
    }

    /// The budget the cache was made for.
    pub fn budget(&self) -> KvBudget {
        self.budget
    }

    /// Tokens cached for `seq` (0 for a sequence the cache does not hold).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.sequences.get(&seq).map_or(0, |s| s.len)
    }

    /// Whether the cache holds `seq`.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.sequences.contains_key(&seq)
    }

    /// Number of sequences held.
    pub fn num_sequences(&self) -> usize {
        self.sequences.len()
    }

    /// Slabs still free for new sequences.
    pub fn free_sequences(&self) -> usize {
        self.free_slabs.len()
    }

    /// Drop `seq` and free its slab; `false` when it was not held.
    pub fn free(&mut self, seq: SeqId) -> bool {
        match self.sequences.remove(&seq) {
            Some(slab) => {
                self.free_slabs.push(slab.index);
                true
            }
            None => false,
        }
    }

    /// Whether this cache was made for a model with these dimensions.
    pub(crate) fn matches(&self, config: &ModelConfig) -> bool {
        self.layers.len() == config.num_hidden_layers
            && self.kv_lora_rank == config.kv_lora_rank
            && self.rope_dim == config.qk_rope_head_dim
    }

    /// `seq`'s slab, taking a free one for a new sequence (callers have checked one is free).
    pub(crate) fn slab(&mut self, seq: SeqId) -> Slab {
        if let Some(slab) = self.sequences.get(&seq) {
            return *slab;
        }
        let index = self.free_slabs.pop().expect("a free slab was checked for");
        let slab = Slab { index, len: 0 };
        self.sequences.insert(seq, slab);
        slab
    }

    /// Count `tokens` appended to every layer of `seq`.
    pub(crate) fn commit(&mut self, seq: SeqId, tokens: usize) {
        if let Some(slab) = self.sequences.get_mut(&seq) {
            slab.len += tokens;
        }
    }
}
