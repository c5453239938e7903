//! The engine: one thread that owns the backend and runs the continuous-batching loop.
//! Requests arrive on a channel; between steps new sequences join the batch, finished and
//! cancelled ones leave it; prefill is chunked under a token budget; a sequence is admitted
//! only when the KV cache can hold its prompt and all the tokens it may generate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use crate::backend::{Backend, ChunkPick, Picked, SequenceId, StepChunk};
use crate::metrics::Metrics;
use crate::sequence::{Sequence, SequenceRequest, TokenTiming};
use model_deepseek::sampling::SamplingRule;

/// Scheduling limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Most tokens (prefill chunks + decode tokens) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences in the running batch.
    pub max_running: usize,
    /// Most sequences waiting for admission; past it, submissions are refused.
    pub max_waiting: usize,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The waiting queue is full; the client should retry later.
    #[error("the server is busy: {waiting} sequences are already waiting (limit {limit})")]
    QueueFull {
        /// Sequences waiting now.
        waiting: usize,
        /// The configured limit.
        limit: usize,
    },
    /// One sequence would need more KV-cache tokens (whole blocks of the cache) than the
    /// whole cache holds.
    #[error("prompt plus max_tokens needs {needed} KV-cache tokens but the cache holds {capacity}")]
    TooLarge {
        /// Tokens needed.
        needed: usize,
        /// Cache capacity.
        capacity: usize,
    },
    /// A prompt token is outside the model's vocabulary (the tokenizer knows more tokens
    /// than the model); refused here so it cannot fail a whole batch.
    #[error("prompt token {token} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The token id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

enum Message {
    Submit(Vec<SequenceRequest>),
    Health(oneshot::Sender<Result<(), String>>),
    Shutdown,
    CancelAll,
}

/// The async side's handle to the engine thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    max_waiting: usize,
    kv_capacity: usize,
    /// The cache's allocation unit: requests need whole blocks.
    kv_block_tokens: usize,
    context_length: usize,
    vocab_size: usize,
}

#[derive(Debug, Default)]
struct Shared {
    /// Sequences submitted but not yet admitted (counted at submission, so a burst of
    /// requests cannot overshoot the limit before the engine sees them).
    waiting: AtomicUsize,
    accepting: AtomicBool,
    alive: AtomicBool,
    healthy: AtomicBool,
}

impl EngineHandle {
    /// Queues sequences (all of one request, admitted to the queue together or not at all).
    pub fn submit(&self, requests: Vec<SequenceRequest>) -> Result<(), SubmitError> {
        if !self.shared.accepting.load(Ordering::SeqCst)
            || !self.shared.alive.load(Ordering::SeqCst)
        {
            return Err(SubmitError::ShuttingDown);
        }
        if let Some(needed) = requests
            .iter()
            .map(|r| (r.prompt.len() + r.max_tokens).next_multiple_of(self.kv_block_tokens))
            .find(|&n| n > self.kv_capacity)
        {
            return Err(SubmitError::TooLarge {
                needed,
                capacity: self.kv_capacity,
            });
        }
        if let Some(&token) = requests
            .iter()
            .flat_map(|r| &r.prompt)
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(SubmitError::TokenOutOfVocab {
                token,
                vocab_size: self.vocab_size,
            });
        }
        let n = requests.len();
        let before = self.shared.waiting.fetch_add(n, Ordering::SeqCst);
        if before + n > self.max_waiting {
            self.shared.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::QueueFull {
                waiting: before,
                limit: self.max_waiting,
            });
        }
        self.tx.send(Message::Submit(requests)).map_err(|_| {
            self.shared.waiting.fetch_sub(n, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    /// Checks the engine: the first successful call runs a one-token forward pass, later
    /// calls only check that the engine thread is alive.
    pub async fn health(&self) -> Result<(), String> {
        if !self.shared.alive.load(Ordering::SeqCst) {
            return Err("the engine thread has stopped".into());
        }
        if self.shared.healthy.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Health(reply))
            .map_err(|_| "the engine thread has stopped".to_string())?;
        let result = answer
            .await
            .map_err(|_| "the engine thread stopped during the health check".to_string())?;
        if result.is_ok() {
            self.shared.healthy.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Stops accepting new sequences; running and waiting ones go on to completion.
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let _ = self.tx.send(Message::Shutdown);
    }

    /// Fails every sequence still queued or running (after a shutdown deadline).
    pub fn cancel_all(&self) {
        let _ = self.tx.send(Message::CancelAll);
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The KV cache's capacity in tokens.
    pub fn kv_capacity(&self) -> usize {
        self.kv_capacity
    }
}

/// Starts the engine thread with `backend`; the thread ends when every handle is dropped (or
/// after [`EngineHandle::stop_accepting`]) and no sequence is left.
pub fn spawn<B: Backend>(
    backend: B,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        accepting: AtomicBool::new(true),
        alive: AtomicBool::new(true),
        ..Shared::default()
    });
    let handle = EngineHandle {
        tx,
        shared: shared.clone(),
        max_waiting: limits.max_waiting,
        kv_capacity: backend.kv_capacity_tokens(),
        kv_block_tokens: backend.kv_block_tokens().max(1),
        context_length: backend.context_length(),
        vocab_size: backend.vocab_size(),
    };
    let mut engine = Engine {
        backend,
        tokenizer,
        eos_token_ids,
        limits,
        metrics,
        shared,
        waiting: VecDeque::new(),
        running: Vec::new(),
        reserved: 0,
        next_id: 0,
        shutting_down: false,
    };
    let thread = std::thread::Builder::new()
        .name("mxserve-engine".into())
        .spawn(move || engine.run(&rx))?;
    Ok((handle, thread))
}

struct Engine<B> {
    backend: B,
    tokenizer: Arc<Tokenizer>,
    eos_token_ids: Vec<u32>,
    limits: EngineLimits,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    /// KV-cache tokens promised to running sequences (whole blocks of the backend's cache).
    reserved: usize,
    next_id: u64,
    shutting_down: bool,
}

/// Marks the engine dead when its thread ends, even by a panic.
struct AliveGuard<'a>(&'a Shared);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

impl<B: Backend> Engine<B> {
    fn run(&mut self, rx: &mpsc::Receiver<Message>) {
        let shared = self.shared.clone();
        let _guard = AliveGuard(&shared);
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if self.shutting_down {
                    break;
                }
                match rx.recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish_state();
        }
        tracing::info!("engine stopped");
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Submit(requests) => {
                for request in requests {
                    let id = SequenceId(self.next_id);
                    self.next_id += 1;
                    self.waiting.push_back(Sequence::new(id, request));
                }
            }
            Message::Health(reply) => {
                let _ = reply.send(self.health_check());
            }
            Message::Shutdown => self.shutting_down = true,
            Message::CancelAll => {
                let waiting = std::mem::take(&mut self.waiting);
                self.shared
                    .waiting
                    .fetch_sub(waiting.len(), Ordering::SeqCst);
                for seq in waiting.iter().chain(&self.running) {
                    seq.fail("the server shut down before this completion finished".into());
                }
                for seq in std::mem::take(&mut self.running) {
                    self.release(&seq);
                }
            }
        }
    }

    /// One real forward pass of one token on a scratch sequence.
    fn health_check(&mut self) -> Result<(), String> {
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        let result = self.backend.step(&[StepChunk {
            seq: id,
            tokens: &[0],
            pick: Some(ChunkPick {
                rule: SamplingRule::GREEDY,
                u: 0.0,
                logits: true,
            }),
        }]);
        self.backend.release(id);
        let finite = |picked: &[Option<Picked>]| match picked {
            [
                Some(Picked {
                    logits: Some(row), ..
                }),
            ] => row.iter().all(|v| v.is_finite()),
            _ => false,
        };
        match result {
            Ok(picked) if finite(&picked) => Ok(()),
            Ok(_) => Err("the health-check forward pass returned non-finite logits".into()),
            Err(e) => Err(format!("the health-check forward pass failed: {e}")),
        }
    }

    fn release(&mut self, seq: &Sequence) {
        self.backend.release(seq.id);
        self.reserved -= self.reservation(seq);
    }

    /// KV-cache tokens `seq` may take at most: prompt plus `max_tokens`, in whole blocks of
    /// the backend's cache.
    fn reservation(&self, seq: &Sequence) -> usize {
        seq.reserved_tokens()
            .next_multiple_of(self.backend.kv_block_tokens().max(1))
    }

    /// Frees sequences whose clients went away.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.is_cancelled());
        self.shared
            .waiting
            .fetch_sub(before - self.waiting.len(), Ordering::SeqCst);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(Sequence::is_cancelled);
        self.running = kept;
        for seq in gone {
            tracing::debug!(seq = seq.id.0, "client went away; sequence freed");
            self.release(&seq);
        }
    }

    /// Moves waiting sequences, oldest first, into the batch while the KV cache can hold
    /// everything they may need.
    fn admit(&mut self) {
        let capacity = self.backend.kv_capacity_tokens();
        while let Some(front) = self.waiting.front() {
            if self.running.len() >= self.limits.max_running
                || self.reserved + self.reservation(front) > capacity
            {
                break;
            }
            let seq = self.waiting.pop_front().expect("front exists");
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.queue_time.observe(seq.arrived().elapsed());
            self.reserved += self.reservation(&seq);
            self.running.push(seq);
        }
    }

    /// Runs one batch: a decode token for each decoding sequence, then prefill chunks, all
    /// under the token budget; samples where a sequence's cached tokens caught up.
    fn step(&mut self) {
        let mut budget = self.limits.max_batch_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for decoding in [true, false] {
            for (i, seq) in self.running.iter().enumerate() {
                if budget == 0 {
                    break;
                }
                if seq.is_decoding() == decoding {
                    let n = seq.uncached().len().min(budget);
                    plan.push((i, n));
                    budget -= n;
                }
            }
        }
        let started = Instant::now();
        // A draw only for the chunks that end their sequence's uncached tokens: the
        // generator moves once per generated token, whatever the chunking.
        let picks: Vec<Option<ChunkPick>> = plan
            .iter()
            .map(|&(i, n)| {
                let seq = &mut self.running[i];
                (seq.cached + n >= seq.tokens.len()).then(|| seq.next_pick())
            })
            .collect();
        let chunks: Vec<StepChunk<'_>> = plan
            .iter()
            .zip(&picks)
            .map(|(&(i, n), &pick)| StepChunk {
                seq: self.running[i].id,
                tokens: &self.running[i].uncached()[..n],
                pick,
            })
            .collect();
        let result = self.backend.step(&chunks);
        drop(chunks);
        let picked = match result {
            Ok(picked) if picked.len() == plan.len() => picked,
            Ok(picked) => {
                self.fail_planned(
                    &plan,
                    format!(
                        "the backend returned {} results for {} chunks",
                        picked.len(),
                        plan.len()
                    ),
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                self.fail_planned(&plan, format!("the forward pass failed: {e}"));
                return;
            }
        };
        let (mut prompt_tokens, mut generated) = (0, 0);
        let mut finished = Vec::new();
        for (&(i, n), picked) in plan.iter().zip(picked) {
            let seq = &mut self.running[i];
            if !seq.is_decoding() {
                prompt_tokens += n;
            }
            seq.cached += n;
            if seq.cached < seq.tokens.len() {
                continue;
            }
            let Some(picked) = picked else {
                seq.fail("the backend picked no token for a chunk that asked for one".into());
                finished.push(i);
                continue;
            };
            generated += 1;
            let mut timing = TokenTiming::default();
            if seq.advance(picked, &self.tokenizer, &self.eos_token_ids, &mut timing) {
                finished.push(i);
            }
            if let Some(d) = timing.time_to_first_token {
                self.metrics.time_to_first_token.observe(d);
            }
            if let Some(d) = timing.inter_token {
                self.metrics.inter_token_latency.observe(d);
            }
        }
        tracing::trace!(chunks = plan.len(), prompt_tokens, generated, elapsed = ?started.elapsed(), "step");
        self.metrics.count_tokens(prompt_tokens, generated);
        self.remove(&finished);
    }

    fn fail_planned(&mut self, plan: &[(usize, usize)], message: String) {
        let indices: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
        for &i in &indices {
            self.running[i].fail(message.clone());
        }
        self.remove(&indices);
    }

    /// Removes the running sequences at `indices` (ascending) and frees their cache.
    fn remove(&mut self, indices: &[usize]) {
        let mut indices = indices.to_vec();
        indices.sort_unstable();
        for &i in indices.iter().rev() {
            let seq = self.running.remove(i);
            self.release(&seq);
        }
    }

    fn publish_state(&self) {
        self.metrics.set_engine_state(
            self.running.len(),
            self.waiting.len(),
            self.backend.kv_used_tokens(),
            self.backend.kv_capacity_tokens(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::detokenizer::tests::byte_tokenizer;
    use crate::sampling::SamplingParams;
    use crate::sequence::{FinishReason, SequenceEvent};
    use model_deepseek::sampling::sample_token;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    const EOS: u32 = 256;
    const VOCAB: usize = 257;

    /// The fake model: the next token is a function of the whole history (so a chunking or
    /// cache mistake changes the output); after a `'x'` comes EOS.
    fn next_token(history: &[u32]) -> u32 {
        if history.last() == Some(&u32::from(b'x')) {
            return EOS;
        }
        let h = history.iter().fold(1469598103934665603u64, |h, &t| {
            (h ^ u64::from(t)).wrapping_mul(1099511628211)
        });
        (h % 256) as u32
    }

    #[derive(Default)]
    struct Record {
        max_used: usize,
        max_sequences: usize,
        released: Vec<SequenceId>,
        steps: usize,
    }

    /// A backend that keeps each sequence's tokens as its "KV cache", taken in blocks of
    /// `block` tokens.
    struct FakeModel {
        seqs: HashMap<SequenceId, Vec<u32>>,
        capacity: usize,
        block: usize,
        record: Arc<Mutex<Record>>,
        step_delay: Duration,
    }

    impl Backend for FakeModel {
        fn step(&mut self, chunks: &[StepChunk<'_>]) -> Result<Vec<Option<Picked>>, BackendError> {
            std::thread::sleep(self.step_delay);
            let mut out = Vec::new();
            for c in chunks {
                assert!(!c.tokens.is_empty(), "empty chunk");
                let seq = self.seqs.entry(c.seq).or_default();
                seq.extend_from_slice(c.tokens);
                let mut logits = vec![0.0; VOCAB];
                logits[next_token(seq) as usize] = 1.0;
                out.push(c.pick.map(|p| Picked {
                    token: sample_token(&logits, &p.rule, p.u).expect("finite logits"),
                    logits: p.logits.then_some(logits),
                }));
            }
            let used = self.kv_used_tokens();
            if used > self.capacity {
                return Err(BackendError(format!(
                    "cache overflow: {used} > {}",
                    self.capacity
                )));
            }
            let mut r = self.record.lock().unwrap();
            r.max_used = r.max_used.max(used);
            r.max_sequences = r.max_sequences.max(self.seqs.len());
            r.steps += 1;
            Ok(out)
        }
        fn release(&mut self, seq: SequenceId) {
            self.seqs.remove(&seq);
            self.record.lock().unwrap().released.push(seq);
        }
        fn kv_capacity_tokens(&self) -> usize {
            self.capacity
        }
        fn kv_used_tokens(&self) -> usize {
            self.seqs
                .values()
                .map(|s| s.len().next_multiple_of(self.block))
                .sum()
        }
        fn kv_block_tokens(&self) -> usize {
            self.block
        }
        fn context_length(&self) -> usize {
            4096
        }
        fn vocab_size(&self) -> usize {
            VOCAB
        }
    }

    fn start(
        capacity: usize,
        limits: EngineLimits,
        step_delay: Duration,
    ) -> (EngineHandle, Arc<Mutex<Record>>) {
        start_in_blocks(capacity, 1, limits, step_delay)
    }

    fn start_in_blocks(
        capacity: usize,
        block: usize,
        limits: EngineLimits,
        step_delay: Duration,
    ) -> (EngineHandle, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let backend = FakeModel {
            seqs: HashMap::new(),
            capacity,
            block,
            record: record.clone(),
            step_delay,
        };
        let (handle, _thread) = spawn(
            backend,
            Arc::new(byte_tokenizer()),
            vec![EOS],
            limits,
            Arc::new(Metrics::default()),
        )
        .unwrap();
        (handle, record)
    }

    fn request(
        prompt: Vec<u32>,
        max_tokens: usize,
    ) -> (SequenceRequest, UnboundedReceiver<(usize, SequenceEvent)>) {
        let (tx, rx) = unbounded_channel();
        let r = SequenceRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            },
            stop: Vec::new(),
            logprobs: None,
            choice: 0,
            events: tx,
            arrived: Instant::now(),
        };
        (r, rx)
    }

    /// Collects a sequence's text and end.
    fn finish(mut rx: UnboundedReceiver<(usize, SequenceEvent)>) -> (String, SequenceEvent) {
        let mut text = String::new();
        loop {
            match rx
                .blocking_recv()
                .expect("engine ended the channel without a final event")
            {
                (_, SequenceEvent::Text(t)) => text.push_str(&t),
                (_, end) => return (text, end),
            }
        }
    }

    /// What greedy decoding of the fake model gives for one sequence alone.
    fn reference(prompt: &[u32], max_tokens: usize) -> (String, FinishReason, usize) {
        let mut tokens = prompt.to_vec();
        for _ in 0..max_tokens {
            let t = next_token(&tokens);
            tokens.push(t);
            if t == EOS {
                let text = byte_tokenizer()
                    .decode(&tokens[prompt.len()..], true)
                    .unwrap();
                return (text, FinishReason::Stop, tokens.len() - prompt.len());
            }
        }
        let text = byte_tokenizer()
            .decode(&tokens[prompt.len()..], true)
            .unwrap();
        (text, FinishReason::Length, max_tokens)
    }

    #[test]
    fn batched_chunked_generation_equals_each_sequence_alone() {
        let limits = EngineLimits {
            max_batch_tokens: 16,
            max_running: 8,
            max_waiting: 100,
        };
        let capacity = 400;
        let (engine, record) = start(capacity, limits, Duration::ZERO);
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let mut pending = Vec::new();
        for _ in 0..40 {
            let prompt: Vec<u32> = (0..rng.random_range(1..60))
                .map(|_| rng.random_range(0..256))
                .collect();
            let max_tokens = rng.random_range(1..25);
            let (r, rx) = request(prompt.clone(), max_tokens);
            engine.submit(vec![r]).unwrap();
            pending.push((prompt, max_tokens, rx));
        }
        let mut stops = 0;
        for (prompt, max_tokens, rx) in pending {
            let (text, end) = finish(rx);
            let (want_text, want_reason, want_tokens) = reference(&prompt, max_tokens);
            stops += usize::from(want_reason == FinishReason::Stop);
            assert_eq!(text, want_text);
            assert_eq!(
                end,
                SequenceEvent::Finished {
                    reason: want_reason,
                    prompt_tokens: prompt.len(),
                    completion_tokens: want_tokens,
                }
            );
        }
        let r = record.lock().unwrap();
        assert!(r.max_used <= capacity);
        assert!(r.max_sequences <= limits.max_running);
        assert!(r.max_sequences > 1, "sequences were never batched together");
        assert_eq!(r.released.len(), 40, "every sequence is freed");
        eprintln!("{stops} of 40 ended on EOS");
    }

    /// What seeded sampling of the fake model gives for one sequence alone, picked on the
    /// host with the sequence's own sampler.
    fn sampled_reference(prompt: &[u32], max_tokens: usize, params: SamplingParams) -> String {
        let mut sampler = crate::sampling::Sampler::new(params);
        let mut tokens = prompt.to_vec();
        for _ in 0..max_tokens {
            let mut logits = vec![0.0; VOCAB];
            logits[next_token(&tokens) as usize] = 1.0;
            let t = sampler.sample(&logits).unwrap();
            tokens.push(t);
            if t == EOS {
                break;
            }
        }
        let generated: Vec<u32> = tokens[prompt.len()..]
            .iter()
            .copied()
            .filter(|&t| t != EOS)
            .collect();
        byte_tokenizer().decode(&generated, true).unwrap()
    }

    #[test]
    fn seeded_sampling_draws_once_per_token_whatever_the_chunking() {
        // Prompts longer than the token budget are prefilled in several chunks; only the
        // chunk that ends a prompt may draw, or the tokens would depend on the chunking.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let cases: Vec<(Vec<u32>, SamplingParams)> = (0..6)
            .map(|i| {
                let prompt = (0..rng.random_range(10..50))
                    .map(|_| rng.random_range(0..256))
                    .collect();
                let params = SamplingParams {
                    temperature: rng.random_range(0.5..2.0),
                    top_k: [0, 3, 40][i % 3],
                    top_p: [1.0, 0.95][i % 2],
                    seed: rng.random(),
                };
                (prompt, params)
            })
            .collect();
        for max_batch_tokens in [1000, 7] {
            let limits = EngineLimits {
                max_batch_tokens,
                max_running: 8,
                max_waiting: 100,
            };
            let (engine, _record) = start(1000, limits, Duration::ZERO);
            let mut pending = Vec::new();
            for (prompt, params) in &cases {
                let (mut r, rx) = request(prompt.clone(), 30);
                r.sampling = *params;
                engine.submit(vec![r]).unwrap();
                pending.push(rx);
            }
            for ((prompt, params), rx) in cases.iter().zip(pending) {
                let (text, _) = finish(rx);
                assert_eq!(
                    text,
                    sampled_reference(prompt, 30, *params),
                    "budget {max_batch_tokens}, {params:?}"
                );
            }
        }
    }

    #[test]
    fn admission_waits_for_kv_room() {
        let limits = EngineLimits {
            max_batch_tokens: 64,
            max_running: 8,
            max_waiting: 10,
        };
        // Each sequence reserves 10 + 50 = 60 of 100 tokens: only one fits at a time.
        let (engine, record) = start(100, limits, Duration::ZERO);
        let rxs: Vec<_> = (0..3)
            .map(|i| {
                let (r, rx) = request(vec![i; 10], 50);
                engine.submit(vec![r]).unwrap();
                rx
            })
            .collect();
        for rx in rxs {
            assert!(matches!(finish(rx).1, SequenceEvent::Finished { .. }));
        }
        assert_eq!(record.lock().unwrap().max_sequences, 1);
    }

    #[test]
    fn admission_reserves_whole_blocks_of_a_paged_cache() {
        let limits = EngineLimits {
            max_batch_tokens: 64,
            max_running: 8,
            max_waiting: 10,
        };
        // 10 + 20 = 30 tokens each, but 64 in blocks: two of six fit in 128 at a time (six
        // would by token count). The fake backend fails a step that overfills its blocks.
        let (engine, record) = start_in_blocks(128, 64, limits, Duration::ZERO);
        let rxs: Vec<_> = (0..6)
            .map(|i| {
                let (r, rx) = request(vec![i; 10], 20);
                engine.submit(vec![r]).unwrap();
                rx
            })
            .collect();
        for rx in rxs {
            assert!(matches!(finish(rx).1, SequenceEvent::Finished { .. }));
        }
        let r = record.lock().unwrap();
        assert_eq!(r.max_sequences, 2);
        assert!(r.max_used <= 128);
    }

    #[test]
    fn a_request_that_fits_by_tokens_but_not_by_blocks_is_refused_not_queued_forever() {
        let limits = EngineLimits {
            max_batch_tokens: 64,
            max_running: 8,
            max_waiting: 10,
        };
        let (engine, _) = start_in_blocks(100, 64, limits, Duration::ZERO);
        // 80 tokens <= 100, but two blocks of 64 > 100.
        assert_eq!(
            engine.submit(vec![request(vec![1; 50], 30).0]),
            Err(SubmitError::TooLarge {
                needed: 128,
                capacity: 100
            })
        );
        let (r, rx) = request(vec![1; 30], 30);
        engine.submit(vec![r]).unwrap();
        assert!(matches!(finish(rx).1, SequenceEvent::Finished { .. }));
    }

    #[test]
    fn refusals_queue_full_too_large_and_shutdown() {
        let limits = EngineLimits {
            max_batch_tokens: 8,
            max_running: 1,
            max_waiting: 2,
        };
        let (engine, _) = start(100, limits, Duration::from_millis(5));
        let three: Vec<_> = (0..3).map(|_| request(vec![1], 5).0).collect();
        assert_eq!(
            engine.submit(three),
            Err(SubmitError::QueueFull {
                waiting: 0,
                limit: 2
            })
        );
        assert_eq!(
            engine.submit(vec![request(vec![1, VOCAB as u32], 1).0]),
            Err(SubmitError::TokenOutOfVocab {
                token: VOCAB as u32,
                vocab_size: VOCAB
            })
        );
        assert_eq!(
            engine.submit(vec![request(vec![1; 60], 41).0]),
            Err(SubmitError::TooLarge {
                needed: 101,
                capacity: 100
            })
        );
        let (r, rx) = request(vec![1, 2], 5);
        engine.submit(vec![r]).unwrap();
        engine.stop_accepting();
        assert_eq!(
            engine.submit(vec![request(vec![1], 1).0]),
            Err(SubmitError::ShuttingDown)
        );
        // The one already accepted still finishes.
        assert!(matches!(finish(rx).1, SequenceEvent::Finished { .. }));
    }

    #[test]
    fn a_dropped_receiver_frees_its_sequence() {
        let limits = EngineLimits {
            max_batch_tokens: 8,
            max_running: 4,
            max_waiting: 4,
        };
        let (engine, record) = start(100_000, limits, Duration::from_millis(2));
        let (r, mut rx) = request(vec![5, 6], 50_000);
        engine.submit(vec![r]).unwrap();
        assert!(rx.blocking_recv().is_some());
        drop(rx);
        let deadline = Instant::now() + Duration::from_secs(10);
        while record.lock().unwrap().released.is_empty() {
            assert!(Instant::now() < deadline, "sequence was not freed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn cancel_all_fails_running_and_waiting() {
        let limits = EngineLimits {
            max_batch_tokens: 8,
            max_running: 1,
            max_waiting: 4,
        };
        let (engine, _) = start(100_000, limits, Duration::from_millis(2));
        let (a, rx_a) = request(vec![1], 50_000);
        let (b, rx_b) = request(vec![2], 50_000);
        engine.submit(vec![a, b]).unwrap();
        engine.stop_accepting();
        engine.cancel_all();
        assert!(matches!(finish(rx_a).1, SequenceEvent::Failed(_)));
        assert!(matches!(finish(rx_b).1, SequenceEvent::Failed(_)));
    }

    #[test]
    fn health_runs_a_forward_pass_once() {
        let limits = EngineLimits {
            max_batch_tokens: 8,
            max_running: 1,
            max_waiting: 1,
        };
        let (engine, record) = start(100, limits, Duration::ZERO);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(engine.health()).unwrap();
        assert_eq!(record.lock().unwrap().steps, 1);
        rt.block_on(engine.health()).unwrap();
        assert_eq!(record.lock().unwrap().steps, 1, "later checks are cheap");
    }
}
