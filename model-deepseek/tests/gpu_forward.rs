//! The GPU forward pass against the CPU model (the oracle) on the tiny checkpoints: both
//! layouts, shared expert fused, unfused in the routed format, and unfused in bf16; W4A4 and
//! weight-only (W4A16) activations. Skipped, with a message, where no GPU is present.
//!
//! Precision: the GPU runs every op in f32 like the oracle, the MoE layer included
//! (`moe_kernels::gpu` with f32 input and output: W4A4 quantizes the same f32 values to the
//! same MXFP4 codes, weight-only multiplies f32 activations). Each op matches its reference to
//! ~1e-7 (`moe-kernels` tests `gpu_model_ops`, `gpu_moe`), so logits agree to f32 summation
//! order: measured on the H100 (2026-11-28) at 1.0e-7..4.5e-7 relative L2 in every case, and
//! every compared greedy token matched. [`LOGITS_TOLERANCE`] is 1e-4: two hundred times that,
//! still far below what one changed expert or one MXFP4 code off by a grid step does to the
//! logits of the 64-wide tiny model (1e-2 and more).
//!
//! Routing near-ties: the tiny models route 256 or 384 experts whose sigmoid scores are dense
//! in (0, 1), so the gap between the last chosen and the first dropped expert (the
//! [`RoutingMargin`], computed on the CPU) is often 1e-5 or less. Where a margin is within the
//! router error, GPU and CPU may rightly choose different experts. The GPU's biased scores
//! differ from the CPU's by f32 summation order alone: router logits of O(1) computed from an
//! input that matches to ~1e-6 relative move a score (sigmoid' <= 1/4) by ~1e-6 at most. A
//! choice survives score errors below half its margin, so [`MIN_ROUTING_MARGIN`] (1e-5)
//! tolerates five times that. Every logits vector or greedy token whose
//! sequence has routed some token at a smaller margin is not compared; each is counted and
//! printed, and the CPU-only test below asserts that such positions stay a small minority of
//! the chosen prompts, so the GPU tests compare most of what they run.
//!
//! These prompts leave out 14 of 120 logits vectors and 47 of 480 greedy tokens; on the H100
//! every logits vector, left out or not, agreed to 4.5e-7 or better.
//!
//! Decode graphs: the model options here replay decode steps from captured graphs (the
//! default), so the comparisons above cover them; the last two tests compare graph replay
//! with one launch per op on the GPU alone, bit for bit.
//!
//! History: with the MoE in bf16 (input rounded to bf16 before MXFP4 quantization, bf16
//! output) W4A4 cases landed at 1.4e-1..1.8e-1 on the H100 and greedy decoding diverged after
//! 7..18 tokens; on the CPU the bf16 rounding of the MoE input alone moved the second MoE
//! layer's biased scores by up to 1.1e-3 (median 3e-4), above most routing margins here.

mod common;

use std::collections::HashMap;

use common::{load_tiny_checkpoint, rel_l2};
use model_deepseek::fusion::FusionMode;
use model_deepseek::gpu::{
    BlockError, GpuKvCache, GpuModel, GpuModelError, GpuOptions, KV_BLOCK_TOKENS, KvBudget,
    PlanError,
};
use model_deepseek::loader::LoadOptions;
use model_deepseek::sampling::{ChunkPick, SampledChunk, SamplingRule};
use model_deepseek::tiny::{SharedExperts, TinyLayout};
use model_deepseek::weights::{Linear, QueryWeights};
use model_deepseek::{ActivationMode, KvCache, Model, RoutingMargin, SeqId, SequenceChunk};
use moe_kernels::gpu::model_ops::DeviceLinear;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime_rocm::{Device, first_gpu};

const LOGITS_TOLERANCE: f64 = 1e-4;
const GREEDY_TOKENS: usize = 40;
/// Smallest routing margin (biased-score units) at which GPU and CPU must choose the same
/// experts: it tolerates score errors up to 5e-6, five times the ~1e-6 f32 router-score error
/// (module doc).
const MIN_ROUTING_MARGIN: f32 = 1e-5;
/// Fraction of the logits vectors, and of the greedy tokens, that must be comparable (every
/// routing margin of their sequence so far at least [`MIN_ROUTING_MARGIN`]).
const MIN_COMPARABLE: f64 = 0.75;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

struct Case {
    layout: TinyLayout,
    shared: SharedExperts,
    fusion: FusionMode,
    activations: ActivationMode,
}

fn load(case: &Case, seed: u64) -> Model {
    let options = LoadOptions {
        fusion: case.fusion,
        activations: case.activations,
    };
    load_tiny_checkpoint(case.layout, case.shared, seed, &options)
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for layout in [TinyLayout::DeepseekV3, TinyLayout::KimiK25] {
        for (shared, fusion) in [
            (SharedExperts::Quantized, FusionMode::Auto),
            (SharedExperts::Quantized, FusionMode::Off),
            (SharedExperts::Bf16, FusionMode::Auto),
        ] {
            for activations in [ActivationMode::Quantized, ActivationMode::Unquantized] {
                out.push(Case {
                    layout,
                    shared,
                    fusion,
                    activations,
                });
            }
        }
    }
    out
}

fn options() -> GpuOptions {
    GpuOptions {
        kv: KvBudget::for_tokens(512),
        max_batch_tokens: 32,
        graphs: true,
    }
}

fn name(case: &Case) -> String {
    format!(
        "{:?} shared {:?} fusion {:?} activations {:?}",
        case.layout, case.shared, case.fusion, case.activations
    )
}

/// The smallest routing margin of each token of one CPU forward call (over its MoE layers),
/// tokens in chunk order.
fn token_margins(per_layer: &[Vec<RoutingMargin>], tokens: usize) -> Vec<f32> {
    (0..tokens)
        .map(|t| {
            per_layer
                .iter()
                .map(|layer| layer[t].min())
                .fold(f32::INFINITY, f32::min)
        })
        .collect()
}

/// The chunks of a feed of (sequence, tokens) pairs.
fn as_chunks(feed: &[(SeqId, Vec<u32>)]) -> Vec<SequenceChunk<'_>> {
    feed.iter()
        .map(|(seq, t)| SequenceChunk {
            seq: *seq,
            tokens: t,
        })
        .collect()
}

/// One CPU forward call: the logits of each chunk's last token and, per chunk, the smallest
/// routing margin of its sequence so far (this call included), which `history` keeps.
fn cpu_forward_with_history(
    model: &Model,
    cache: &mut KvCache,
    chunks: &[SequenceChunk<'_>],
    history: &mut HashMap<SeqId, f32>,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let n: usize = chunks.iter().map(|c| c.tokens.len()).sum();
    let (logits, per_layer) = model.forward_with_routing_margins(chunks, cache).unwrap();
    let margins = token_margins(&per_layer, n);
    let mut start = 0;
    let mut history_margin = Vec::new();
    for chunk in chunks {
        let end = start + chunk.tokens.len();
        let m = history.entry(chunk.seq).or_insert(f32::INFINITY);
        *m = margins[start..end].iter().copied().fold(*m, f32::min);
        history_margin.push(*m);
        start = end;
    }
    (logits, history_margin)
}

/// One step of the logits test: what is fed, what the CPU returns.
struct LogitsStep {
    feed: Vec<(SeqId, Vec<u32>)>,
    /// CPU logits of each chunk's last token.
    want: Vec<Vec<f32>>,
    /// Per chunk: the smallest routing margin of its sequence so far (this step included).
    history_margin: Vec<f32>,
}

/// The logits test's batches (two prefills of different lengths in one call, then decode
/// steps mixing a new sequence's prefill with the others' single tokens) run on the CPU.
fn logits_steps(model: &Model, seed: u64) -> Vec<LogitsStep> {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = model.config().vocab_size as u32;
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let (a, b, c) = (SeqId(1), SeqId(2), SeqId(3));
    let feeds: Vec<Vec<(SeqId, Vec<u32>)>> = vec![
        vec![(a, tokens(9)), (b, tokens(5))],
        vec![(a, tokens(1)), (b, tokens(1))],
        vec![(b, tokens(1)), (c, tokens(7)), (a, tokens(1))],
        vec![(a, tokens(1)), (b, tokens(1)), (c, tokens(1))],
    ];
    let mut cache = KvCache::new(model.config(), 1024);
    let mut history = HashMap::new();
    let mut steps = Vec::new();
    for feed in feeds {
        let (want, history_margin) =
            cpu_forward_with_history(model, &mut cache, &as_chunks(&feed), &mut history);
        steps.push(LogitsStep {
            feed,
            want,
            history_margin,
        });
    }
    steps
}

/// The greedy test's CPU run: the prompt, the CPU's tokens, and at each step the smallest
/// routing margin of the sequence so far.
struct GreedyRun {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    history_margin: Vec<f32>,
}

const GREEDY_SEQ: SeqId = SeqId(7);

fn greedy_run(model: &Model, seed: u64) -> GreedyRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let prompt: Vec<u32> = (0..6)
        .map(|_| rng.random_range(0..model.config().vocab_size as u32))
        .collect();
    let mut cache = KvCache::new(model.config(), 1024);
    let (mut next, mut tokens, mut history_margin) = (prompt.clone(), Vec::new(), Vec::new());
    let mut history = f32::INFINITY;
    for _ in 0..GREEDY_TOKENS {
        let (want, per_layer) = model
            .forward_with_routing_margins(
                &[SequenceChunk {
                    seq: GREEDY_SEQ,
                    tokens: &next,
                }],
                &mut cache,
            )
            .unwrap();
        history = token_margins(&per_layer, next.len())
            .into_iter()
            .fold(history, f32::min);
        history_margin.push(history);
        next = vec![argmax(&want[0])];
        tokens.push(next[0]);
    }
    GreedyRun {
        prompt,
        tokens,
        history_margin,
    }
}

/// Greedy tokens compared before the first near-tie (all of them when there is none).
fn comparable_tokens(run: &GreedyRun) -> usize {
    run.history_margin
        .iter()
        .position(|m| *m < MIN_ROUTING_MARGIN)
        .unwrap_or(GREEDY_TOKENS)
}

#[test]
fn most_test_positions_route_with_margins_above_the_router_error() {
    // CPU only: the GPU tests below compare only positions whose routing is decided by more
    // than MIN_ROUTING_MARGIN; this keeps them from comparing little.
    let (mut logits_ok, mut logits_all, mut greedy_ok) = (0usize, 0usize, 0usize);
    for (i, case) in cases().iter().enumerate() {
        let model = load(case, 100 + i as u64);
        for step in logits_steps(&model, 100 + i as u64) {
            logits_all += step.history_margin.len();
            logits_ok += step
                .history_margin
                .iter()
                .filter(|m| **m >= MIN_ROUTING_MARGIN)
                .count();
        }
        let model = load(case, 200 + i as u64);
        let run = greedy_run(&model, 200 + i as u64);
        let comparable = comparable_tokens(&run);
        let smallest = run.history_margin.last().copied().unwrap_or(f32::INFINITY);
        println!(
            "{}: greedy comparable for {comparable} of {GREEDY_TOKENS} tokens (smallest margin \
             {smallest:.2e})",
            name(case)
        );
        greedy_ok += comparable;
    }
    let greedy_all = cases().len() * GREEDY_TOKENS;
    println!(
        "logits vectors comparable: {logits_ok} of {logits_all}; greedy tokens: {greedy_ok} of \
         {greedy_all}"
    );
    assert!(logits_ok as f64 >= MIN_COMPARABLE * logits_all as f64);
    assert!(greedy_ok as f64 >= MIN_COMPARABLE * greedy_all as f64);
}

/// What [`check_logits`] found for one model.
#[derive(Default)]
struct LogitsCheck {
    compared: usize,
    near_ties: usize,
    failures: Vec<String>,
}

impl LogitsCheck {
    /// Print the counts; fail on any mismatch, or when nothing was compared.
    fn finish(self) {
        println!(
            "compared {} logits vectors, {} left out at routing near-ties",
            self.compared, self.near_ties
        );
        assert!(self.compared > 0, "no logits vector was compared");
        assert!(self.failures.is_empty(), "{:#?}", self.failures);
    }
}

/// Run [`logits_steps`] on the GPU and compare every logits vector whose routing is decided
/// by more than [`MIN_ROUTING_MARGIN`] with the CPU model's.
fn check_logits(device: &Device, label: &str, model: &Model, seed: u64, out: &mut LogitsCheck) {
    let steps = logits_steps(model, seed);
    let mut gpu = GpuModel::new(device, model, options()).unwrap();
    let mut gpu_cache = gpu.new_cache().unwrap();
    let mut worst = 0f64;
    for step in &steps {
        let chunks = as_chunks(&step.feed);
        let got = gpu.forward(&chunks, &mut gpu_cache).unwrap();
        for (k, chunk) in chunks.iter().enumerate() {
            let err = rel_l2(&got[k], &step.want[k]);
            let margin = step.history_margin[k];
            if margin < MIN_ROUTING_MARGIN {
                out.near_ties += 1;
                println!(
                    "{label}: {} not compared: routing margin {margin:.2e} (rel L2 {err:.2e})",
                    chunk.seq
                );
                continue;
            }
            out.compared += 1;
            worst = worst.max(err);
            if err > LOGITS_TOLERANCE {
                out.failures.push(format!(
                    "{label}: {} logits rel L2 {err:.2e} (routing margin {margin:.2e})",
                    chunk.seq
                ));
            }
        }
    }
    for seq in [SeqId(1), SeqId(2), SeqId(3)] {
        let want: usize = steps
            .iter()
            .flat_map(|s| &s.feed)
            .filter(|(s, _)| *s == seq)
            .map(|(_, t)| t.len())
            .sum();
        assert_eq!(gpu_cache.seq_len(seq), want, "{label}: {seq} cache length");
    }
    println!("{label}: worst compared logits rel L2 {worst:.2e}");
}

#[test]
fn logits_match_the_cpu_model_prefill_and_batched_decode() {
    let Some(device) = first_gpu("logits_match_the_cpu_model_prefill_and_batched_decode") else {
        return;
    };
    let mut check = LogitsCheck::default();
    for (i, case) in cases().iter().enumerate() {
        let seed = 100 + i as u64;
        check_logits(&device, &name(case), &load(case, seed), seed, &mut check);
    }
    check.finish();
}

/// The tiny checkpoints store `q_a_proj` and `kv_a_proj_with_mqa` alike, so the GPU model
/// stacks them into one linear. A checkpoint that keeps one of them bf16 (an exclude list
/// naming only `kv_a_proj_with_mqa`) cannot be stacked: this runs that fallback, on the CPU
/// model with every `kv_a_proj_with_mqa` replaced by its dequantized (bf16-exact) weight.
#[test]
fn logits_match_with_q_a_and_kv_a_in_different_formats() {
    let Some(device) = first_gpu("logits_match_with_q_a_and_kv_a_in_different_formats") else {
        return;
    };
    let mut check = LogitsCheck::default();
    for (i, case) in cases().iter().enumerate() {
        if case.layout != TinyLayout::DeepseekV3 || case.fusion != FusionMode::Auto {
            continue;
        }
        let seed = 300 + i as u64;
        let model = load(case, seed);
        let mut weights = model.weights().clone();
        for layer in &mut weights.layers {
            let kv_a = &mut layer.attention.kv_a_proj_with_mqa;
            assert!(
                matches!(kv_a, Linear::Mxfp4 { .. }),
                "the DeepSeek-V3 tiny checkpoint stores kv_a_proj_with_mqa in MXFP4"
            );
            *kv_a = Linear::Dense(kv_a.to_dense());
            let QueryWeights::Lora { q_a_proj, .. } = &layer.attention.query else {
                panic!("the DeepSeek-V3 tiny checkpoint has q_lora_rank set");
            };
            let stacked = DeviceLinear::upload_stacked(&device, &[q_a_proj, kv_a]).unwrap();
            assert!(
                stacked.is_none(),
                "MXFP4 q_a_proj and bf16 kv_a_proj_with_mqa stacked"
            );
        }
        let model = Model::new(model.config().clone(), weights, model.options()).unwrap();
        let label = format!("{} kv_a bf16", name(case));
        check_logits(&device, &label, &model, seed, &mut check);
    }
    check.finish();
}

#[test]
fn greedy_generation_matches_the_cpu_model_token_for_token() {
    let Some(device) = first_gpu("greedy_generation_matches_the_cpu_model_token_for_token") else {
        return;
    };
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let seed = 200 + i as u64;
        let model = load(case, seed);
        let run = greedy_run(&model, seed);
        let comparable = comparable_tokens(&run);
        let mut gpu = GpuModel::new(&device, &model, options()).unwrap();
        let mut gpu_cache = gpu.new_cache().unwrap();
        // The GPU is fed the CPU's tokens: identical to its own while they agree, which is
        // all that is compared.
        let mut next = run.prompt.clone();
        let mut mismatch = None;
        for (step, want) in run.tokens.iter().enumerate().take(comparable) {
            let got = gpu
                .forward(
                    &[SequenceChunk {
                        seq: GREEDY_SEQ,
                        tokens: &next,
                    }],
                    &mut gpu_cache,
                )
                .unwrap();
            if argmax(&got[0]) != *want {
                mismatch = Some(step);
                break;
            }
            next = vec![*want];
        }
        let line = match mismatch {
            None => format!(
                "{}: {comparable} of {GREEDY_TOKENS} greedy tokens compared, all match{}",
                name(case),
                match run.history_margin.get(comparable) {
                    Some(m) => format!(" (stopped at routing margin {m:.2e})"),
                    None => String::new(),
                }
            ),
            Some(step) => {
                let line = format!(
                    "{}: greedy diverges at token {step} (routing margin so far {:.2e})",
                    name(case),
                    run.history_margin[step]
                );
                failures.push(line.clone());
                line
            }
        };
        println!("{line}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn refuses_a_kv_budget_the_device_cannot_hold_before_allocating() {
    let Some(device) = first_gpu("refuses_a_kv_budget_the_device_cannot_hold_before_allocating")
    else {
        return;
    };
    let model = load(&cases()[0], 1);
    let (free_before, total) = device.memory_info().unwrap();
    // Blocks of 64 tokens at 480 bytes a token (and 4 table bytes a block): one more than the
    // whole device holds.
    let block_bytes = 64 * 480 + 4;
    let blocks = total / block_bytes + 1;
    let options = GpuOptions {
        kv: KvBudget {
            blocks: usize::try_from(blocks).unwrap(),
        },
        max_batch_tokens: 32,
        graphs: true,
    };
    match GpuModel::new(&device, &model, options) {
        Err(GpuModelError::Plan(PlanError::DoesNotFit {
            kv_cache,
            available,
            needed,
            ..
        })) => {
            assert_eq!(kv_cache, blocks * block_bytes);
            assert!(needed > available && available <= total);
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    let (free_after, _) = device.memory_info().unwrap();
    // Nothing was allocated (other processes may allocate meanwhile; allow 64 MiB of noise).
    assert!(free_after + (64 << 20) >= free_before);
}

// Paged KV cache: sequences longer than a block, interleaved growth, freed blocks reused and
// block tables that are neither contiguous nor in order. These runs are long (up to ~200
// tokens a sequence), where a random prompt almost surely meets a routing near-tie somewhere,
// so each sequence's tokens are drawn one at a time on the CPU, redrawing any token routed
// at a margin below twice MIN_ROUTING_MARGIN: every logits vector of the scripts is compared.

/// Tokens of one sequence, drawn so that every position routes every MoE layer at a margin of
/// at least `2 × MIN_ROUTING_MARGIN` given its prefix (a token's result does not depend on
/// how its sequence is chunked, so this holds in any schedule).
fn tie_free_tokens(model: &Model, len: usize, rng: &mut StdRng) -> Vec<u32> {
    let vocab = model.config().vocab_size as u32;
    let scratch = SeqId(u64::MAX);
    let mut cache = KvCache::new(model.config(), len + 1);
    let mut tokens: Vec<u32> = Vec::with_capacity(len);
    while tokens.len() < len {
        let mut accepted = false;
        for _attempt in 0..64 {
            let candidate = [rng.random_range(0..vocab)];
            let chunk = SequenceChunk {
                seq: scratch,
                tokens: &candidate,
            };
            let (_, per_layer) = model
                .forward_with_routing_margins(&[chunk], &mut cache)
                .unwrap();
            if token_margins(&per_layer, 1)[0] >= 2.0 * MIN_ROUTING_MARGIN {
                tokens.push(candidate[0]);
                accepted = true;
                break;
            }
            // Roll the candidate back: rebuild the accepted prefix.
            cache.free(scratch);
            if !tokens.is_empty() {
                let chunk = SequenceChunk {
                    seq: scratch,
                    tokens: &tokens,
                };
                model.forward(&[chunk], &mut cache).unwrap();
            }
        }
        assert!(
            accepted,
            "no token without a routing near-tie at position {}",
            tokens.len()
        );
    }
    tokens
}

/// The same forward calls on the CPU model and, when there is a GPU, on the GPU model with a
/// small block pool; every chunk's logits are compared.
struct Lockstep<'m> {
    label: String,
    model: &'m Model,
    cpu: KvCache,
    gpu: Option<(GpuModel, GpuKvCache)>,
    streams: HashMap<SeqId, Vec<u32>>,
    /// Smallest routing margin of each sequence so far (CPU).
    history: HashMap<SeqId, f32>,
    compared: usize,
    near_ties: usize,
    worst: f64,
    failures: Vec<String>,
}

/// Blocks in the scripts' pool: small enough that the scripts fill it, free and reuse it.
const SCRIPT_BLOCKS: usize = 8;

impl<'m> Lockstep<'m> {
    fn new(label: String, model: &'m Model, device: Option<&Device>) -> Self {
        let gpu = device.map(|device| {
            let options = GpuOptions {
                kv: KvBudget {
                    blocks: SCRIPT_BLOCKS,
                },
                max_batch_tokens: 256,
                graphs: true,
            };
            let gpu = GpuModel::new(device, model, options).unwrap();
            let cache = gpu.new_cache().unwrap();
            (gpu, cache)
        });
        Self {
            label,
            model,
            cpu: KvCache::new(model.config(), 4096),
            gpu,
            streams: Default::default(),
            history: Default::default(),
            compared: 0,
            near_ties: 0,
            worst: 0.0,
            failures: Vec::new(),
        }
    }

    /// Gives `seq` a tie-free stream of `len` tokens to draw from.
    fn sequence(&mut self, seq: SeqId, len: usize, rng: &mut StdRng) {
        self.streams
            .insert(seq, tie_free_tokens(self.model, len, rng));
    }

    /// The next `n` tokens of each sequence, after what it has cached.
    fn chunks(&self, feed: &[(SeqId, usize)]) -> Vec<(SeqId, Vec<u32>)> {
        feed.iter()
            .map(|&(seq, n)| {
                let at = self.cpu.seq_len(seq);
                (seq, self.streams[&seq][at..at + n].to_vec())
            })
            .collect()
    }

    fn feed(&mut self, feed: &[(SeqId, usize)]) {
        let owned = self.chunks(feed);
        let chunks = as_chunks(&owned);
        let (want, history_margin) =
            cpu_forward_with_history(self.model, &mut self.cpu, &chunks, &mut self.history);
        let got = self
            .gpu
            .as_mut()
            .map(|(gpu, cache)| gpu.forward(&chunks, cache).unwrap());
        for (k, chunk) in chunks.iter().enumerate() {
            if history_margin[k] < MIN_ROUTING_MARGIN {
                self.near_ties += 1;
                continue;
            }
            self.compared += 1;
            if let Some(got) = &got {
                let err = rel_l2(&got[k], &want[k]);
                self.worst = self.worst.max(err);
                if err > LOGITS_TOLERANCE {
                    self.failures.push(format!(
                        "{}: {} at {} tokens: logits rel L2 {err:.2e}",
                        self.label,
                        chunk.seq,
                        self.cpu.seq_len(chunk.seq)
                    ));
                }
            }
        }
        self.check_lengths();
    }

    /// A call the pool cannot hold: the GPU refuses it and its cache is unchanged.
    fn refused(&mut self, feed: &[(SeqId, usize)], extra: &[(SeqId, Vec<u32>)]) {
        let mut owned = self.chunks(feed);
        owned.extend(extra.iter().cloned());
        // The script means it: by the CPU cache's lengths, the call needs more blocks than
        // are free.
        let needed: usize = owned
            .iter()
            .map(|(seq, t)| {
                let len = self.cpu.seq_len(*seq);
                (len + t.len()).div_ceil(KV_BLOCK_TOKENS) - len.div_ceil(KV_BLOCK_TOKENS)
            })
            .sum();
        assert!(
            needed > SCRIPT_BLOCKS - self.blocks_in_use(),
            "{}",
            self.label
        );
        let Some((gpu, cache)) = self.gpu.as_mut() else {
            return;
        };
        let chunks = as_chunks(&owned);
        let before: Vec<(usize, Vec<u32>)> = chunks
            .iter()
            .map(|c| (cache.seq_len(c.seq), cache.block_table(c.seq).to_vec()))
            .collect();
        let free = cache.free_blocks();
        match gpu.forward(&chunks, cache) {
            Err(GpuModelError::Blocks(BlockError::OutOfBlocks { free: f, .. })) => {
                assert_eq!(f, free);
            }
            other => panic!("{}: expected OutOfBlocks, got {other:?}", self.label),
        }
        let after: Vec<(usize, Vec<u32>)> = chunks
            .iter()
            .map(|c| (cache.seq_len(c.seq), cache.block_table(c.seq).to_vec()))
            .collect();
        assert_eq!(
            before, after,
            "{}: a refused call changed the cache",
            self.label
        );
        assert_eq!(cache.free_blocks(), free);
    }

    fn free(&mut self, seq: SeqId) {
        assert!(self.cpu.free(seq));
        self.history.remove(&seq);
        if let Some((_, cache)) = self.gpu.as_mut() {
            assert!(cache.free(seq));
        }
        self.check_lengths();
    }

    /// Blocks the sequences' lengths (on the CPU) take.
    fn blocks_in_use(&self) -> usize {
        self.streams
            .keys()
            .map(|seq| self.cpu.seq_len(*seq).div_ceil(KV_BLOCK_TOKENS))
            .sum()
    }

    /// The script fits the pool, and the GPU cache holds what the CPU cache holds, in exactly
    /// the blocks it needs.
    fn check_lengths(&self) {
        let blocks = self.blocks_in_use();
        assert!(
            blocks <= SCRIPT_BLOCKS,
            "{}: the script overfills the pool",
            self.label
        );
        let Some((_, cache)) = &self.gpu else { return };
        for seq in self.streams.keys() {
            let len = self.cpu.seq_len(*seq);
            assert_eq!(cache.seq_len(*seq), len, "{}: {seq} length", self.label);
            assert_eq!(cache.block_table(*seq).len(), len.div_ceil(KV_BLOCK_TOKENS));
        }
        assert_eq!(cache.used_blocks(), blocks, "{}: blocks in use", self.label);
        assert_eq!(cache.free_blocks(), SCRIPT_BLOCKS - blocks);
    }

    fn table(&self, seq: SeqId) -> Option<Vec<u32>> {
        self.gpu
            .as_ref()
            .map(|(_, cache)| cache.block_table(seq).to_vec())
    }
}

/// Four sequences of different lengths growing in interleaved calls (prefill chunks that
/// cross block boundaries next to decode tokens); one is freed mid-way and a new sequence
/// takes its blocks; finally a call the pool cannot hold is refused without a trace.
fn interleaved_script(ls: &mut Lockstep<'_>, rng: &mut StdRng) {
    let (a, b, c, d, e) = (SeqId(1), SeqId(2), SeqId(3), SeqId(4), SeqId(5));
    for (seq, len) in [(a, 90), (b, 80), (c, 140), (d, 150)] {
        ls.sequence(seq, len, rng);
    }
    ls.feed(&[(a, 70), (b, 20)]);
    ls.feed(&[(b, 1), (a, 1), (c, 130)]);
    ls.feed(&[(a, 1), (c, 1), (b, 1)]);
    ls.feed(&[(b, 50), (a, 1)]);
    ls.feed(&[(c, 1), (b, 1)]);
    let b_blocks = ls.table(b);
    ls.free(b);
    ls.feed(&[(d, 100), (a, 1)]);
    if let (Some(old), Some(new)) = (b_blocks, ls.table(d)) {
        assert!(
            new.iter().all(|blk| old.contains(blk)),
            "{}: d {new:?} should reuse b's freed blocks {old:?}",
            ls.label
        );
    }
    for _ in 0..3 {
        ls.feed(&[(a, 1), (c, 1), (d, 1)]);
    }
    ls.feed(&[(d, 40), (c, 1)]);
    // a: 77 tokens (2 blocks), c: 136 (3), d: 143 (3): the pool is full.
    let extra = vec![(e, vec![1u32; 10])];
    ls.refused(&[(a, 1)], &extra);
    ls.feed(&[(a, 1), (c, 1)]);
}

/// Short sequences fill the pool's first blocks; freeing two of them leaves holes, so a long
/// sequence grows through blocks that are neither contiguous nor in order while the others
/// keep decoding.
fn fragmented_script(ls: &mut Lockstep<'_>, rng: &mut StdRng) {
    let (p, q, r, s, long) = (SeqId(1), SeqId(2), SeqId(3), SeqId(4), SeqId(9));
    for seq in [p, q, r, s] {
        ls.sequence(seq, 63, rng);
    }
    ls.sequence(long, 200, rng);
    ls.feed(&[(p, 60), (q, 60), (r, 60), (s, 60)]);
    let holes: Vec<u32> = [q, s]
        .iter()
        .filter_map(|x| ls.table(*x))
        .flatten()
        .collect();
    ls.free(q);
    ls.free(s);
    ls.feed(&[(long, 100)]);
    ls.feed(&[(long, 60), (p, 1)]);
    for step in 0..5 {
        // r stays within its one block (63 tokens).
        if step < 3 {
            ls.feed(&[(r, 1), (long, 1)]);
        } else {
            ls.feed(&[(long, 1)]);
        }
    }
    ls.feed(&[(long, 30), (p, 1)]);
    if let Some(table) = ls.table(long) {
        assert_eq!(table.len(), 4);
        assert!(
            holes.iter().all(|h| table.contains(h)),
            "{}: {table:?} should fill the holes {holes:?}",
            ls.label
        );
        assert!(
            table.windows(2).any(|w| w[1] != w[0] + 1),
            "{}: {table:?} is contiguous",
            ls.label
        );
    }
}

type Script = fn(&mut Lockstep<'_>, &mut StdRng);

const SCRIPTS: [(&str, Script); 2] = [
    ("interleaved", interleaved_script),
    ("fragmented", fragmented_script),
];

/// Runs both scripts on every case; the CPU always, the GPU when `device` is given.
/// The paged scripts run the weight-only (unquantized activations) cases. Paging is the same
/// code in both activation modes (the cache stores whatever latent the layer produced), but
/// the scripts' long sequences (up to 195 tokens, 44 logits vectors per case) meet W4A4's other
/// near-tie, which routing margins do not cover: an activation within f32 summation error of
/// an E2M1 rounding boundary, where GPU and CPU rightly pick neighbouring codes and the logits
/// then differ by ~1e-2 (the H100 run of 2026-11-28 met one in one W4A4 case, from position 60
/// of one sequence on, before any block boundary; the 11 other W4A4 cases agreed to 3e-7).
/// W4A4 numerics are compared on the shorter prompts of the tests above.
fn run_scripts(device: Option<&Device>) -> Vec<Lockstep<'static>> {
    let mut done = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        if case.activations != ActivationMode::Unquantized {
            continue;
        }
        let seed = 300 + i as u64;
        let model: &'static Model = Box::leak(Box::new(load(case, seed)));
        for (script_name, script) in SCRIPTS {
            let mut rng = StdRng::seed_from_u64(seed);
            let label = format!("{} {script_name}", name(case));
            let mut ls = Lockstep::new(label, model, device);
            script(&mut ls, &mut rng);
            done.push(ls);
        }
    }
    done
}

#[test]
fn paged_scripts_route_every_position_above_the_router_error() {
    // CPU only: the scripts' sequences are drawn so that the GPU test compares every logits
    // vector; this checks the drawing and the scripts themselves without a GPU.
    for ls in run_scripts(None) {
        assert_eq!(ls.near_ties, 0, "{}", ls.label);
        assert!(ls.compared > 10, "{}", ls.label);
    }
}

#[test]
fn paged_cache_interleaved_growth_reuse_and_fragmentation_match_the_cpu_model() {
    let Some(device) =
        first_gpu("paged_cache_interleaved_growth_reuse_and_fragmentation_match_the_cpu_model")
    else {
        return;
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for ls in run_scripts(Some(&device)) {
        println!(
            "{}: {} logits vectors compared, worst rel L2 {:.2e}",
            ls.label, ls.compared, ls.worst
        );
        assert_eq!(ls.near_ties, 0, "{}", ls.label);
        compared += ls.compared;
        failures.extend(ls.failures);
    }
    println!("compared {compared} logits vectors over paged scripts");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Graph replay against one launch per op (see `GpuOptions::graphs`): both run the same
/// kernels on the same inputs, so they must agree bit for bit, not just to a tolerance.
const GRAPH_BATCHES: [usize; 3] = [1, 3, 6];
/// Decode steps per batch: every sequence starts at 50..105 tokens and ends past 128, so each
/// one crosses a 64-token block boundary and the attention buckets of 64, 128 and 256 keys.
const GRAPH_STEPS: usize = 90;
const GRAPH_MAX_BATCH_TOKENS: usize = 128;

/// The graph key's attention bucket as the model defines it: the step's most keys in whole
/// blocks, rounded up to a power of two of them (the tiny model is far below the kernel's
/// limit).
fn key_bucket(max_keys: usize) -> usize {
    max_keys.div_ceil(KV_BLOCK_TOKENS).next_power_of_two() * KV_BLOCK_TOKENS
}

/// One decode step of every sequence (id, next token): through `forward` (the next token is
/// the argmax of its logits) or, with `draws`, through `forward_sampled` (greedy where the
/// draw is `None`, else temperature 0.8 / top-k 40 / top-p 0.9 with that draw; every pick
/// asks for its logits row). Returns each sequence's next token and logits row.
fn decode_step(
    gpu: &mut GpuModel,
    cache: &mut GpuKvCache,
    seqs: &[(SeqId, u32)],
    draws: Option<&[Option<f64>]>,
) -> Vec<(u32, Vec<f32>)> {
    let tokens: Vec<[u32; 1]> = seqs.iter().map(|s| [s.1]).collect();
    let chunks: Vec<SequenceChunk<'_>> = seqs
        .iter()
        .zip(&tokens)
        .map(|(s, t)| SequenceChunk {
            seq: s.0,
            tokens: t,
        })
        .collect();
    let Some(draws) = draws else {
        let rows = gpu.forward(&chunks, cache).unwrap();
        return rows.into_iter().map(|r| (argmax(&r), r)).collect();
    };
    let sampled: Vec<SampledChunk<'_>> = chunks
        .iter()
        .zip(draws)
        .map(|(&chunk, draw)| SampledChunk {
            chunk,
            pick: Some(ChunkPick {
                rule: match draw {
                    None => SamplingRule::GREEDY,
                    Some(_) => SamplingRule {
                        temperature: 0.8,
                        top_k: 40,
                        top_p: 0.9,
                    },
                },
                u: draw.unwrap_or(0.0),
                logits: true,
            }),
        })
        .collect();
    gpu.forward_sampled(&sampled, cache)
        .unwrap()
        .into_iter()
        .map(|p| {
            let p = p.expect("every chunk asked for a token");
            (p.token, p.logits.expect("every pick asked for its logits"))
        })
        .collect()
}

fn bits(rows: &[(u32, Vec<f32>)]) -> Vec<(u32, Vec<u32>)> {
    rows.iter()
        .map(|(t, r)| (*t, r.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn decode_graph_replay_matches_launching_every_op_bit_for_bit() {
    let Some(device) = first_gpu("decode_graph_replay_matches_launching_every_op_bit_for_bit")
    else {
        return;
    };
    let options = GpuOptions {
        kv: KvBudget::for_tokens(GRAPH_BATCHES[2] * 4 * KV_BLOCK_TOKENS),
        max_batch_tokens: GRAPH_MAX_BATCH_TOKENS,
        graphs: true,
    };
    let mut failures = Vec::new();
    let mut replayed = 0;
    let graph_cases = cases()
        .into_iter()
        .filter(|c| c.fusion == FusionMode::Auto && c.activations == ActivationMode::Quantized);
    for (i, case) in graph_cases.enumerate() {
        let model = load(&case, 900 + i as u64);
        let vocab = model.config().vocab_size as u32;
        let mut gpu = GpuModel::new(&device, &model, options).unwrap();
        let mut rng = StdRng::seed_from_u64(900 + i as u64);
        // Fused and unfused: a quantized shared expert switches between the two; a bf16 one
        // stays a separate MLP either way.
        for fused in [true, false] {
            gpu.set_shared_expert_fusion(fused);
            for batch in GRAPH_BATCHES {
                let label = format!("{} fused {fused} batch {batch}", name(&case));
                // A cache for each path, fed the same tokens.
                let mut eager = gpu.new_cache().unwrap();
                let mut graphed = gpu.new_cache().unwrap();
                let mut seqs = Vec::new();
                for j in 0..batch {
                    let seq = SeqId(j as u64);
                    let prompt: Vec<u32> = (0..50 + 11 * j)
                        .map(|_| rng.random_range(0..vocab))
                        .collect();
                    let chunk = [SequenceChunk {
                        seq,
                        tokens: &prompt,
                    }];
                    let want = gpu.forward(&chunk, &mut eager).unwrap();
                    assert_eq!(gpu.forward(&chunk, &mut graphed).unwrap(), want, "{label}");
                    seqs.push((seq, argmax(&want[0])));
                }
                let captures = gpu.graph_captures();
                let mut keys = std::collections::HashSet::new();
                let mut longest = 50 + 11 * (batch - 1);
                for step in 0..GRAPH_STEPS {
                    // Every other step samples on the device; odd sequences draw.
                    let draws: Vec<Option<f64>> = (0..batch)
                        .map(|j| (j % 2 == 1).then(|| rng.random()))
                        .collect();
                    let draws = (step % 2 == 1).then_some(&draws[..]);
                    gpu.set_graphs(false);
                    let want = decode_step(&mut gpu, &mut eager, &seqs, draws);
                    gpu.set_graphs(true);
                    let got = decode_step(&mut gpu, &mut graphed, &seqs, draws);
                    longest += 1;
                    keys.insert((key_bucket(longest), draws.is_some()));
                    if bits(&got) != bits(&want) {
                        failures.push(format!("{label}: step {step} (longest {longest})"));
                        break;
                    }
                    replayed += 1;
                    for (s, (token, _)) in seqs.iter_mut().zip(&want) {
                        s.1 = *token;
                    }
                }
                // One capture per key (batch, bucket, sampled): a growing context does not
                // capture a graph each step.
                assert_eq!(gpu.graph_captures() - captures, keys.len(), "{label}");
            }
        }
    }
    println!("{replayed} decode steps replayed from graphs, bit for bit as launched");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn greedy_generation_is_the_same_with_and_without_decode_graphs() {
    let Some(device) = first_gpu("greedy_generation_is_the_same_with_and_without_decode_graphs")
    else {
        return;
    };
    let case = &cases()[6];
    let model = load(case, 950);
    let vocab = model.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(950);
    let prompts: Vec<Vec<u32>> = [7, 70]
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let run = |graphs: bool| {
        let options = GpuOptions {
            kv: KvBudget::for_tokens(4 * 128),
            max_batch_tokens: GRAPH_MAX_BATCH_TOKENS,
            graphs,
        };
        let mut gpu = GpuModel::new(&device, &model, options).unwrap();
        let mut cache = gpu.new_cache().unwrap();
        let mut next: Vec<Vec<u32>> = prompts.clone();
        let mut generated = vec![Vec::new(); prompts.len()];
        for _ in 0..GREEDY_TOKENS {
            let chunks: Vec<SampledChunk<'_>> = next
                .iter()
                .enumerate()
                .map(|(j, tokens)| SampledChunk {
                    chunk: SequenceChunk {
                        seq: SeqId(j as u64),
                        tokens,
                    },
                    pick: Some(ChunkPick {
                        rule: SamplingRule::GREEDY,
                        u: 0.0,
                        logits: false,
                    }),
                })
                .collect();
            let picked = gpu.forward_sampled(&chunks, &mut cache).unwrap();
            for (j, p) in picked.into_iter().enumerate() {
                let token = p.expect("greedy pick").token;
                generated[j].push(token);
                next[j] = vec![token];
            }
        }
        (generated, gpu.graph_captures())
    };
    let (eager, eager_captures) = run(false);
    let (graphed, graph_captures) = run(true);
    assert_eq!(eager_captures, 0);
    assert!(graph_captures > 0, "the decode steps were not replayed");
    assert_eq!(graphed, eager);
    println!(
        "{}: {GREEDY_TOKENS} greedy tokens of 2 sequences equal with {graph_captures} graphs",
        name(case)
    );
}
