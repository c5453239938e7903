//! The seam between the scheduler and whatever runs the model: the scheduler decides which
//! tokens of which sequences go into a step and how each next token is picked (the rule and
//! the sequence's uniform draw); the backend runs them and picks the tokens where the logits
//! are (on the device for a GPU), returning a logits row only where one is asked for.

use std::fmt;

pub use model_deepseek::sampling::{ChunkPick, Picked};

/// Identifies one sequence (one choice of one request) for the backend's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// Tokens of one sequence to append in a step: a prefill chunk or one decode token.
#[derive(Debug, Clone, Copy)]
pub struct StepChunk<'a> {
    /// The sequence the tokens belong to.
    pub seq: SequenceId,
    /// The tokens, appended after whatever the sequence already holds in the cache.
    pub tokens: &'a [u32],
    /// How to pick the token after the chunk's last position; `None` when no token is wanted
    /// yet (a prefill chunk that does not end the prompt).
    pub pick: Option<ChunkPick>,
}

/// A failure of the backend while running a step; the sequences of that step are failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What the scheduler needs from a model: run a batch of chunks, free a sequence, and the
/// limits it schedules against. One engine thread owns the backend, so it needs no locking.
pub trait Backend: Send + 'static {
    /// Appends each chunk's tokens to its sequence and returns, per chunk and in order, the
    /// token its `pick` asked for (with the last position's `vocab_size` logits when the pick
    /// wants them), or `None` for a chunk without a pick.
    fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<Vec<Option<Picked>>, BackendError>;

    /// Frees everything the backend holds for `seq`; unknown sequences are ignored.
    fn release(&mut self, seq: SequenceId);

    /// How many tokens the KV cache can hold over all sequences.
    fn kv_capacity_tokens(&self) -> usize;

    /// How many tokens the KV cache holds right now.
    fn kv_used_tokens(&self) -> usize;

    /// The cache's allocation unit in tokens: a sequence of `n` tokens takes `n` rounded up
    /// to a multiple of it (1 for a cache that allocates token by token).
    fn kv_block_tokens(&self) -> usize {
        1
    }

    /// The longest sequence (prompt + completion) the model supports.
    fn context_length(&self) -> usize;

    /// Token ids must be below this.
    fn vocab_size(&self) -> usize;
}

impl fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("kv_capacity_tokens", &self.kv_capacity_tokens())
            .field("context_length", &self.context_length())
            .finish()
    }
}
