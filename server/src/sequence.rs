//! One sequence being generated: its tokens, sampler, detokenizer and stop strings, and the
//! channel its text goes back on.

use std::time::{Duration, Instant};

use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::SequenceId;
use crate::backend::{ChunkPick, Picked};
use crate::detokenizer::Detokenizer;
use crate::logprobs::{TokenLogprob, token_logprobs};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopMatcher;

/// Why a completion ended, as OpenAI's `finish_reason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// What the engine sends back for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceEvent {
    /// Log-probabilities of a generated token (only when requested); sent before its text.
    Token(TokenLogprob),
    /// New text (whole characters only; empty text is never sent).
    Text(String),
    /// The sequence ended; no more events follow.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens generated (including an end-of-sequence token).
        completion_tokens: usize,
    },
    /// The sequence could not be completed; no more events follow.
    Failed(String),
}

/// A request for one sequence, as the HTTP layer hands it to the engine.
#[derive(Debug)]
pub struct SequenceRequest {
    /// The prompt's tokens (at least one).
    pub prompt: Vec<u32>,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Which choice of its request this sequence is; events are tagged with it.
    pub choice: usize,
    /// Where events go (shared by the request's choices); when the receiver is dropped the
    /// sequence is cancelled.
    pub events: UnboundedSender<(usize, SequenceEvent)>,
    /// When the HTTP request arrived.
    pub arrived: Instant,
}

/// Timing facts a step reports to the metrics.
#[derive(Debug, Default)]
pub struct TokenTiming {
    /// Set when this was the sequence's first token: time since arrival.
    pub time_to_first_token: Option<Duration>,
    /// Set for later tokens: time since the previous token.
    pub inter_token: Option<Duration>,
}

/// The engine's state for one sequence.
#[derive(Debug)]
pub struct Sequence {
    /// The backend's id for it.
    pub id: SequenceId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_len: usize,
    /// Tokens already in the backend's KV cache.
    pub cached: usize,
    request: SequenceRequest,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    last_token_at: Option<Instant>,
}

impl Sequence {
    /// Starts a sequence for `request` under backend id `id`.
    pub fn new(id: SequenceId, request: SequenceRequest) -> Self {
        Self {
            id,
            tokens: request.prompt.clone(),
            prompt_len: request.prompt.len(),
            cached: 0,
            sampler: Sampler::new(request.sampling),
            detokenizer: Detokenizer::new(),
            stop: StopMatcher::new(request.stop.clone()),
            last_token_at: None,
            request,
        }
    }

    /// When the HTTP request arrived.
    pub fn arrived(&self) -> Instant {
        self.request.arrived
    }

    /// KV-cache tokens this sequence may need at most.
    pub fn reserved_tokens(&self) -> usize {
        self.prompt_len + self.request.max_tokens
    }

    /// Whether the client has gone away (its receiver was dropped).
    pub fn is_cancelled(&self) -> bool {
        self.request.events.is_closed()
    }

    /// Whether the whole prompt is in the cache, so the next step decodes.
    pub fn is_decoding(&self) -> bool {
        self.cached >= self.prompt_len
    }

    /// Tokens not yet in the cache.
    pub fn uncached(&self) -> &[u32] {
        &self.tokens[self.cached..]
    }

    /// Sends a failure; the sequence must then be dropped.
    pub fn fail(&self, message: String) {
        let _ = self
            .request
            .events
            .send((self.request.choice, SequenceEvent::Failed(message)));
    }

    /// How the backend is to pick this sequence's next token. Draws the generator's next
    /// number: call it once per token the step will generate.
    pub fn next_pick(&mut self) -> ChunkPick {
        ChunkPick {
            rule: self.sampler.rule(),
            u: self.sampler.draw(),
            logits: self.request.logprobs.is_some(),
        }
    }

    /// Takes the token the backend picked (with its logits row when logprobs were asked
    /// for), sends any completed text, and returns whether the sequence has finished (its
    /// final event sent).
    pub fn advance(
        &mut self,
        picked: Picked,
        tokenizer: &Tokenizer,
        eos: &[u32],
        timing: &mut TokenTiming,
    ) -> bool {
        let token = picked.token;
        if let Some(top_n) = self.request.logprobs {
            let Some(logits) = picked.logits else {
                self.fail("the backend returned no logits for a logprobs request".into());
                return true;
            };
            let event = SequenceEvent::Token(token_logprobs(&logits, token, top_n));
            let _ = self.request.events.send((self.request.choice, event));
        }
        let now = Instant::now();
        match self.last_token_at {
            None => timing.time_to_first_token = Some(now.duration_since(self.request.arrived)),
            Some(prev) => timing.inter_token = Some(now.duration_since(prev)),
        }
        self.last_token_at = Some(now);
        self.tokens.push(token);
        let generated = self.tokens.len() - self.prompt_len;
        if eos.contains(&token) {
            return self.finish(FinishReason::Stop, tokenizer);
        }
        let text = match self.detokenizer.push(tokenizer, token) {
            Ok(text) => text,
            Err(e) => {
                self.fail(format!("detokenizing token {token}: {e}"));
                return true;
            }
        };
        let outcome = self.stop.push(&text);
        self.send_text(outcome.emit);
        if outcome.stopped {
            return self.send_finished(FinishReason::Stop);
        }
        if generated >= self.request.max_tokens {
            return self.finish(FinishReason::Length, tokenizer);
        }
        false
    }

    /// Flushes held-back text and sends `Finished`.
    fn finish(&mut self, reason: FinishReason, tokenizer: &Tokenizer) -> bool {
        let tail = match self.detokenizer.flush(tokenizer) {
            Ok(tail) => tail,
            Err(e) => {
                self.fail(format!("detokenizing: {e}"));
                return true;
            }
        };
        let mut outcome = self.stop.push(&tail);
        if !outcome.stopped {
            outcome.emit.push_str(&self.stop.finish());
        }
        self.send_text(outcome.emit);
        self.send_finished(if outcome.stopped {
            FinishReason::Stop
        } else {
            reason
        })
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self
                .request
                .events
                .send((self.request.choice, SequenceEvent::Text(text)));
        }
    }

    fn send_finished(&self, reason: FinishReason) -> bool {
        let event = SequenceEvent::Finished {
            reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.tokens.len() - self.prompt_len,
        };
        let _ = self.request.events.send((self.request.choice, event));
        true
    }
}
