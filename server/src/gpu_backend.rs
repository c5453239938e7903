//! The [`Backend`] for a DeepSeek-V3-family model on a GPU: [`GpuModel`]'s forward pass over
//! its paged device KV cache. Sequences take blocks of [`KV_BLOCK_TOKENS`] tokens as they
//! grow, so the scheduler reserves whole blocks; the context length is the model's (or the
//! attention kernel's limit on this device, when lower).

use model_deepseek::SeqId;
use model_deepseek::gpu::{GpuKvCache, GpuModel, KV_BLOCK_TOKENS};

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

    /// Whole blocks: a partly filled block counts in full.
    fn kv_used_tokens(&self) -> usize {
        self.cache.used_tokens()
    }

    fn kv_block_tokens(&self) -> usize {
        KV_BLOCK_TOKENS
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
}
