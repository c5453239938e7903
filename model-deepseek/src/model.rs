//! The model: validated config and weights, and the CPU forward pass over a batch of
//! sequence chunks with the latent KV cache.
//!
//! One forward call takes any mix of prefill chunks and single decode tokens from different
//! sequences. All tokens of the call go through the linear layers together; attention runs
//! per sequence over that sequence's cache. Every reference op computes each token's row
//! independently, so a sequence's logits do not depend on what else is in the batch.

use crate::attention::LayerAttention;
use crate::config::{ConfigError, ModelConfig};
use crate::feed_forward::feed_forward;
use crate::kv_cache::{KvCache, SeqId};
use crate::sampling::{Picked, SampledChunk, check_picks, pick_on_host};
use crate::weights::{FeedForward, Linear, Matrix, ModelWeights, WeightsError};
use moe_kernels::reference::{ActivationMode, RoutingMargin, linear, matmul, rmsnorm};
use std::collections::HashSet;
use thiserror::Error;

/// How the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardOptions {
    /// Whether W4A4 layers quantize their input activations (the checkpoint's numerics) or
    /// keep them f32.
    pub activations: ActivationMode,
}

/// Why a model cannot be built.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The config has an impossible value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The weights disagree with the config.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Why a forward call failed. Every error but [`ForwardError::NonFiniteLogits`] is found
/// before any work and leaves the cache unchanged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ForwardError {
    /// A chunk has no tokens.
    #[error("{seq}: empty chunk")]
    EmptyChunk {
        /// The sequence.
        seq: SeqId,
    },
    /// The same sequence appears twice in one call.
    #[error("{seq} appears more than once in one forward call")]
    DuplicateSequence {
        /// The sequence.
        seq: SeqId,
    },
    /// A token id is outside the vocabulary.
    #[error(
        "{seq}: token {token} at chunk index {index} is outside the vocabulary of {vocab_size}"
    )]
    TokenOutOfVocab {
        /// The sequence.
        seq: SeqId,
        /// Index of the token within its chunk.
        index: usize,
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The sequence would grow past `max_position_embeddings`.
    #[error("{seq}: context of {length} tokens exceeds max_position_embeddings = {max}")]
    ContextTooLong {
        /// The sequence.
        seq: SeqId,
        /// Cached plus new tokens.
        length: usize,
        /// The model's limit.
        max: usize,
    },
    /// The cache cannot hold the new tokens.
    #[error("KV cache full: {needed} new tokens, {free} free")]
    OutOfCapacity {
        /// Tokens in this call.
        needed: usize,
        /// Free tokens in the cache.
        free: usize,
    },
    /// The logits hold NaN or infinity (weights or activations overflowed). The tokens were
    /// appended to the cache, which stays consistent; free the sequence.
    #[error("{seq}: non-finite logits")]
    NonFiniteLogits {
        /// The sequence.
        seq: SeqId,
    },
    /// A chunk's sampling request is outside the sampler's domain.
    #[error("{seq}: {reason}")]
    BadSampling {
        /// The sequence.
        seq: SeqId,
        /// Which parameter, and why.
        reason: String,
    },
    /// The cache was made for a model of other dimensions.
    #[error(
        "KV cache was made for another model (layers, kv_lora_rank or qk_rope_head_dim differ)"
    )]
    CacheMismatch,
}

/// Tokens to append to one sequence: a prefill chunk or one decode token.
#[derive(Debug, Clone, Copy)]
pub struct SequenceChunk<'a> {
    /// The sequence (new or cached).
    pub seq: SeqId,
    /// Its next tokens.
    pub tokens: &'a [u32],
}

/// A DeepSeek-V3-family model ready to run on the CPU.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    weights: ModelWeights,
    options: ForwardOptions,
    /// Per layer: the attention state prepared at build.
    attention: Vec<LayerAttention>,
}

/// Which positions' logits a forward call returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogitRows {
    LastOfEachChunk,
    All,
}

/// Per MoE layer (in layer order), the [`RoutingMargin`] of every token of a forward call
/// (chunks in order).
pub type RoutingMargins = Vec<Vec<RoutingMargin>>;

impl Model {
    /// Check `weights` against `config` and prepare the forward pass (the rotary table and,
    /// per layer, `kv_b_proj` as f32 for absorbed attention).
    pub fn new(
        config: ModelConfig,
        weights: ModelWeights,
        options: ForwardOptions,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        weights.validate(&config)?;
        let rope = config.rope();
        let attention = weights
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                LayerAttention::new(
                    &config,
                    i,
                    rope.clone(),
                    &layer.attention,
                    options.activations,
                )
            })
            .collect();
        Ok(Self {
            config,
            weights,
            options,
            attention,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's weights.
    pub fn weights(&self) -> &ModelWeights {
        &self.weights
    }

    /// The options it runs with.
    pub fn options(&self) -> ForwardOptions {
        self.options
    }

    /// Append each chunk's tokens to its sequence's cache and return, per chunk, the logits
    /// (`[vocab_size]`) of its last token. Refused calls leave the cache unchanged.
    pub fn forward(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        let logits = self.run(chunks, cache, LogitRows::LastOfEachChunk, None)?;
        Ok(logits.into_iter().map(|m| m.data).collect())
    }

    /// As [`Self::forward`], then picks each chunk's next token on the host where its
    /// `pick` asks for one (the same rule as [`crate::gpu::GpuModel::forward_sampled`]).
    pub fn forward_sampled(
        &self,
        chunks: &[SampledChunk<'_>],
        cache: &mut KvCache,
    ) -> Result<Vec<Option<Picked>>, ForwardError> {
        check_picks(chunks)?;
        let plain: Vec<SequenceChunk<'_>> = chunks.iter().map(|c| c.chunk).collect();
        let logits = self.forward(&plain, cache)?;
        chunks
            .iter()
            .zip(logits)
            .map(|(c, row)| {
                c.pick
                    .map(|p| pick_on_host(c.chunk.seq, row, &p))
                    .transpose()
            })
            .collect()
    }

    /// As [`Self::forward`], and also return how close each token's expert choice was to
    /// changing: per MoE layer (in layer order), the [`RoutingMargin`] of every token of the
    /// call (chunks in order). Another implementation whose router scores differ from these
    /// by less than half a margin chooses the same experts.
    pub fn forward_with_routing_margins(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut KvCache,
    ) -> Result<(Vec<Vec<f32>>, RoutingMargins), ForwardError> {
        let mut margins = Vec::new();
        let logits = self.run(
            chunks,
            cache,
            LogitRows::LastOfEachChunk,
            Some(&mut margins),
        )?;
        Ok((logits.into_iter().map(|m| m.data).collect(), margins))
    }

    /// As [`Self::forward`], but return every position's logits: per chunk a matrix
    /// `[tokens, vocab_size]`.
    pub fn forward_all_positions(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut KvCache,
    ) -> Result<Vec<Matrix>, ForwardError> {
        self.run(chunks, cache, LogitRows::All, None)
    }

    fn check(&self, chunks: &[SequenceChunk<'_>], cache: &KvCache) -> Result<(), ForwardError> {
        if !cache.matches(&self.config) {
            return Err(ForwardError::CacheMismatch);
        }
        let mut seen = HashSet::new();
        let vocab_size = self.config.vocab_size;
        for chunk in chunks {
            let seq = chunk.seq;
            if chunk.tokens.is_empty() {
                return Err(ForwardError::EmptyChunk { seq });
            }
            if !seen.insert(seq) {
                return Err(ForwardError::DuplicateSequence { seq });
            }
            if let Some((index, &token)) = chunk
                .tokens
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab_size)
            {
                return Err(ForwardError::TokenOutOfVocab {
                    seq,
                    index,
                    token,
                    vocab_size,
                });
            }
            let length = cache.seq_len(seq) + chunk.tokens.len();
            if length > self.config.max_position_embeddings {
                return Err(ForwardError::ContextTooLong {
                    seq,
                    length,
                    max: self.config.max_position_embeddings,
                });
            }
        }
        let needed: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        if needed > cache.free_tokens() {
            return Err(ForwardError::OutOfCapacity {
                needed,
                free: cache.free_tokens(),
            });
        }
        Ok(())
    }

    fn run(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut KvCache,
        rows: LogitRows,
        mut margins: Option<&mut RoutingMargins>,
    ) -> Result<Vec<Matrix>, ForwardError> {
        self.check(chunks, cache)?;
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let c = &self.config;
        let h = c.hidden_size;
        let mode = self.options.activations;
        let batch = Batch::new(chunks, cache);
        let t = batch.positions.len();

        let mut x = Vec::with_capacity(t * h);
        for chunk in chunks {
            for &token in chunk.tokens {
                x.extend_from_slice(self.weights.embed_tokens.row(token as usize));
            }
        }
        let mut normed = vec![0f32; t * h];
        let mut delta = vec![0f32; t * h];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            rmsnorm(&x, &layer.input_layernorm, c.rms_norm_eps, &mut normed);
            self.attention[l].forward(&normed, &batch, cache, &layer.attention, &mut delta);
            add_assign(&mut x, &delta);
            rmsnorm(
                &x,
                &layer.post_attention_layernorm,
                c.rms_norm_eps,
                &mut normed,
            );
            let layer_margins = match (&mut margins, &layer.feed_forward) {
                (Some(all), FeedForward::Moe(_)) => {
                    all.push(Vec::with_capacity(t));
                    all.last_mut()
                }
                _ => None,
            };
            feed_forward(
                c,
                &layer.feed_forward,
                &normed,
                t,
                mode,
                &mut delta,
                layer_margins,
            );
            add_assign(&mut x, &delta);
        }
        for chunk in chunks {
            cache.commit(chunk.seq, chunk.tokens.len());
        }

        let mut out = Vec::with_capacity(chunks.len());
        for (chunk, &start) in chunks.iter().zip(&batch.chunk_starts) {
            let n = chunk.tokens.len();
            let (first, count) = match rows {
                LogitRows::LastOfEachChunk => (start + n - 1, 1),
                LogitRows::All => (start, n),
            };
            let logits = self.logits(&x[first * h..(first + count) * h], count);
            if !logits.data.iter().all(|v| v.is_finite()) {
                return Err(ForwardError::NonFiniteLogits { seq: chunk.seq });
            }
            out.push(logits);
        }
        Ok(out)
    }

    /// Final norm and `lm_head` on `m` rows of the residual stream.
    fn logits(&self, x: &[f32], m: usize) -> Matrix {
        let c = &self.config;
        let mut normed = vec![0f32; x.len()];
        rmsnorm(x, &self.weights.norm, c.rms_norm_eps, &mut normed);
        let mut data = vec![0f32; m * c.vocab_size];
        match &self.weights.lm_head {
            Some(head) => linear(&normed, m, head, self.options.activations, &mut data),
            None => {
                let e = &self.weights.embed_tokens;
                matmul(&normed, &e.data, m, e.cols, e.rows, &mut data);
            }
        }
        Matrix {
            rows: m,
            cols: c.vocab_size,
            data,
        }
    }
}

/// Where each token of a forward call sits.
pub(crate) struct Batch<'a> {
    /// The chunks as given.
    pub chunks: &'a [SequenceChunk<'a>],
    /// Index of each chunk's first token in the flattened batch.
    pub chunk_starts: Vec<usize>,
    /// Each token's position in its sequence.
    pub positions: Vec<usize>,
}

impl<'a> Batch<'a> {
    fn new(chunks: &'a [SequenceChunk<'a>], cache: &KvCache) -> Self {
        let mut chunk_starts = Vec::with_capacity(chunks.len());
        let mut positions = Vec::new();
        for chunk in chunks {
            chunk_starts.push(positions.len());
            let past = cache.seq_len(chunk.seq);
            positions.extend(past..past + chunk.tokens.len());
        }
        Self {
            chunks,
            chunk_starts,
            positions,
        }
    }
}

fn add_assign(x: &mut [f32], delta: &[f32]) {
    for (a, d) in x.iter_mut().zip(delta) {
        *a += d;
    }
}

/// `out = x · Wᵀ` for `m` rows, allocating the output.
pub(crate) fn apply(w: &Linear, x: &[f32], m: usize, mode: ActivationMode) -> Vec<f32> {
    let mut out = vec![0f32; m * w.out_features()];
    linear(x, m, w, mode, &mut out);
    out
}
