//! The whole forward pass against an independent f64 implementation written the way the
//! reference model (HF `modeling_deepseek.py`) computes: expanded per-head keys and values,
//! NeoX rotation after de-interleaving, the routed scaling factor folded into the routed
//! weights, the shared expert added separately. Weights are MXFP4 (weight-only, so both sides
//! see the same dequantized values) and activations unquantized: what is compared is the
//! wiring of the model, not the activation quantizer.

mod common;

use common::{max_abs, max_abs_diff, tiny_config, tiny_model};
use model_deepseek::synthetic::{SyntheticSpec, WeightFormat};
use model_deepseek::weights::{
    ActivationQuant, FeedForward, Linear, MlpWeights, ModelWeights, QueryWeights,
};
use model_deepseek::{ActivationMode, KvCache, ModelConfig, SeqId, SequenceChunk};

type Mat = (usize, usize, Vec<f64>);

fn mat(l: &Linear) -> Mat {
    let m = l.to_dense();
    (
        m.rows,
        m.cols,
        m.data.iter().map(|v| f64::from(*v)).collect(),
    )
}

fn apply(w: &Mat, x: &[f64]) -> Vec<f64> {
    let (rows, cols, data) = w;
    (0..*rows)
        .map(|r| {
            data[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| f64::from(*x)).collect()
}

fn rmsnorm(x: &[f64], w: &[f32], eps: f32) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + f64::from(eps)).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, w)| v * inv * f64::from(*w))
        .collect()
}

fn mlp(w: &MlpWeights, x: &[f64]) -> Vec<f64> {
    let g = apply(&mat(&w.gate_proj), x);
    let u = apply(&mat(&w.up_proj), x);
    let act: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    apply(&mat(&w.down_proj), &act)
}

fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

/// `DeepseekV3YarnRotaryEmbedding`: inverse frequencies and the cos/sin factor.
fn yarn(c: &ModelConfig) -> (Vec<f64>, f64) {
    let dim = c.qk_rope_head_dim;
    let base = c.rope_theta;
    let y = c.rope_scaling.expect("tiny config uses yarn");
    let find_dim = |rot: f64| {
        dim as f64
            * (y.original_max_position_embeddings as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let low = find_dim(y.beta_fast).floor().max(0.0);
    let mut high = find_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    let inv_freq = (0..dim / 2)
        .map(|i| {
            let freq_extra = 1.0 / base.powf(2.0 * i as f64 / dim as f64);
            let freq_inter = freq_extra / y.factor;
            let mask = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            freq_inter * (1.0 - mask) + freq_extra * mask
        })
        .collect();
    let mscale = yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim);
    (inv_freq, mscale)
}

/// `apply_rotary_pos_emb`: de-interleave, then `x·cos + rotate_half(x)·sin`.
fn rotate(x: &[f64], pos: usize, inv_freq: &[f64], mscale: f64) -> Vec<f64> {
    let half = x.len() / 2;
    let de: Vec<f64> = (0..x.len())
        .map(|j| {
            if j < half {
                x[2 * j]
            } else {
                x[2 * (j - half) + 1]
            }
        })
        .collect();
    (0..x.len())
        .map(|j| {
            let angle = pos as f64 * inv_freq[j % half];
            let rot_half = if j < half {
                -de[j + half]
            } else {
                de[j - half]
            };
            de[j] * angle.cos() * mscale + rot_half * angle.sin() * mscale
        })
        .collect()
}

fn reference_logits(c: &ModelConfig, w: &ModelWeights, tokens: &[u32]) -> Vec<f64> {
    let (inv_freq, cs_scale) = yarn(c);
    let y = c.rope_scaling.unwrap();
    let m = yarn_mscale(y.factor, y.mscale_all_dim);
    let softmax_scale = (c.qk_head_dim() as f64).powf(-0.5) * m * m;
    let (heads, nope, rope, v) = (
        c.num_attention_heads,
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
    );
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| f64s(w.embed_tokens.row(t as usize)))
        .collect();
    for layer in &w.layers {
        let a = &layer.attention;
        let hs: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| rmsnorm(x, &layer.input_layernorm, c.rms_norm_eps))
            .collect();
        // Per position: per-head q, k, v.
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, h) in hs.iter().enumerate() {
            let q = match &a.query {
                QueryWeights::Lora {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                } => {
                    let qa = rmsnorm(&apply(&mat(q_a_proj), h), q_a_layernorm, c.rms_norm_eps);
                    apply(&mat(q_b_proj), &qa)
                }
                QueryWeights::Direct { q_proj } => apply(&mat(q_proj), h),
            };
            let kv_a = apply(&mat(&a.kv_a_proj_with_mqa), h);
            let compressed = rmsnorm(&kv_a[..c.kv_lora_rank], &a.kv_a_layernorm, c.rms_norm_eps);
            let k_pe = rotate(&kv_a[c.kv_lora_rank..], pos, &inv_freq, cs_scale);
            let kv = apply(&mat(&a.kv_b_proj), &compressed);
            let mut q_heads = Vec::new();
            let mut k_heads = Vec::new();
            let mut v_heads = Vec::new();
            for hd in 0..heads {
                let qh = &q[hd * (nope + rope)..(hd + 1) * (nope + rope)];
                let mut qv = qh[..nope].to_vec();
                qv.extend(rotate(&qh[nope..], pos, &inv_freq, cs_scale));
                let kvh = &kv[hd * (nope + v)..(hd + 1) * (nope + v)];
                let mut kv_vec = kvh[..nope].to_vec();
                kv_vec.extend(&k_pe);
                q_heads.push(qv);
                k_heads.push(kv_vec);
                v_heads.push(kvh[nope..].to_vec());
            }
            qs.push(q_heads);
            ks.push(k_heads);
            vs.push(v_heads);
        }
        let o_proj = mat(&a.o_proj);
        for i in 0..xs.len() {
            let mut attn = Vec::new();
            for hd in 0..heads {
                let scores: Vec<f64> = (0..=i)
                    .map(|t| {
                        qs[i][hd]
                            .iter()
                            .zip(&ks[t][hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            * softmax_scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                attn.extend(
                    (0..v).map(|j| (0..=i).map(|t| e[t] * vs[t][hd][j]).sum::<f64>() / sum),
                );
            }
            for (x, o) in xs[i].iter_mut().zip(apply(&o_proj, &attn)) {
                *x += o;
            }
        }
        for x in xs.iter_mut() {
            let h = rmsnorm(x, &layer.post_attention_layernorm, c.rms_norm_eps);
            let out = match &layer.feed_forward {
                FeedForward::Dense(m) => mlp(m, &h),
                FeedForward::Moe(moe) => {
                    assert_eq!(
                        moe.fused_shared_slots, 0,
                        "reference runs the shared expert apart"
                    );
                    let router = (moe.router.rows, moe.router.cols, f64s(&moe.router.data));
                    let scores: Vec<f64> = apply(&router, &h)
                        .iter()
                        .map(|l| 1.0 / (1.0 + (-l).exp()))
                        .collect();
                    let biased: Vec<f64> = scores
                        .iter()
                        .zip(&moe.correction_bias)
                        .map(|(s, b)| s + f64::from(*b))
                        .collect();
                    let gs = c.n_routed_experts / c.n_group;
                    let mut group_scores: Vec<(f64, usize)> = (0..c.n_group)
                        .map(|g| {
                            let mut s: Vec<f64> = biased[g * gs..(g + 1) * gs].to_vec();
                            s.sort_by(|a, b| b.total_cmp(a));
                            (s[0] + s[1], g)
                        })
                        .collect();
                    group_scores.sort_by(|a, b| b.0.total_cmp(&a.0));
                    let mut cand: Vec<usize> = group_scores[..c.topk_group]
                        .iter()
                        .flat_map(|(_, g)| g * gs..(g + 1) * gs)
                        .collect();
                    cand.sort_by(|&a, &b| biased[b].total_cmp(&biased[a]));
                    cand.truncate(c.num_experts_per_tok);
                    let denom: f64 = cand.iter().map(|&e| scores[e]).sum::<f64>() + 1e-20;
                    let mut y = vec![0f64; c.hidden_size];
                    for &e in &cand {
                        let wgt = scores[e] / denom * f64::from(c.routed_scaling_factor);
                        for (acc, val) in y.iter_mut().zip(mlp(&moe.experts[e], &h)) {
                            *acc += wgt * val;
                        }
                    }
                    if let Some(shared) = &moe.shared {
                        for (acc, val) in y.iter_mut().zip(mlp(shared, &h)) {
                            *acc += val;
                        }
                    }
                    y
                }
            };
            for (a, b) in x.iter_mut().zip(out) {
                *a += b;
            }
        }
    }
    let head = match &w.lm_head {
        Some(l) => mat(l),
        None => (
            w.embed_tokens.rows,
            w.embed_tokens.cols,
            f64s(&w.embed_tokens.data),
        ),
    };
    xs.iter()
        .flat_map(|x| apply(&head, &rmsnorm(x, &w.norm, c.rms_norm_eps)))
        .collect()
}

/// f32 rounding through three layers keeps the CPU forward within 1e-4 of the logits'
/// magnitude of the f64 computation (measured below 1e-5); a wiring error (wrong rope pairing,
/// missing mscale², rsf applied twice, bias used in the weights, off-by-one causal mask) moves
/// logits by far more.
#[test]
fn forward_matches_an_independent_f64_model() {
    let weight_only = WeightFormat::Mxfp4(ActivationQuant::None);
    let spec = SyntheticSpec {
        routed_experts: weight_only,
        shared_experts: weight_only,
        attention: weight_only,
        dense_mlp: weight_only,
        lm_head: WeightFormat::Dense,
        fuse_shared: false,
    };
    let tokens = [3u32, 77, 12, 12, 50, 1, 95, 30];
    for (experts, tied) in [(256, false), (384, true)] {
        let config = tiny_config(experts, tied);
        let model = tiny_model(&config, &spec, 77, ActivationMode::Unquantized);
        let want = reference_logits(&config, model.weights(), &tokens);
        let mut cache = KvCache::new(&config, 16);
        let got = model
            .forward_all_positions(
                &[SequenceChunk {
                    seq: SeqId(0),
                    tokens: &tokens,
                }],
                &mut cache,
            )
            .unwrap()
            .remove(0)
            .data;
        let want32: Vec<f32> = want.iter().map(|v| *v as f32).collect();
        let diff = max_abs_diff(&got, &want32);
        eprintln!(
            "{experts} experts: max |Δlogit| = {diff:e} of {}",
            max_abs(&want32)
        );
        assert!(
            diff <= 1e-4 * max_abs(&want32),
            "{experts} experts: differs by {diff}"
        );
    }
}
