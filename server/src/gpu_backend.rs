//! The [`Backend`] for a DeepSeek-V3-family model on a GPU: [`GpuModel`]'s forward pass over
//! its device KV cache. The cache gives each live sequence one slab of
//! `tokens_per_sequence` tokens, so the backend reports that as its context length and the
//! server runs at most `sequences` sequences at once.

use model_deepseek::SeqId;
use model_deepseek::gpu::{GpuKvCache, GpuModel};

use crate::backend::{Backend, BackendError, Picked, SequenceId, StepChunk};
use crate::model_backend::model_chunks;

/// A model resident on a GPU and its KV cache, owned by the engine thread.
#[derive(Debug)]
pub struct GpuBackend {
    model: GpuModel,
    cache: GpuKvCache,
}

impl GpuBackend {
    /// Allocates the KV cache `model` was planned with.
    pub fn new(model: GpuModel) -> Result<Self, model_deepseek::gpu::GpuModelError> {
        let cache = model.new_cache()?;
        Ok(Self { model, cache })
    }
}

impl Backend for GpuBackend {
    /// Picks on the device: only tokens (and requested logits rows) come back.
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<Vec<Option<Picked>>, BackendError> {
        self.model
            .forward_sampled(&model_chunks(chunks), &mut self.cache)
            .map_err(|e| BackendError(e.to_string()))
    }

    fn release(&mut self, seq: SequenceId) {
        self.cache.free(SeqId(seq.0));
    }

    fn kv_capacity_tokens(&self) -> usize {
        self.cache.budget().tokens()
    }

    /// Whole slabs: a live sequence takes its slab's memory however short it is.
    fn kv_used_tokens(&self) -> usize {
        self.cache.num_sequences() * self.cache.budget().tokens_per_sequence
    }

    fn context_length(&self) -> usize {
        self.cache.budget().tokens_per_sequence
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
}
