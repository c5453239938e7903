//! The CPU reference ops against independent computations: f64 re-derivations of each
//! formula, brute force for routing, and the expanded form for absorbed MLA attention.

use moe_kernels::reference::{
    ActivationMode, ActivationQuant, ExpertRoute, Linear, Matrix, MlaCache, MlaDims, MlpWeights,
    Mxfp4Matrix, Rope, RoutingParams, ScaleRule, YarnParams, fake_quantize_rows, matmul,
    mla_attention, mlp, moe_forward, mxfp4_linear, rmsnorm, route_noaux_tc, routing_margin,
    silu_mul,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn values(r: &mut StdRng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-bound..bound)).collect()
}

/// `x[m,k] · w[n,k]ᵀ` in f64, with the sum of absolute products for the error bound.
fn matmul_f64(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let v = f64::from(x[i * k + p]) * f64::from(w[j * k + p]);
                out[i * n + j] += v;
                mag[i * n + j] += v.abs();
            }
        }
    }
    (out, mag)
}

/// Worst-case f32 summation error of a k-term dot product: `k · ε · Σ|xᵢwᵢ|`.
fn assert_close_to_f64(got: &[f32], want: &[f64], mag: &[f64], k: usize, what: &str) {
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = k as f64 * f64::from(f32::EPSILON) * m + 1e-30;
        assert!(
            (f64::from(*g) - w).abs() <= bound,
            "{what}[{i}]: {g} vs {w} (bound {bound})"
        );
    }
}

#[test]
fn matmul_matches_f64_on_every_parallel_path() {
    let mut r = rng(1);
    // Serial (small), row-parallel (m ≥ threads), column-parallel (m = 1, large).
    for (m, k, n) in [
        (1, 64, 48),
        (3, 40, 17),
        (9, 256, 130),
        (1, 512, 1000),
        (2, 7, 1),
    ] {
        let x = values(&mut r, m * k, 1.0);
        let w = values(&mut r, n * k, 1.0);
        let mut out = vec![f32::NAN; m * n];
        matmul(&x, &w, m, k, n, &mut out);
        let (want, mag) = matmul_f64(&x, &w, m, k, n);
        assert_close_to_f64(&out, &want, &mag, k, &format!("matmul {m}x{k}x{n}"));
    }
}

fn random_mxfp4(r: &mut StdRng, rows: usize, cols: usize) -> Mxfp4Matrix {
    let packed = (0..rows * cols / 2).map(|_| r.random::<u8>()).collect();
    // Scales around 2^0, including denormal-free small and large powers.
    let scales = (0..rows * cols / 32)
        .map(|_| r.random_range(110..=140))
        .collect();
    Mxfp4Matrix::new(rows, cols, packed, scales).expect("valid shapes")
}

/// The on-the-fly dequantizing matmul is exactly a dequantize followed by the f32 matmul, with
/// the activations fake-quantized first for W4A4.
#[test]
fn mxfp4_linear_equals_dequantize_then_matmul() {
    let mut r = rng(2);
    for (m, k, n) in [(1, 64, 33), (7, 96, 50), (4, 256, 300)] {
        let w = random_mxfp4(&mut r, n, k);
        let dense = w.dequantize();
        let x = values(&mut r, m * k, 3.0);
        for act in [
            ActivationQuant::None,
            ActivationQuant::Mxfp4(ScaleRule::Ocp),
            ActivationQuant::Mxfp4(ScaleRule::Even),
        ] {
            let mut got = vec![0f32; m * n];
            mxfp4_linear(&x, m, &w, act, &mut got);
            let xq = match act {
                ActivationQuant::None => x.clone(),
                ActivationQuant::Mxfp4(rule) => fake_quantize_rows(&x, k, rule),
            };
            let mut want = vec![0f32; m * n];
            matmul(&xq, &dense.data, m, k, n, &mut want);
            assert_eq!(got, want, "{m}x{k}x{n} {act:?}");
        }
        // `ActivationMode::Unquantized` turns a W4A4 layer into a weight-only one.
        let layer = Linear::Mxfp4 {
            weight: w.clone(),
            activations: ActivationQuant::Mxfp4(ScaleRule::Even),
        };
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        moe_kernels::reference::linear(&x, m, &layer, ActivationMode::Unquantized, &mut a);
        mxfp4_linear(&x, m, &w, ActivationQuant::None, &mut b);
        assert_eq!(a, b);
    }
}

/// DESIGN.md's worked examples: a block whose largest magnitude is 4.0 keeps it under both
/// rules; 5.0 rounds to 4.0 (tie to even); 7.0 becomes 6.0 under OCP and 8.0 under "even".
/// A block holding NaN becomes all NaN; its neighbour is untouched.
#[test]
fn activation_fake_quantization_follows_the_scale_rule() {
    let block = |amax: f32| {
        let mut b = vec![0.25f32; 32];
        b[3] = amax;
        b
    };
    for (amax, ocp, even) in [(4.0, 4.0, 4.0), (5.0, 4.0, 4.0), (7.0, 6.0, 8.0)] {
        assert_eq!(fake_quantize_rows(&block(amax), 32, ScaleRule::Ocp)[3], ocp);
        assert_eq!(
            fake_quantize_rows(&block(amax), 32, ScaleRule::Even)[3],
            even
        );
    }
    let mut two = block(4.0);
    two.extend(block(f32::NAN));
    let q = fake_quantize_rows(&two, 64, ScaleRule::Even);
    assert_eq!(q[3], 4.0);
    assert!(q[32..].iter().all(|v| v.is_nan()));
}

#[test]
fn rmsnorm_matches_f64() {
    let mut r = rng(3);
    for (rows, d) in [(1, 64), (70, 48), (3, 7)] {
        let x = values(&mut r, rows * d, 4.0);
        let w = values(&mut r, d, 2.0);
        let eps = 1e-6f32;
        let mut out = vec![0f32; rows * d];
        rmsnorm(&x, &w, eps, &mut out);
        for i in 0..rows {
            let row = &x[i * d..(i + 1) * d];
            let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + f64::from(eps)).sqrt();
            for j in 0..d {
                let want = f64::from(w[j]) * f64::from(row[j]) * inv;
                let got = f64::from(out[i * d + j]);
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                    "{got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn silu_mul_matches_f64() {
    let mut r = rng(4);
    let g = values(&mut r, 500, 12.0);
    let u = values(&mut r, 500, 3.0);
    let mut out = vec![0f32; 500];
    silu_mul(&g, &u, &mut out);
    for i in 0..500 {
        let (gf, uf) = (f64::from(g[i]), f64::from(u[i]));
        let want = gf / (1.0 + (-gf).exp()) * uf;
        assert!((f64::from(out[i]) - want).abs() <= 1e-6 * want.abs().max(1e-3));
    }
}

fn dense(r: &mut StdRng, rows: usize, cols: usize) -> Linear {
    let bound = (3.0 / cols as f32).sqrt();
    Linear::Dense(Matrix::new(rows, cols, values(r, rows * cols, bound)).unwrap())
}

fn random_mlp(r: &mut StdRng, h: usize, inter: usize) -> MlpWeights {
    MlpWeights {
        gate_proj: dense(r, inter, h),
        up_proj: dense(r, inter, h),
        down_proj: dense(r, h, inter),
    }
}

/// `down(silu(gate x) · up x)` in f64 for one row.
fn mlp_f64(x: &[f32], w: &MlpWeights) -> Vec<f64> {
    let get = |l: &Linear| match l {
        Linear::Dense(m) => m.clone(),
        Linear::Mxfp4 { weight, .. } => weight.dequantize(),
    };
    let (g, u, d) = (get(&w.gate_proj), get(&w.up_proj), get(&w.down_proj));
    let act: Vec<f64> = (0..g.rows)
        .map(|j| {
            let gv: f64 = g
                .row(j)
                .iter()
                .zip(x)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let uv: f64 = u
                .row(j)
                .iter()
                .zip(x)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            gv / (1.0 + (-gv).exp()) * uv
        })
        .collect();
    (0..d.rows)
        .map(|j| {
            d.row(j)
                .iter()
                .zip(&act)
                .map(|(a, b)| f64::from(*a) * b)
                .sum()
        })
        .collect()
}

fn assert_rel_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= rel * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn mlp_matches_f64() {
    let mut r = rng(5);
    let (h, inter, m) = (64, 96, 3);
    let w = random_mlp(&mut r, h, inter);
    let x = values(&mut r, m * h, 1.0);
    let mut out = vec![0f32; m * h];
    mlp(&x, m, &w, ActivationMode::Quantized, &mut out);
    for t in 0..m {
        let want = mlp_f64(&x[t * h..(t + 1) * h], &w);
        assert_rel_close(&out[t * h..(t + 1) * h], &want, 1e-5, "mlp");
    }
}

/// The reference's `_compute_yarn_parameters`/DeepSeek `yarn_find_correction_range`, in f64.
fn yarn_inv_freq_f64(dim: usize, theta: f64, y: &YarnParams) -> Vec<f64> {
    let corr = |rot: f64| {
        dim as f64 * (y.original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let low = corr(y.beta_fast).floor().max(0.0);
    let high = corr(y.beta_slow).ceil().min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    (0..dim / 2)
        .map(|i| {
            let pos_freq = theta.powf(2.0 * i as f64 / dim as f64);
            let extra = 1.0 / pos_freq;
            let inter = 1.0 / (y.factor * pos_freq);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let mask = 1.0 - ramp;
            inter * (1.0 - mask) + extra * mask
        })
        .collect()
}

/// DeepSeek-V3's yarn (dim 64, theta 1e4, factor 40, original 4096, beta 32/1): the
/// correction range is pairs 10..=23 (floor 10.47, ceil 22.5); below it frequencies are the
/// original ones, above it divided by 40.
#[test]
fn yarn_frequencies_of_deepseek_v3() {
    let y = YarnParams {
        factor: 40.0,
        original_max_position_embeddings: 4096.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        cos_sin_scale: 1.0,
    };
    let rope = Rope::new(64, 10000.0, Some(&y));
    let f = rope.inv_freq();
    for (i, &v) in f.iter().enumerate() {
        let original = 10000f64.powf(-(2.0 * i as f64) / 64.0);
        if i <= 10 {
            assert!(
                (v - original).abs() <= 1e-15 * original,
                "pair {i} keeps its frequency"
            );
        } else if i >= 23 {
            assert!(
                (v - original / 40.0).abs() <= 1e-15 * original,
                "pair {i} interpolated"
            );
        } else {
            assert!(v < original && v > original / 40.0, "pair {i} ramps");
        }
    }
    let reference = yarn_inv_freq_f64(64, 10000.0, &y);
    for (a, b) in f.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-15 * b);
    }
    let plain = Rope::new(64, 10000.0, None);
    let want = 10000f64.powf(-10.0 / 64.0);
    assert!((plain.inv_freq()[5] - want).abs() <= 1e-15 * want);
}

/// Rotary embedding against the reference model's formulation in f64: de-interleave
/// (`x[0::2] ++ x[1::2]`), then NeoX `x·cos + rotate_half(x)·sin` with the frequencies
/// duplicated. The two differ by a permutation applied to q and k alike, so q·k agrees; each
/// rotated vector is also the f64 rotation permuted back.
#[test]
fn rope_matches_the_reference_formulation_in_f64() {
    let mut r = rng(6);
    let dim = 16;
    let y = YarnParams {
        factor: 4.0,
        original_max_position_embeddings: 64.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        cos_sin_scale: 1.1,
    };
    let rope = Rope::new(dim, 10000.0, Some(&y));
    let freq = yarn_inv_freq_f64(dim, 10000.0, &y);
    let reference = |x: &[f32], pos: usize| -> Vec<f64> {
        let half = dim / 2;
        let de: Vec<f64> = (0..dim)
            .map(|j| {
                f64::from(if j < half {
                    x[2 * j]
                } else {
                    x[2 * (j - half) + 1]
                })
            })
            .collect();
        (0..dim)
            .map(|j| {
                let angle = pos as f64 * freq[j % half];
                let (c, s) = (angle.cos() * 1.1, angle.sin() * 1.1);
                let rot_half = if j < half {
                    -de[j + half]
                } else {
                    de[j - half]
                };
                de[j] * c + rot_half * s
            })
            .collect()
    };
    for (pq, pk) in [(0, 0), (5, 3), (200, 17), (1000, 999)] {
        let q = values(&mut r, dim, 1.0);
        let k = values(&mut r, dim, 1.0);
        let (mut qr, mut kr) = (q.clone(), k.clone());
        rope.rotate(&mut qr, pq, 1, dim, 0);
        rope.rotate(&mut kr, pk, 1, dim, 0);
        let (qf, kf) = (reference(&q, pq), reference(&k, pk));
        // Permute ours into the de-interleaved order and compare element-wise.
        for j in 0..dim {
            let ours = if j < dim / 2 {
                qr[2 * j]
            } else {
                qr[2 * (j - dim / 2) + 1]
            };
            assert!((f64::from(ours) - qf[j]).abs() <= 1e-6, "q[{j}] at {pq}");
        }
        let dot_ours: f64 = qr
            .iter()
            .zip(&kr)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let dot_ref: f64 = qf.iter().zip(&kf).map(|(a, b)| a * b).sum();
        assert!((dot_ours - dot_ref).abs() <= 1e-5, "q·k at ({pq}, {pk})");
    }
    // Several heads with a stride and an offset rotate like single vectors.
    let x = values(&mut r, 3 * 24, 1.0);
    let mut heads = x.clone();
    rope.rotate(&mut heads, 9, 3, 24, 8);
    for h in 0..3 {
        let mut one = x[h * 24 + 8..h * 24 + 24].to_vec();
        rope.rotate(&mut one, 9, 1, dim, 0);
        assert_eq!(&heads[h * 24 + 8..h * 24 + 24], &one[..]);
        assert_eq!(&heads[h * 24..h * 24 + 8], &x[h * 24..h * 24 + 8]);
    }
}

/// Straightforward `noaux_tc`: try every subset of `topk_group` groups and keep the one with
/// the largest total group score (group score = its two largest biased scores), then sort
/// that subset's experts by biased score.
fn route_brute_force(logits: &[f32], bias: &[f32], p: &RoutingParams) -> Vec<(usize, f64)> {
    let n = logits.len();
    let gs = n / p.n_group;
    let score = |e: usize| 1.0 / (1.0 + (-f64::from(logits[e])).exp());
    let biased = |e: usize| score(e) + f64::from(bias[e]);
    let group_score = |g: usize| {
        let mut v: Vec<f64> = (g * gs..(g + 1) * gs).map(biased).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        v[0] + v[1]
    };
    let mut best: Option<(f64, Vec<usize>)> = None;
    for mask in 0u32..(1 << p.n_group) {
        if mask.count_ones() as usize != p.topk_group {
            continue;
        }
        let groups: Vec<usize> = (0..p.n_group).filter(|g| mask & (1 << g) != 0).collect();
        let total: f64 = groups.iter().map(|&g| group_score(g)).sum();
        if best.as_ref().is_none_or(|(b, _)| total > *b) {
            best = Some((total, groups));
        }
    }
    let mut experts: Vec<usize> = best
        .unwrap()
        .1
        .iter()
        .flat_map(|g| g * gs..(g + 1) * gs)
        .collect();
    experts.sort_by(|&a, &b| biased(b).total_cmp(&biased(a)));
    experts.truncate(p.top_k);
    let sum: f64 = experts.iter().map(|&e| score(e)).sum();
    let mut out: Vec<(usize, f64)> = experts
        .iter()
        .map(|&e| {
            (
                e,
                if p.norm_topk_prob {
                    score(e) / sum
                } else {
                    score(e)
                },
            )
        })
        .collect();
    for j in 0..p.shared_slots {
        out.push((n + j, 1.0 / f64::from(p.routed_scaling_factor)));
    }
    out
}

#[test]
fn routing_matches_brute_force() {
    let mut r = rng(7);
    let shapes = [
        (256, 8, 4, 8, true, 1),
        (384, 1, 1, 8, true, 1),
        (16, 4, 2, 3, true, 2),
        (64, 8, 3, 6, false, 0),
    ];
    for (n, n_group, topk_group, top_k, norm, shared) in shapes {
        let p = RoutingParams {
            n_group,
            topk_group,
            top_k,
            norm_topk_prob: norm,
            routed_scaling_factor: 2.5,
            shared_slots: shared,
        };
        for _ in 0..50 {
            let logits = values(&mut r, n, 4.0);
            let bias = values(&mut r, n, 0.5);
            let got = route_noaux_tc(&logits, &bias, &p);
            let want = route_brute_force(&logits, &bias, &p);
            let ids: Vec<usize> = got.iter().map(|r| r.expert).collect();
            let want_ids: Vec<usize> = want.iter().map(|w| w.0).collect();
            assert_eq!(ids, want_ids, "{n} experts");
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(g.weight) - w.1).abs() <= 1e-6, "{g:?} vs {w:?}");
            }
        }
    }
}

#[test]
fn routing_margin_is_the_gap_at_each_cut_and_smaller_perturbations_keep_the_choice() {
    let mut r = rng(8);
    for (n, n_group, topk_group, top_k) in [(256, 8, 4, 8), (384, 1, 1, 8), (64, 8, 3, 6)] {
        let p = RoutingParams {
            n_group,
            topk_group,
            top_k,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
            shared_slots: 0,
        };
        for _ in 0..50 {
            let logits = values(&mut r, n, 4.0);
            let bias = values(&mut r, n, 0.5);
            let m = routing_margin(&logits, &bias, &p);
            // The cuts recomputed in f64 from the brute-force routing's choice.
            let biased =
                |e: usize| 1.0 / (1.0 + (-f64::from(logits[e])).exp()) + f64::from(bias[e]);
            let gs = n / n_group;
            let group_score: Vec<f64> = (0..n_group)
                .map(|g| {
                    let mut v: Vec<f64> = (g * gs..(g + 1) * gs).map(biased).collect();
                    v.sort_by(|a, b| b.total_cmp(a));
                    v[0] + v[1]
                })
                .collect();
            let mut ranked: Vec<usize> = (0..n_group).collect();
            ranked.sort_by(|&a, &b| group_score[b].total_cmp(&group_score[a]));
            let want_group = ranked.get(topk_group).map_or(f64::INFINITY, |&next| {
                group_score[ranked[topk_group - 1]] - group_score[next]
            });
            let kept: Vec<usize> = (0..n)
                .filter(|e| ranked[..topk_group].contains(&(e / gs)))
                .collect();
            let chosen: Vec<usize> = route_brute_force(&logits, &bias, &p)
                .iter()
                .map(|c| c.0)
                .collect();
            let mut candidates: Vec<f64> = kept.iter().map(|&e| biased(e)).collect();
            candidates.sort_by(|a, b| b.total_cmp(a));
            let want_top_k = candidates[top_k - 1] - candidates[top_k];
            assert!(
                (f64::from(m.top_k) - want_top_k).abs() <= 1e-6,
                "{m:?} vs {want_top_k}"
            );
            if want_group.is_finite() {
                assert!(
                    (f64::from(m.group) - want_group).abs() <= 1e-6,
                    "{m:?} vs {want_group}"
                );
            } else {
                assert_eq!(m.group, f32::INFINITY);
            }
            // Any bias change below half the margin keeps the chosen experts (with the group
            // gap halved: group scores move twice as far).
            let half = 0.49 * m.min();
            let nudged: Vec<f32> = bias
                .iter()
                .map(|b| b + r.random_range(-half..=half))
                .collect();
            let mut a: Vec<usize> = route_noaux_tc(&logits, &nudged, &p)
                .iter()
                .map(|c| c.expert)
                .collect();
            let mut b = chosen.clone();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "margin {m:?}");
        }
    }
}

/// The bias decides selection only: an expert with a huge bias is chosen, but weighted by its
/// unbiased score.
#[test]
fn correction_bias_selects_but_does_not_weigh() {
    let n = 32;
    let logits = vec![0f32; n];
    let mut bias = vec![0f32; n];
    bias[13] = 100.0;
    let p = RoutingParams {
        n_group: 4,
        topk_group: 2,
        top_k: 2,
        norm_topk_prob: false,
        routed_scaling_factor: 2.5,
        shared_slots: 0,
    };
    let routes = route_noaux_tc(&logits, &bias, &p);
    assert_eq!(routes[0].expert, 13);
    assert_eq!(routes[0].weight, 0.5);
}

/// A NaN logit ranks first, whatever its sign, and its NaN weight is kept; a row of NaN (a
/// non-finite hidden state) takes the first experts of the first groups, so every id is valid.
#[test]
fn nan_logits_rank_first_and_keep_their_nan_weight() {
    let n = 32;
    let bias = vec![0f32; n];
    let p = RoutingParams {
        n_group: 4,
        topk_group: 2,
        top_k: 3,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        shared_slots: 1,
    };
    let mut logits: Vec<f32> = (0..n).map(|e| e as f32 / 8.0).collect();
    logits[5] = -f32::NAN;
    let routes = route_noaux_tc(&logits, &bias, &p);
    // Group 0 (with the NaN) and group 3 (the largest finite scores) are kept; after the NaN
    // come group 3's two largest.
    let ids: Vec<usize> = routes.iter().map(|r| r.expert).collect();
    assert_eq!(ids, [5, 31, 30, n]);
    // The renormalisation divides by a sum that holds the NaN.
    assert!(routes.iter().take(3).all(|r| r.weight.is_nan()));

    let routes = route_noaux_tc(&vec![f32::NAN; n], &bias, &p);
    let ids: Vec<usize> = routes.iter().map(|r| r.expert).collect();
    assert_eq!(ids, [0, 1, 2, n]);
}

/// The combine against a per-token f64 loop: `rsf · Σ w · expert(x)`.
#[test]
fn moe_forward_matches_a_per_token_f64_sum() {
    let mut r = rng(8);
    let (h, inter, e, m, slots) = (32, 32, 6, 5, 3);
    let experts: Vec<MlpWeights> = (0..e).map(|_| random_mlp(&mut r, h, inter)).collect();
    let x = values(&mut r, m * h, 1.0);
    let routes: Vec<ExpertRoute> = (0..m * slots)
        .map(|_| ExpertRoute {
            expert: r.random_range(0..e),
            weight: r.random_range(0.0..1.0),
        })
        .collect();
    let rsf = 2.827f32;
    let mut out = vec![0f32; m * h];
    moe_forward(
        &x,
        m,
        &routes,
        &experts,
        rsf,
        ActivationMode::Quantized,
        &mut out,
    );
    for t in 0..m {
        let mut want = vec![0f64; h];
        for s in 0..slots {
            let route = routes[t * slots + s];
            let y = mlp_f64(&x[t * h..(t + 1) * h], &experts[route.expert]);
            for (w, v) in want.iter_mut().zip(y) {
                *w += f64::from(route.weight) * v * f64::from(rsf);
            }
        }
        assert_rel_close(&out[t * h..(t + 1) * h], &want, 1e-5, "moe");
    }
}

/// Absorbed MLA against the expanded form in f64: per head, keys `[W_UK·c, k_pe]`, values
/// `W_UV·c`, causal softmax of `q·k · scale`.
#[test]
fn absorbed_mla_matches_expanded_attention_in_f64() {
    let mut r = rng(9);
    let d = MlaDims {
        heads: 3,
        qk_nope: 8,
        qk_rope: 4,
        v: 6,
        kv_lora: 16,
    };
    let len = 9;
    let latent = values(&mut r, len * d.kv_lora, 1.0);
    let rope_key = values(&mut r, len * d.qk_rope, 1.0);
    let kv_b = values(&mut r, d.heads * (d.qk_nope + d.v) * d.kv_lora, 0.5);
    let positions = [0usize, 4, 8];
    let q_head = d.qk_nope + d.qk_rope;
    let q = values(&mut r, positions.len() * d.heads * q_head, 1.0);
    let scale = 0.37f32;
    let mut out = vec![0f32; positions.len() * d.heads * d.v];
    let cache = MlaCache {
        latent: &latent,
        rope_key: &rope_key,
    };
    mla_attention(&q, &positions, &cache, &kv_b, &d, scale, &mut out);

    let w = |h: usize, row: usize, c: usize| {
        f64::from(kv_b[(h * (d.qk_nope + d.v) + row) * d.kv_lora + c])
    };
    for (i, &pos) in positions.iter().enumerate() {
        for h in 0..d.heads {
            let qv = &q[(i * d.heads + h) * q_head..(i * d.heads + h + 1) * q_head];
            let mut scores = Vec::new();
            let mut vals = Vec::new();
            for t in 0..=pos {
                let c = &latent[t * d.kv_lora..(t + 1) * d.kv_lora];
                let k_nope: Vec<f64> = (0..d.qk_nope)
                    .map(|j| (0..d.kv_lora).map(|x| w(h, j, x) * f64::from(c[x])).sum())
                    .collect();
                let v: Vec<f64> = (0..d.v)
                    .map(|j| {
                        (0..d.kv_lora)
                            .map(|x| w(h, d.qk_nope + j, x) * f64::from(c[x]))
                            .sum()
                    })
                    .collect();
                let s: f64 = (0..d.qk_nope)
                    .map(|j| f64::from(qv[j]) * k_nope[j])
                    .sum::<f64>()
                    + (0..d.qk_rope)
                        .map(|j| {
                            f64::from(qv[d.qk_nope + j]) * f64::from(rope_key[t * d.qk_rope + j])
                        })
                        .sum::<f64>();
                scores.push(s * f64::from(scale));
                vals.push(v);
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let want: Vec<f64> = (0..d.v)
                .map(|j| exps.iter().zip(&vals).map(|(p, v)| p * v[j]).sum::<f64>() / sum)
                .collect();
            let got = &out[(i * d.heads + h) * d.v..(i * d.heads + h + 1) * d.v];
            assert_rel_close(got, &want, 1e-5, &format!("query {i} head {h}"));
        }
    }
}

/// Shared-expert slots cut from a wider MLP along the intermediate dimension sum to the whole
/// MLP: the identity fusion relies on (MXFP4 columns cut on block boundaries).
#[test]
fn an_mlp_splits_along_its_intermediate_dimension() {
    let mut r = rng(10);
    let (h, inter) = (64, 96);
    let quantized = |r: &mut StdRng, rows, cols| Linear::Mxfp4 {
        weight: random_mxfp4(r, rows, cols),
        activations: ActivationQuant::None,
    };
    let whole = MlpWeights {
        gate_proj: quantized(&mut r, inter, h),
        up_proj: quantized(&mut r, inter, h),
        down_proj: quantized(&mut r, h, inter),
    };
    let x = values(&mut r, 2 * h, 1.0);
    let mut want = vec![0f32; 2 * h];
    mlp(&x, 2, &whole, ActivationMode::Quantized, &mut want);
    let mut sum = vec![0f32; 2 * h];
    for j in 0..3 {
        let range = j * 32..(j + 1) * 32;
        let part = MlpWeights {
            gate_proj: whole.gate_proj.slice_out(range.clone()),
            up_proj: whole.up_proj.slice_out(range.clone()),
            down_proj: whole.down_proj.slice_in(range).expect("block aligned"),
        };
        let mut y = vec![0f32; 2 * h];
        mlp(&x, 2, &part, ActivationMode::Quantized, &mut y);
        for (s, v) in sum.iter_mut().zip(y) {
            *s += v;
        }
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in sum.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * scale);
    }
    assert!(
        whole.down_proj.slice_in(16..48).is_none(),
        "unaligned MXFP4 cut refused"
    );
}
