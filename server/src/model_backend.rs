//! The [`Backend`] for a DeepSeek-V3-family model on the CPU: the model's forward pass over
//! its own KV cache.

use model_deepseek::{KvCache, Model, SeqId, SequenceChunk};

use crate::backend::{Backend, BackendError, SequenceId, StepChunk};

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

impl Backend for ModelBackend {
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<Vec<Vec<f32>>, BackendError> {
        let chunks: Vec<SequenceChunk<'_>> = chunks
            .iter()
            .map(|c| SequenceChunk {
                seq: SeqId(c.seq.0),
                tokens: c.tokens,
            })
            .collect();
        self.model
            .forward(&chunks, &mut self.cache)
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
