//! `Model::forward_sampled` on the CPU: the same forward pass as `Model::forward`, then each
//! requested token picked from its logits row by the reference rule; a chunk that asks for
//! nothing gets nothing; a bad request is refused before the cache changes.

use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::sampling::{ChunkPick, SampledChunk, SamplingRule, sample_token};
use model_deepseek::tiny::{TinySpec, write_tiny_checkpoint};
use model_deepseek::{ActivationMode, ForwardError, KvCache, Model, SeqId, SequenceChunk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn model() -> Model {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(
        dir.path(),
        &TinySpec {
            seed: 12,
            ..TinySpec::default()
        },
    )
    .unwrap();
    let options = LoadOptions {
        fusion: FusionMode::Auto,
        activations: ActivationMode::Quantized,
    };
    loader::load(dir.path(), &options).unwrap().model
}

#[test]
fn picks_what_the_reference_picks_from_the_same_logits() {
    let model = model();
    let vocab = model.config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(3);
    let (mut plain, mut sampled) = (
        KvCache::new(model.config(), 256),
        KvCache::new(model.config(), 256),
    );
    for step in 0..6 {
        let tokens: Vec<Vec<u32>> = (0..3)
            .map(|_| {
                (0..rng.random_range(1..5))
                    .map(|_| rng.random_range(0..vocab))
                    .collect()
            })
            .collect();
        let chunks: Vec<SequenceChunk<'_>> = tokens
            .iter()
            .enumerate()
            .map(|(s, t)| SequenceChunk {
                seq: SeqId(s as u64),
                tokens: t,
            })
            .collect();
        let picks = [
            Some(ChunkPick {
                rule: SamplingRule::GREEDY,
                u: 0.0,
                logits: false,
            }),
            Some(ChunkPick {
                rule: SamplingRule {
                    temperature: rng.random_range(0.3..1.5),
                    top_k: rng.random_range(0..20),
                    top_p: rng.random_range(0.3..=1.0),
                },
                u: rng.random(),
                logits: step % 2 == 0,
            }),
            None,
        ];
        let want = model.forward(&chunks, &mut plain).unwrap();
        let with: Vec<SampledChunk<'_>> = chunks
            .iter()
            .zip(picks)
            .map(|(&chunk, pick)| SampledChunk { chunk, pick })
            .collect();
        let got = model.forward_sampled(&with, &mut sampled).unwrap();
        assert_eq!(got.len(), 3);
        for ((row, pick), out) in want.iter().zip(picks).zip(&got) {
            match (pick, out) {
                (None, None) => {}
                (Some(p), Some(out)) => {
                    assert_eq!(Some(out.token), sample_token(row, &p.rule, p.u));
                    assert_eq!(out.logits.as_ref(), p.logits.then_some(row));
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
    }
}

#[test]
fn bad_requests_are_refused_before_the_cache_changes() {
    let model = model();
    let mut cache = KvCache::new(model.config(), 64);
    let rule = SamplingRule {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    for (pick, named) in [
        (
            ChunkPick {
                rule,
                u: 1.0,
                logits: false,
            },
            "uniform draw 1",
        ),
        (
            ChunkPick {
                rule: SamplingRule { top_p: 0.0, ..rule },
                u: 0.5,
                logits: false,
            },
            "top_p 0",
        ),
        (
            ChunkPick {
                rule: SamplingRule {
                    temperature: -1.0,
                    ..rule
                },
                u: 0.5,
                logits: false,
            },
            "temperature -1",
        ),
    ] {
        let chunk = SequenceChunk {
            seq: SeqId(4),
            tokens: &[1, 2, 3],
        };
        let err = model
            .forward_sampled(
                &[SampledChunk {
                    chunk,
                    pick: Some(pick),
                }],
                &mut cache,
            )
            .unwrap_err();
        assert!(
            matches!(err, ForwardError::BadSampling { seq: SeqId(4), .. }),
            "{err}"
        );
        assert!(err.to_string().contains(named), "{err}");
        assert_eq!(cache.used_tokens(), 0);
    }
}
