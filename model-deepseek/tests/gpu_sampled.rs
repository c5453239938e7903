//! `GpuModel::forward_sampled` (tokens picked on the device) against the CPU model's
//! `forward_sampled` (tokens picked on the host by the same reference rule), on tiny
//! checkpoints of both layouts. Skipped, with a message, where no GPU is present.
//!
//! Each step runs two sequences in one call: A decodes greedily and is compared token for
//! token with the CPU model's greedy run (up to the first routing near-tie, as in
//! `gpu_forward.rs`: where a token's expert choice is decided by less than 1e-5 the devices
//! may rightly differ); its logits row, requested every other step, must match the CPU's
//! logits. B is prefilled in two chunks (the first picks nothing and must return nothing),
//! then sampled at temperature 0.8 with top-k and top-p from a seeded draw; its logits row is
//! returned too, and the device's token must be the one the reference picks from that very
//! row with the same draw.

mod common;

use common::{load_tiny_checkpoint, rel_l2};
use model_deepseek::fusion::FusionMode;
use model_deepseek::gpu::{GpuModel, GpuOptions, KvBudget};
use model_deepseek::loader::LoadOptions;
use model_deepseek::sampling::{ChunkPick, SampledChunk, SamplingRule, sample_token};
use model_deepseek::tiny::{SharedExperts, TinyLayout};
use model_deepseek::{ActivationMode, KvCache, Model, SeqId, SequenceChunk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime_rocm::first_gpu;

const TOKENS: usize = 32;
const MIN_ROUTING_MARGIN: f32 = 1e-5;
const LOGITS_TOLERANCE: f64 = 1e-4;
const A: SeqId = SeqId(1);
const B: SeqId = SeqId(2);

fn load(layout: TinyLayout, shared: SharedExperts, seed: u64) -> Model {
    let options = LoadOptions {
        fusion: FusionMode::Auto,
        activations: ActivationMode::Quantized,
    };
    load_tiny_checkpoint(layout, shared, seed, &options)
}

/// The CPU's greedy run of A: its tokens, the logits before each, and how many tokens come
/// before the first routing near-tie.
fn cpu_greedy(model: &Model, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>, usize) {
    let mut cache = KvCache::new(model.config(), 1024);
    let (mut next, mut tokens, mut logits) = (prompt.to_vec(), Vec::new(), Vec::new());
    let mut comparable = None;
    for step in 0..TOKENS {
        let chunk = SequenceChunk {
            seq: A,
            tokens: &next,
        };
        let (rows, margins) = model
            .forward_with_routing_margins(&[chunk], &mut cache)
            .unwrap();
        let smallest = margins
            .iter()
            .flatten()
            .map(|m| m.min())
            .fold(f32::INFINITY, f32::min);
        if smallest < MIN_ROUTING_MARGIN && comparable.is_none() {
            comparable = Some(step);
        }
        let token = sample_token(&rows[0], &SamplingRule::GREEDY, 0.0).unwrap();
        logits.push(rows.into_iter().next().unwrap());
        tokens.push(token);
        next = vec![token];
    }
    (tokens, logits, comparable.unwrap_or(TOKENS))
}

#[test]
fn device_sampled_tokens_match_the_cpu_model_and_the_reference() {
    let Some(device) = first_gpu("device_sampled_tokens_match_the_cpu_model_and_the_reference")
    else {
        return;
    };
    let mut failures = Vec::new();
    for (i, (layout, shared)) in [
        (TinyLayout::DeepseekV3, SharedExperts::Quantized),
        (TinyLayout::DeepseekV3, SharedExperts::Bf16),
        (TinyLayout::KimiK25, SharedExperts::Quantized),
        (TinyLayout::KimiK25, SharedExperts::Bf16),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 300 + i as u64;
        let model = load(layout, shared, seed);
        let vocab = model.config().vocab_size as u32;
        let mut rng = StdRng::seed_from_u64(seed);
        let prompt_a: Vec<u32> = (0..6).map(|_| rng.random_range(0..vocab)).collect();
        let prompt_b: Vec<u32> = (0..9).map(|_| rng.random_range(0..vocab)).collect();
        let (want, want_logits, comparable) = cpu_greedy(&model, &prompt_a);

        // The CPU model's forward_sampled picks what the reference picks from its logits.
        let mut cpu_cache = KvCache::new(model.config(), 1024);
        let greedy = ChunkPick {
            rule: SamplingRule::GREEDY,
            u: 0.0,
            logits: true,
        };
        let cpu = model
            .forward_sampled(
                &[SampledChunk {
                    chunk: SequenceChunk {
                        seq: A,
                        tokens: &prompt_a,
                    },
                    pick: Some(greedy),
                }],
                &mut cpu_cache,
            )
            .unwrap();
        let first = cpu[0].as_ref().unwrap();
        assert_eq!(first.token, want[0]);
        assert_eq!(first.logits.as_ref().unwrap(), &want_logits[0]);

        let options = GpuOptions {
            kv: KvBudget::for_tokens(4 * 128),
            max_batch_tokens: 32,
            graphs: true,
        };
        let mut gpu = GpuModel::new(&device, &model, options).unwrap();
        let mut cache = gpu.new_cache().unwrap();
        let rule_b = SamplingRule {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
        };
        let (mut next_a, mut next_b) = (prompt_a.clone(), prompt_b[..4].to_vec());
        let mut b_prefilled = false;
        let mut matched = 0;
        for step in 0..comparable {
            let pick_a = ChunkPick {
                rule: SamplingRule::GREEDY,
                u: 0.0,
                logits: step % 2 == 0,
            };
            let pick_b = b_prefilled.then(|| ChunkPick {
                rule: rule_b,
                u: rng.random(),
                logits: true,
            });
            let got = gpu
                .forward_sampled(
                    &[
                        SampledChunk {
                            chunk: SequenceChunk {
                                seq: A,
                                tokens: &next_a,
                            },
                            pick: Some(pick_a),
                        },
                        SampledChunk {
                            chunk: SequenceChunk {
                                seq: B,
                                tokens: &next_b,
                            },
                            pick: pick_b,
                        },
                    ],
                    &mut cache,
                )
                .unwrap();
            assert_eq!(got.len(), 2);
            let a = got[0].as_ref().expect("A asked for a token");
            assert_eq!(
                a.logits.is_some(),
                pick_a.logits,
                "step {step}: A's logits row"
            );
            if let Some(row) = &a.logits {
                let err = rel_l2(row, &want_logits[step]);
                assert!(
                    err < LOGITS_TOLERANCE,
                    "step {step}: A's logits off by {err:.2e}"
                );
            }
            if a.token != want[step] {
                failures.push(format!(
                    "{layout:?} {shared:?}: greedy diverges at token {step}"
                ));
                break;
            }
            matched += 1;
            match (&got[1], pick_b) {
                (None, None) => {
                    next_b = prompt_b[4..].to_vec();
                    b_prefilled = true;
                }
                (Some(b), Some(pick)) => {
                    let row = b.logits.as_ref().expect("B asked for its logits");
                    let reference = sample_token(row, &pick.rule, pick.u);
                    assert_eq!(
                        Some(b.token),
                        reference,
                        "step {step}: B's draw u = {}",
                        pick.u
                    );
                    next_b = vec![b.token];
                }
                (b, pick) => panic!("step {step}: B picked {b:?} for request {pick:?}"),
            }
            next_a = vec![a.token];
        }
        println!(
            "{layout:?} {shared:?}: {matched} of {comparable} comparable greedy tokens match ({TOKENS} run)"
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn bad_sampling_requests_are_refused_before_the_cache_changes() {
    let Some(device) = first_gpu("bad_sampling_requests_are_refused_before_the_cache_changes")
    else {
        return;
    };
    let model = load(TinyLayout::DeepseekV3, SharedExperts::Quantized, 9);
    let options = GpuOptions {
        kv: KvBudget::for_tokens(4 * 128),
        max_batch_tokens: 16,
        graphs: true,
    };
    let mut gpu = GpuModel::new(&device, &model, options).unwrap();
    let mut cache = gpu.new_cache().unwrap();
    let bad = ChunkPick {
        rule: SamplingRule {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.5,
        },
        u: 0.5,
        logits: false,
    };
    let err = gpu
        .forward_sampled(
            &[SampledChunk {
                chunk: SequenceChunk {
                    seq: A,
                    tokens: &[1, 2],
                },
                pick: Some(bad),
            }],
            &mut cache,
        )
        .unwrap_err();
    assert!(err.to_string().contains("top_p 1.5"), "{err}");
    assert_eq!(cache.num_sequences(), 0);
}
