//! The GPU forward pass against the CPU model (the oracle) on the tiny checkpoints: both
//! layouts, shared expert fused, unfused in the routed format, and unfused in bf16; W4A4 and
//! weight-only (W4A16) activations. Skipped, with a message, where no GPU is present.
//!
//! Tolerance: the residual stream, attention and dense layers run in f32 on the GPU (each op
//! matches its reference to ~1e-7, W4A4 dense layers bit for bit: `moe-kernels` test
//! `gpu_model_ops`), but the MoE layer of `moe_kernels::gpu` takes its input and gives its
//! output in bf16 (2^-9 relative rounding each). METHOD.md puts bf16-operand results at
//! 1e-3..1e-2 relative L2; 3e-2 on each logits vector leaves room for two MoE layers in series.
//!
//! Measured on the H100 (2026-11-28): W4A16 cases land at 1.1e-3..1.8e-3 except one token
//! vector of one case (1.4e-1), and greedy decoding matches 40 of 40 tokens in five of six
//! W4A16 cases. W4A4 cases land at 1.4e-1..1.8e-1 and diverge after 7..18 tokens: the MoE
//! kernels quantize the bf16-rounded activation to MXFP4, and an element that bf16 moves across
//! an E2M1 rounding boundary changes by a whole grid step, which the 64-wide tiny model
//! amplifies layer by layer; the f32 CPU oracle quantizes the unrounded value. The CPU model
//! shows the same on its own: with only its MoE input and output rounded to bf16 (a local
//! experiment, not kept), its W4A4 logits moved by 7.3e-2 / 8.5e-2 (DeepSeek / Kimi layout)
//! and greedy decoding diverged at tokens 7 / 26, while W4A16 moved by 1.3e-3 / 1.5e-3 and
//! matched 40 of 40 tokens. These tests
//! therefore fail on the device for W4A4 until the MoE takes f32 input (or the oracle rounds
//! the MoE input to bf16 as the GPU does); see the helper report.

use model_deepseek::fusion::FusionMode;
use model_deepseek::gpu::{GpuModel, GpuModelError, GpuOptions, KvBudget, PlanError};
use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use model_deepseek::{ActivationMode, KvCache, Model, SeqId, SequenceChunk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime_rocm::Device;

const LOGITS_TOLERANCE: f64 = 3e-2;
const GREEDY_TOKENS: usize = 40;

fn gpu() -> Option<Device> {
    let device = runtime_rocm::enumerate()
        .devices
        .into_iter()
        .find(|d| !d.is_cpu());
    if device.is_none() {
        eprintln!("skipped: no GPU");
    }
    device
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

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
    let dir = tempfile::tempdir().unwrap();
    let experts = match case.layout {
        TinyLayout::DeepseekV3 => 256,
        _ => 384,
    };
    let spec = TinySpec {
        layout: case.layout,
        shared_experts: case.shared,
        n_routed_experts: experts,
        seed,
        ..TinySpec::default()
    };
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    let options = LoadOptions {
        fusion: case.fusion,
        activations: case.activations,
    };
    loader::load(dir.path(), &options).unwrap().model
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
        kv: KvBudget {
            sequences: 4,
            tokens_per_sequence: 128,
        },
        max_batch_tokens: 32,
    }
}

fn name(case: &Case) -> String {
    format!(
        "{:?} shared {:?} fusion {:?} activations {:?}",
        case.layout, case.shared, case.fusion, case.activations
    )
}

#[test]
fn logits_match_the_cpu_model_prefill_and_batched_decode() {
    let Some(device) = gpu() else { return };
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let seed = 100 + i as u64;
        let model = load(case, seed);
        let mut gpu = GpuModel::new(&device, &model, options()).unwrap();
        let mut gpu_cache = gpu.new_cache().unwrap();
        let mut cpu_cache = KvCache::new(model.config(), 1024);
        let mut rng = StdRng::seed_from_u64(seed);
        let vocab = model.config().vocab_size as u32;
        let mut tokens =
            |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
        let (a, b, c) = (SeqId(1), SeqId(2), SeqId(3));
        // Two prefills of different lengths in one call, then decode steps mixing a new
        // sequence's prefill with the others' single tokens.
        let steps: Vec<Vec<(SeqId, Vec<u32>)>> = vec![
            vec![(a, tokens(9)), (b, tokens(5))],
            vec![(a, tokens(1)), (b, tokens(1))],
            vec![(b, tokens(1)), (c, tokens(7)), (a, tokens(1))],
            vec![(a, tokens(1)), (b, tokens(1)), (c, tokens(1))],
        ];
        let mut worst = 0f64;
        for step in &steps {
            let chunks: Vec<SequenceChunk<'_>> = step
                .iter()
                .map(|(seq, t)| SequenceChunk {
                    seq: *seq,
                    tokens: t,
                })
                .collect();
            let want = model.forward(&chunks, &mut cpu_cache).unwrap();
            let got = gpu.forward(&chunks, &mut gpu_cache).unwrap();
            for (chunk, (g, w)) in chunks.iter().zip(got.iter().zip(&want)) {
                let err = rel_l2(g, w);
                worst = worst.max(err);
                if err > LOGITS_TOLERANCE {
                    failures.push(format!(
                        "{}: {} logits rel L2 {err:.2e}",
                        name(case),
                        chunk.seq
                    ));
                }
            }
        }
        for seq in [a, b, c] {
            assert_eq!(gpu_cache.seq_len(seq), cpu_cache.seq_len(seq));
        }
        println!("{}: worst logits rel L2 {worst:.2e}", name(case));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn greedy_generation_matches_the_cpu_model_token_for_token() {
    let Some(device) = gpu() else { return };
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let seed = 200 + i as u64;
        let model = load(case, seed);
        let mut gpu = GpuModel::new(&device, &model, options()).unwrap();
        let mut gpu_cache = gpu.new_cache().unwrap();
        let mut cpu_cache = KvCache::new(model.config(), 1024);
        let seq = SeqId(7);
        let mut rng = StdRng::seed_from_u64(seed);
        let prompt: Vec<u32> = (0..6)
            .map(|_| rng.random_range(0..model.config().vocab_size as u32))
            .collect();
        let (mut cpu_next, mut gpu_next) = (prompt.clone(), prompt);
        let (mut cpu_tokens, mut gpu_tokens) = (Vec::new(), Vec::new());
        let mut margins = Vec::new();
        for _ in 0..GREEDY_TOKENS {
            let want = model
                .forward(
                    &[SequenceChunk {
                        seq,
                        tokens: &cpu_next,
                    }],
                    &mut cpu_cache,
                )
                .unwrap();
            let got = gpu
                .forward(
                    &[SequenceChunk {
                        seq,
                        tokens: &gpu_next,
                    }],
                    &mut gpu_cache,
                )
                .unwrap();
            margins.push(top2_margin(&want[0]));
            cpu_next = vec![argmax(&want[0])];
            gpu_next = vec![argmax(&got[0])];
            cpu_tokens.push(cpu_next[0]);
            gpu_tokens.push(gpu_next[0]);
        }
        match gpu_tokens.iter().zip(&cpu_tokens).position(|(g, c)| g != c) {
            None => {
                let distinct: std::collections::HashSet<_> = cpu_tokens.iter().collect();
                println!(
                    "{}: {GREEDY_TOKENS} greedy tokens match ({} distinct)",
                    name(case),
                    distinct.len()
                );
            }
            Some(step) => {
                let line = format!(
                    "{}: greedy diverges at token {step} (CPU top-2 logit margin there {:.3e}, \
                     smallest margin before {:.3e})",
                    name(case),
                    margins[step],
                    margins[..step]
                        .iter()
                        .copied()
                        .fold(f32::INFINITY, f32::min)
                );
                println!("{line}");
                failures.push(line);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Gap between the largest and second-largest logit.
fn top2_margin(v: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > first {
            second = first;
            first = x;
        } else if x > second {
            second = x;
        }
    }
    first - second
}

#[test]
fn refuses_a_kv_budget_the_device_cannot_hold_before_allocating() {
    let Some(device) = gpu() else { return };
    let model = load(&cases()[0], 1);
    let (free_before, total) = device.memory_info().unwrap();
    // 2^20 slabs of 256 tokens at 480 bytes a token: 128 GiB, more than any device here.
    let options = GpuOptions {
        kv: KvBudget {
            sequences: 1 << 20,
            tokens_per_sequence: 256,
        },
        max_batch_tokens: 32,
    };
    match GpuModel::new(&device, &model, options) {
        Err(GpuModelError::Plan(PlanError::DoesNotFit {
            kv_cache,
            available,
            needed,
            ..
        })) => {
            assert_eq!(kv_cache, (1u64 << 28) * 480);
            assert!(needed > available && available <= total);
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    let (free_after, _) = device.memory_info().unwrap();
    // Nothing was allocated (other processes may allocate meanwhile; allow 64 MiB of noise).
    assert!(free_after + (64 << 20) >= free_before);
}
