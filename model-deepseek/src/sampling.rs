//! Picking each chunk's next token inside the forward call, so a GPU step returns tokens
//! instead of `vocab` logits per sequence. The rule is [`moe_kernels::reference::sample_token`]'s
//! on both devices; the caller keeps the random generator and passes one uniform draw per
//! pick, so a seeded sequence gives the same tokens on the CPU and on the GPU (up to draws
//! within f64 rounding of a probability boundary).

use crate::kv_cache::SeqId;
use crate::model::{ForwardError, SequenceChunk};
pub use moe_kernels::reference::{SamplingRule, sample_token};

/// What to pick after a chunk's last position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkPick {
    /// How to pick.
    pub rule: SamplingRule,
    /// The caller's uniform draw in [0, 1) for this pick (unused when greedy).
    pub u: f64,
    /// Also return the chunk's last-position logits (for log-probabilities).
    pub logits: bool,
}

impl ChunkPick {
    /// Refuses a rule or draw outside the sampler's domain, naming the parameter.
    pub fn check(&self, seq: SeqId) -> Result<(), ForwardError> {
        let r = &self.rule;
        let reason = if !(r.temperature.is_finite() && r.temperature >= 0.0) {
            format!("temperature {} is not a finite value >= 0", r.temperature)
        } else if !(r.top_p > 0.0 && r.top_p <= 1.0) {
            format!("top_p {} is outside (0, 1]", r.top_p)
        } else if !(0.0..1.0).contains(&self.u) {
            format!("the uniform draw {} is outside [0, 1)", self.u)
        } else {
            return Ok(());
        };
        Err(ForwardError::BadSampling { seq, reason })
    }
}

/// A chunk of a forward call and, when the caller wants the next token, how to pick it.
#[derive(Debug, Clone, Copy)]
pub struct SampledChunk<'a> {
    /// The tokens to append.
    pub chunk: SequenceChunk<'a>,
    /// `None` for a chunk whose next token is not wanted (a prefill chunk that does not end
    /// the prompt): nothing is picked for it.
    pub pick: Option<ChunkPick>,
}

/// What a forward call picked for one chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    /// The token.
    pub token: u32,
    /// The chunk's last-position logits, when the pick asked for them.
    pub logits: Option<Vec<f32>>,
}

/// Checks every pick of a call before any work, so a refused call leaves the cache as it was.
pub(crate) fn check_picks(chunks: &[SampledChunk<'_>]) -> Result<(), ForwardError> {
    chunks
        .iter()
        .filter_map(|c| c.pick.map(|p| (c.chunk.seq, p)))
        .try_for_each(|(seq, p)| p.check(seq))
}

/// The host path: picks from a chunk's logits row, which the forward pass has checked finite.
pub(crate) fn pick_on_host(
    seq: SeqId,
    logits: Vec<f32>,
    pick: &ChunkPick,
) -> Result<Picked, ForwardError> {
    let token =
        sample_token(&logits, &pick.rule, pick.u).ok_or(ForwardError::NonFiniteLogits { seq })?;
    Ok(Picked {
        token,
        logits: pick.logits.then_some(logits),
    })
}
