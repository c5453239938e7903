//! The [`Backend`] for a DeepSeek-V3-family model on the CPU: the model's forward pass over
//! its own KV cache.

use model_deepseek::sampling::SampledChunk;
use model_deepseek::{KvCache, Model, SeqId, SequenceChunk};

use crate::backend::{Backend, BackendError, Picked, SequenceId, StepChunk};

/// A model and its KV cache, owned by the engine thread.
#[derive(Debug)]
pub struct ModelBackend {
    model: Model,
    cache: KvCache,
}

impl ModelBackend {
    /// Wraps `model` with a KV cache of `kv_capacity_tokens` tokens.
    pub fn new(model: Model, kv_capacity_tokens: usize) -> Self {
        let cache = KvCache::new(model.config(), kv_capacity_tokens);
        Self { model, cache }
    }

    /// Bytes the KV cache needs per token for this model.
    pub fn kv_bytes_per_token(model: &Model) -> usize {
        KvCache::bytes_per_token(model.config())
    }
}

/// The scheduler's chunks in the model's terms (shared with the GPU backend).
pub(crate) fn model_chunks<'a>(chunks: &[StepChunk<'a>]) -> Vec<SampledChunk<'a>> {
    chunks
        .iter()
        .map(|c| SampledChunk {
            chunk: SequenceChunk {
                seq: SeqId(c.seq.0),
                tokens: c.tokens,
            },
            pick: c.pick,
        })
        .collect()
}

impl Backend for ModelBackend {
    /// Picks on the host, from the CPU model's logits.
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<Vec<Option<Picked>>, BackendError> {
        self.model
            .forward_sampled(&model_chunks(chunks), &mut self.cache)
            .map_err(|e| BackendError(e.to_string()))
    }

    fn release(&mut self, seq: SequenceId) {
        self.cache.free(SeqId(seq.0));
    }

    fn kv_capacity_tokens(&self) -> usize {
        self.cache.capacity_tokens()
    }

    fn kv_used_tokens(&self) -> usize {
        self.cache.used_tokens()
    }

    fn context_length(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
}
