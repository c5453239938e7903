//! Forward-pass invariants: fusion does not change the logits, incremental decoding equals a
//! full pass, batching does not change a sequence's logits, refused calls change nothing.

mod common;

use common::{max_abs, max_abs_diff, tiny_config, tiny_model};
use model_deepseek::synthetic::{SyntheticSpec, WeightFormat};
use model_deepseek::weights::ActivationQuant;
use model_deepseek::{ActivationMode, ForwardError, KvCache, SeqId, SequenceChunk};

const PROMPT: [u32; 7] = [5, 17, 3, 90, 42, 42, 7];

fn prompt_logits(model: &model_deepseek::Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model.config(), 64);
    let chunk = SequenceChunk {
        seq: SeqId(1),
        tokens,
    };
    model
        .forward_all_positions(&[chunk], &mut cache)
        .expect("forward")
        .remove(0)
        .data
}

/// Fused (shared expert as slot `n_routed` with weight `1/rsf`, then `×rsf` after the sum)
/// and unfused (`rsf × routed sum + shared`) differ only in f32 rounding: the shared output is
/// multiplied by `(1/rsf)·rsf` (within 1 ulp of 1) and enters the sum at another point. A few
/// ulps of the MoE output, carried through three layers, stay below 1e-5 of the logits'
/// magnitude (measured: about 2e-7); a wiring error (shared expert missing, doubled, or scaled by rsf) moves logits
/// by O(0.1) of it.
#[test]
fn fused_and_unfused_shared_expert_give_the_same_logits() {
    for experts in [256, 384] {
        let config = tiny_config(experts, false);
        for activations in [ActivationMode::Unquantized, ActivationMode::Quantized] {
            let unfused_spec = SyntheticSpec::quark_w4a4();
            let fused_spec = SyntheticSpec {
                fuse_shared: true,
                ..unfused_spec
            };
            let unfused = tiny_model(&config, &unfused_spec, 11, activations);
            let fused = tiny_model(&config, &fused_spec, 11, activations);
            let a = prompt_logits(&unfused, &PROMPT);
            let b = prompt_logits(&fused, &PROMPT);
            let diff = max_abs_diff(&a, &b);
            eprintln!(
                "{experts} experts, {activations:?}: max |Δlogit| = {diff:e} of {}",
                max_abs(&a)
            );
            assert!(
                diff <= 1e-5 * max_abs(&a),
                "{experts} experts, {activations:?}: fused and unfused differ by {diff}"
            );
        }
    }
}

/// The shared expert matters: dropping it changes the logits by far more than the fusion
/// tolerance, so the test above would see a fused path that ignored the extra slot.
#[test]
fn the_shared_expert_contributes() {
    let mut config = tiny_config(256, false);
    let spec = SyntheticSpec::quark_w4a4();
    let with = tiny_model(&config, &spec, 11, ActivationMode::Unquantized);
    let a = prompt_logits(&with, &PROMPT);
    config.n_shared_experts = 0;
    let mut weights = with.weights().clone();
    for layer in &mut weights.layers {
        if let model_deepseek::weights::FeedForward::Moe(moe) = &mut layer.feed_forward {
            moe.shared = None;
        }
    }
    let without = model_deepseek::Model::new(config, weights, with.options()).expect("model");
    let b = prompt_logits(&without, &PROMPT);
    assert!(max_abs_diff(&a, &b) > 1e-2 * max_abs(&a));
}

/// Every reference op computes a token's row with the same f32 operations whatever else is
/// in the call, and attention for a query reads the same cached rows in the same order, so
/// incremental decoding reproduces the full pass bit for bit.
#[test]
fn incremental_decoding_equals_a_full_pass() {
    for experts in [256, 384] {
        let config = tiny_config(experts, false);
        let model = tiny_model(
            &config,
            &SyntheticSpec::quark_w4a4(),
            5,
            ActivationMode::Quantized,
        );
        let full = prompt_logits(&model, &PROMPT);
        let vocab = config.vocab_size;

        let mut cache = KvCache::new(&config, 64);
        let seq = SeqId(9);
        let prefill = model
            .forward_all_positions(
                &[SequenceChunk {
                    seq,
                    tokens: &PROMPT[..3],
                }],
                &mut cache,
            )
            .expect("prefill");
        assert_eq!(prefill[0].data, full[..3 * vocab]);
        for (i, token) in PROMPT.iter().enumerate().skip(3) {
            let logits = model
                .forward(
                    &[SequenceChunk {
                        seq,
                        tokens: std::slice::from_ref(token),
                    }],
                    &mut cache,
                )
                .expect("decode");
            assert_eq!(logits[0], full[i * vocab..(i + 1) * vocab], "position {i}");
        }
        assert_eq!(cache.seq_len(seq), PROMPT.len());
        assert_eq!(cache.used_tokens(), PROMPT.len());
    }
}

/// A batch mixing a prefill chunk, a decode token of a cached sequence and a new one-token
/// sequence gives each sequence the logits it gets alone.
#[test]
fn a_mixed_batch_equals_each_sequence_alone() {
    let config = tiny_config(256, false);
    let model = tiny_model(
        &config,
        &SyntheticSpec::quark_w4a4(),
        21,
        ActivationMode::Quantized,
    );
    let (a, b, c) = (SeqId(1), SeqId(2), SeqId(3));
    let b_prefix = [9u32, 8, 7, 6];

    let mut alone = KvCache::new(&config, 64);
    let expected_a = model
        .forward(
            &[SequenceChunk {
                seq: a,
                tokens: &PROMPT,
            }],
            &mut alone,
        )
        .expect("a");
    model
        .forward(
            &[SequenceChunk {
                seq: b,
                tokens: &b_prefix,
            }],
            &mut alone,
        )
        .expect("b prefix");
    let expected_b = model
        .forward(
            &[SequenceChunk {
                seq: b,
                tokens: &[44],
            }],
            &mut alone,
        )
        .expect("b decode");
    let expected_c = model
        .forward(
            &[SequenceChunk {
                seq: c,
                tokens: &[1],
            }],
            &mut alone,
        )
        .expect("c");

    let mut batched = KvCache::new(&config, 64);
    model
        .forward(
            &[SequenceChunk {
                seq: b,
                tokens: &b_prefix,
            }],
            &mut batched,
        )
        .expect("b prefix");
    let got = model
        .forward(
            &[
                SequenceChunk {
                    seq: a,
                    tokens: &PROMPT,
                },
                SequenceChunk {
                    seq: b,
                    tokens: &[44],
                },
                SequenceChunk {
                    seq: c,
                    tokens: &[1],
                },
            ],
            &mut batched,
        )
        .expect("batch");
    assert_eq!(got[0], expected_a[0]);
    assert_eq!(got[1], expected_b[0]);
    assert_eq!(got[2], expected_c[0]);
    assert_eq!(batched.used_tokens(), alone.used_tokens());
}

/// `ActivationMode::Unquantized` on W4A4 weights is exactly the same packed weights run as
/// weight-only layers; and it differs from the quantized run (the option takes effect).
#[test]
fn unquantized_activations_run_w4a4_layers_as_weight_only() {
    let config = tiny_config(384, false);
    let w4a4 = SyntheticSpec::quark_w4a4();
    let weight_only = WeightFormat::Mxfp4(ActivationQuant::None);
    let w4a16 = SyntheticSpec {
        routed_experts: weight_only,
        shared_experts: weight_only,
        attention: weight_only,
        dense_mlp: weight_only,
        ..w4a4
    };
    let unquantized = prompt_logits(
        &tiny_model(&config, &w4a4, 3, ActivationMode::Unquantized),
        &PROMPT,
    );
    let as_weight_only = prompt_logits(
        &tiny_model(&config, &w4a16, 3, ActivationMode::Quantized),
        &PROMPT,
    );
    let quantized = prompt_logits(
        &tiny_model(&config, &w4a4, 3, ActivationMode::Quantized),
        &PROMPT,
    );
    assert_eq!(unquantized, as_weight_only);
    assert!(max_abs_diff(&unquantized, &quantized) > 1e-3 * max_abs(&quantized));
}

/// The server runs the model from worker threads; an empty call is a no-op.
#[test]
fn the_model_is_shareable_and_an_empty_call_does_nothing() {
    fn shareable<T: Send + Sync>() {}
    shareable::<model_deepseek::Model>();
    shareable::<KvCache>();
    let config = tiny_config(256, false);
    let model = tiny_model(
        &config,
        &SyntheticSpec::quark_w4a4(),
        2,
        ActivationMode::Quantized,
    );
    let mut cache = KvCache::new(&config, 4);
    assert_eq!(model.forward(&[], &mut cache), Ok(Vec::new()));
    assert_eq!(cache.used_tokens(), 0);
}

#[test]
fn tied_embeddings_use_the_embedding_matrix_as_lm_head() {
    let config = tiny_config(384, true);
    let model = tiny_model(
        &config,
        &SyntheticSpec::quark_w4a4(),
        8,
        ActivationMode::Quantized,
    );
    assert!(model.weights().lm_head.is_none());
    let logits = prompt_logits(&model, &PROMPT[..2]);
    assert_eq!(logits.len(), 2 * config.vocab_size);
    assert!(logits.iter().all(|v| v.is_finite()));
}

/// Each refused call names its problem and leaves the cache exactly as it was.
#[test]
fn refused_calls_change_nothing() {
    let config = tiny_config(256, false);
    let model = tiny_model(
        &config,
        &SyntheticSpec::quark_w4a4(),
        2,
        ActivationMode::Quantized,
    );
    let mut cache = KvCache::new(&config, 10);
    let s = SeqId(4);
    model
        .forward(
            &[SequenceChunk {
                seq: s,
                tokens: &[1, 2, 3],
            }],
            &mut cache,
        )
        .expect("prefill");
    let too_long = vec![1u32; 300];
    let cases: Vec<(Vec<SequenceChunk<'_>>, ForwardError)> = vec![
        (
            vec![SequenceChunk {
                seq: s,
                tokens: &[2, 96],
            }],
            ForwardError::TokenOutOfVocab {
                seq: s,
                index: 1,
                token: 96,
                vocab_size: 96,
            },
        ),
        (
            vec![SequenceChunk {
                seq: SeqId(5),
                tokens: &[1; 8],
            }],
            ForwardError::OutOfCapacity { needed: 8, free: 7 },
        ),
        (
            vec![SequenceChunk {
                seq: SeqId(6),
                tokens: &too_long,
            }],
            ForwardError::ContextTooLong {
                seq: SeqId(6),
                length: 300,
                max: 256,
            },
        ),
        (
            vec![
                SequenceChunk {
                    seq: s,
                    tokens: &[1],
                },
                SequenceChunk {
                    seq: s,
                    tokens: &[2],
                },
            ],
            ForwardError::DuplicateSequence { seq: s },
        ),
        (
            vec![SequenceChunk {
                seq: s,
                tokens: &[],
            }],
            ForwardError::EmptyChunk { seq: s },
        ),
    ];
    for (chunks, expected) in cases {
        assert_eq!(model.forward(&chunks, &mut cache), Err(expected));
        assert_eq!(cache.used_tokens(), 3);
        assert_eq!(cache.seq_len(s), 3);
        assert_eq!(cache.num_sequences(), 1);
    }
    let other = tiny_config(384, false);
    let mut wrong_cache = KvCache::new(
        &{
            let mut c = other;
            c.num_hidden_layers = 2;
            c
        },
        10,
    );
    assert_eq!(
        model.forward(
            &[SequenceChunk {
                seq: s,
                tokens: &[1]
            }],
            &mut wrong_cache
        ),
        Err(ForwardError::CacheMismatch)
    );
    // The sequence still decodes after the refusals, and freeing returns its tokens.
    model
        .forward(
            &[SequenceChunk {
                seq: s,
                tokens: &[4],
            }],
            &mut cache,
        )
        .expect("decode");
    assert_eq!(cache.seq_len(s), 4);
    assert!(cache.free(s));
    assert!(!cache.free(s));
    assert_eq!((cache.used_tokens(), cache.capacity_tokens()), (0, 10));
}
