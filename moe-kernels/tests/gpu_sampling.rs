//! `gpu::SamplingKernel` against `reference::sample_token` on the first GPU present (skipped,
//! with a message, where there is none): fresh random logits of several vocabulary sizes
//! (Kimi's 163840 included), many (temperature, top_k, top_p, u) combinations, rows with
//! ties, NaN and infinities, greedy and skipped rows. The checks of a request, made on the
//! host, run on any machine.
//!
//! The kernel sums the same f64 weights as the reference in another order, so a token may
//! differ where the draw (or the top-p target) lies within rounding of a prefix sum. A
//! mismatch is accepted only when nudging `u` by 1e-9 or `top_p` by one f32 step makes the
//! reference agree with the kernel, and such rows must stay rare.

use std::time::Instant;

use moe_kernels::gpu::{RowPick, RowSample, SamplingKernel};
use moe_kernels::reference::{SamplingRule, sample_token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runtime_rocm::{Device, Stream, first_gpu};

/// The first GPU with the sampling kernel compiled for it and a stream (`None`, after the skip
/// message, where there is no GPU).
fn compiled(test: &str) -> Option<(Device, SamplingKernel, Stream)> {
    let device = first_gpu(test)?;
    let kernel = SamplingKernel::compile(&device).unwrap();
    let stream = device.create_stream().unwrap();
    Some((device, kernel, stream))
}

/// One row of logits of a random kind.
fn random_row(rng: &mut StdRng, vocab: usize) -> Vec<f32> {
    let scale = [0.5f32, 3.0, 20.0][rng.random_range(0..3)];
    let mut row: Vec<f32> = (0..vocab)
        .map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    match rng.random_range(0..6) {
        // Many exact ties, maxima included.
        0 => row.iter_mut().for_each(|v| *v = v.round()),
        // A few NaN.
        1 => {
            for _ in 0..vocab.div_ceil(50) {
                row[rng.random_range(0..vocab)] = f32::NAN;
            }
        }
        // Impossible tokens.
        2 => {
            for _ in 0..vocab.div_ceil(10) {
                row[rng.random_range(0..vocab)] = f32::NEG_INFINITY;
            }
        }
        // A certain token.
        3 if rng.random_bool(0.3) => row[rng.random_range(0..vocab)] = f32::INFINITY,
        // Signed zeros at the top.
        4 if vocab > 2 => {
            row.iter_mut().for_each(|v| *v = -v.abs() - 1.0);
            row[rng.random_range(0..vocab)] = -0.0;
            row[rng.random_range(0..vocab)] = 0.0;
        }
        _ => {}
    }
    row
}

fn random_pick(rng: &mut StdRng, vocab: usize) -> RowPick {
    if rng.random_bool(0.05) {
        return RowPick::Skip;
    }
    if rng.random_bool(0.2) {
        return RowPick::Sample {
            rule: SamplingRule::GREEDY,
            u: 0.0,
        };
    }
    let top_k = match rng.random_range(0..6) {
        0 | 1 => 0,
        2 => 1,
        3 => rng.random_range(1..=vocab.min(64)),
        4 => rng.random_range(1..=vocab),
        _ => vocab + 3,
    };
    let top_p = if rng.random_bool(0.5) {
        1.0
    } else {
        rng.random_range(0.02f32..1.0)
    };
    RowPick::Sample {
        rule: SamplingRule {
            temperature: rng.random_range(0.05f32..2.5),
            top_k,
            top_p,
        },
        u: rng.random(),
    }
}

/// Whether a mismatch is a draw (or top-p cut) within rounding of a boundary.
fn near_boundary(row: &[f32], rule: &SamplingRule, u: f64, got: u32) -> bool {
    let nudged_u = [(u - 1e-9).max(0.0), (u + 1e-9).min(1.0 - f64::EPSILON)];
    let nudged_p = [rule.top_p.next_down(), rule.top_p.next_up().min(1.0)];
    nudged_u
        .iter()
        .any(|&u| sample_token(row, rule, u) == Some(got))
        || nudged_p.iter().any(|&top_p| {
            let rule = SamplingRule { top_p, ..*rule };
            nudged_u
                .iter()
                .chain([&u])
                .any(|&u| sample_token(row, &rule, u) == Some(got))
        })
}

#[test]
fn device_sampling_matches_the_reference() {
    let Some((device, kernel, stream)) = compiled("device_sampling_matches_the_reference") else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(0x5a391);
    for (vocab, rows) in [
        (1, 8),
        (7, 64),
        (1000, 96),
        (32_000, 48),
        (163_840, 64),
        (200_003, 16),
    ] {
        let logits: Vec<Vec<f32>> = (0..rows).map(|_| random_row(&mut rng, vocab)).collect();
        let picks: Vec<RowPick> = (0..rows).map(|_| random_pick(&mut rng, vocab)).collect();
        let flat: Vec<f32> = logits.concat();
        let buffer = device.upload(&flat).unwrap();
        let started = Instant::now();
        let got = kernel.sample(&stream, &buffer, vocab, &picks).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(got.len(), rows);
        let mut boundary = 0;
        for (r, ((row, pick), out)) in logits.iter().zip(&picks).zip(&got).enumerate() {
            let non_finite = row.iter().any(|v| !v.is_finite());
            assert_eq!(
                out.non_finite, non_finite,
                "vocab {vocab} row {r}: non-finite flag"
            );
            let RowPick::Sample { rule, u } = *pick else {
                assert_eq!(out.token, None, "vocab {vocab} row {r}: skipped row");
                continue;
            };
            let want = sample_token(row, &rule, u);
            if out.token == want {
                continue;
            }
            let token = out
                .token
                .unwrap_or_else(|| panic!("vocab {vocab} row {r}: no token, want {want:?}"));
            assert!(
                !rule.is_greedy() && near_boundary(row, &rule, u, token),
                "vocab {vocab} row {r}: {rule:?} u = {u}: kernel {token}, reference {want:?}"
            );
            boundary += 1;
        }
        println!(
            "vocab {vocab}: {rows} rows, {boundary} at a rounding boundary, {elapsed:?} (incl. transfers)"
        );
        assert!(
            boundary * 50 <= rows.max(50),
            "{boundary} boundary rows of {rows}"
        );
    }
}

#[test]
fn device_draws_follow_the_reference_distribution() {
    // Many rows of the same logits with evenly spaced u: the kernel's token counts must equal
    // the reference's (both are functions of u), tie-heavy logits included.
    let Some((device, kernel, stream)) = compiled("device_draws_follow_the_reference_distribution")
    else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(17);
    let vocab = 163_840;
    let mut row: Vec<f32> = (0..vocab).map(|_| rng.random_range(-6.0f32..6.0)).collect();
    for v in row.iter_mut().step_by(3) {
        *v = v.round();
    }
    let rows = 256;
    let buffer = device.upload(&row.repeat(rows)).unwrap();
    for rule in [
        SamplingRule {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        },
        SamplingRule {
            temperature: 0.7,
            top_k: 50,
            top_p: 1.0,
        },
        SamplingRule {
            temperature: 1.3,
            top_k: 0,
            top_p: 0.9,
        },
        SamplingRule {
            temperature: 0.4,
            top_k: 1000,
            top_p: 0.5,
        },
    ] {
        let picks: Vec<RowPick> = (0..rows)
            .map(|i| RowPick::Sample {
                rule,
                u: (i as f64 + 0.5) / rows as f64,
            })
            .collect();
        let got: Vec<RowSample> = kernel.sample(&stream, &buffer, vocab, &picks).unwrap();
        let mut mismatches = 0;
        for (pick, out) in picks.iter().zip(&got) {
            let RowPick::Sample { u, .. } = *pick else {
                unreachable!()
            };
            let token = out.token.expect("a token");
            if sample_token(&row, &rule, u) != Some(token) {
                assert!(
                    near_boundary(&row, &rule, u, token),
                    "{rule:?} u = {u}: {token}"
                );
                mismatches += 1;
            }
        }
        assert!(
            mismatches <= 2,
            "{rule:?}: {mismatches} boundary mismatches"
        );
    }
}

#[test]
fn bad_requests_are_refused_by_name() {
    let Some((device, kernel, stream)) = compiled("bad_requests_are_refused_by_name") else {
        return;
    };
    let buffer = device.upload(&[0.0f32; 8]).unwrap();
    let rule = SamplingRule {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let cases = [
        (RowPick::Sample { rule, u: 1.0 }, 4, "u"),
        (
            RowPick::Sample {
                rule: SamplingRule { top_p: 0.0, ..rule },
                u: 0.5,
            },
            4,
            "top_p",
        ),
        (
            RowPick::Sample {
                rule: SamplingRule {
                    temperature: f32::NAN,
                    ..rule
                },
                u: 0.5,
            },
            4,
            "temperature",
        ),
        (RowPick::Skip, 16, "logits"),
    ];
    for (pick, vocab, name) in cases {
        let err = kernel.sample(&stream, &buffer, vocab, &[pick]).unwrap_err();
        assert!(err.to_string().starts_with(name), "{pick:?}: {err}");
    }
}

/// The requests are checked on the host, so this runs on any machine: the vocabulary must be
/// positive and no larger than the first pass's grid can split (65535 parts of 4096 logits),
/// and a sampled row's values in range.
#[test]
fn requests_are_checked_on_the_host() {
    let greedy = RowPick::Sample {
        rule: SamplingRule {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        },
        u: 0.0,
    };
    let widest = 65_535 * 4096;
    for vocab in [0, widest + 1] {
        let err = SamplingKernel::encode_requests(&[greedy], vocab).unwrap_err();
        assert!(err.to_string().starts_with("vocab"), "{vocab}: {err}");
    }
    assert_eq!(
        SamplingKernel::encode_requests(&[greedy, RowPick::Skip], widest).unwrap(),
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    let rule = SamplingRule {
        temperature: 0.5,
        top_k: 50,
        top_p: 0.9,
    };
    // top_k is capped at the vocabulary.
    assert_eq!(
        SamplingKernel::encode_requests(&[RowPick::Sample { rule, u: 0.25 }], 40).unwrap(),
        [2.0, 2.0, 40.0, f64::from(0.9f32), 0.25]
    );
    let err = SamplingKernel::encode_requests(&[RowPick::Sample { rule, u: 1.0 }], 40).unwrap_err();
    assert!(err.to_string().starts_with("u"), "{err}");
}
