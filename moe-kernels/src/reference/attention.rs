//! Multi-head latent attention (MLA) over the latent cache, in absorbed form.
//!
//! The cache holds, per token, the normalised compressed key/value latent `c` (`kv_lora`
//! values, exactly as `kv_b_proj` consumes it) and the rotated rope key `k_pe` (`qk_rope`
//! values, shared by all heads). Head `h`'s key is `[W_UK[h]·c, k_pe]` and its value
//! `W_UV[h]·c`, where `kv_b_proj` = per head `qk_nope` rows of `W_UK[h]` then `v` rows of
//! `W_UV[h]`. Instead of expanding every cached token into per-head keys and values
//! ("expand"), the projections are moved to the query and output side ("absorb"):
//!
//! - `score_t = (W_UK[h]ᵀ·q_nope) · c_t + q_pe · k_pe_t`, times the softmax scale;
//! - `out_h = W_UV[h] · Σ_t p_t c_t`.
//!
//! This is the same quantity as the expanded form (up to f32 summation order), costs
//! `O(kv_lora)` per cached token and head instead of `O(kv_lora·(nope+v))`, and is the form
//! decode kernels use.

use super::linear::dot;
use rayon::prelude::*;

/// MLA dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaDims {
    /// Attention heads.
    pub heads: usize,
    /// Per-head query/key dimensions without rope.
    pub qk_nope: usize,
    /// Rope dimensions (query per head; key shared).
    pub qk_rope: usize,
    /// Per-head value dimensions.
    pub v: usize,
    /// Latent width.
    pub kv_lora: usize,
}

/// One sequence's latent cache.
#[derive(Debug, Clone, Copy)]
pub struct MlaCache<'a> {
    /// `[len, kv_lora]`: the normalised latent of each cached token.
    pub latent: &'a [f32],
    /// `[len, qk_rope]`: the rotated rope key of each cached token.
    pub rope_key: &'a [f32],
}

/// Attention of `n_q` queries of one sequence over its cache.
///
/// - `q`: `[n_q, heads, qk_nope + qk_rope]`, the rope part already rotated;
/// - `positions[i]`: query `i`'s position; it attends to cached tokens `0..=positions[i]`
///   (causal; the cache must hold them);
/// - `kv_b`: `kv_b_proj` as f32 `[heads·(qk_nope + v), kv_lora]`;
/// - `out`: `[n_q, heads·v]`.
pub fn mla_attention(
    q: &[f32],
    positions: &[usize],
    cache: &MlaCache<'_>,
    kv_b: &[f32],
    dims: &MlaDims,
    softmax_scale: f32,
    out: &mut [f32],
) {
    let d = dims;
    let q_head = d.qk_nope + d.qk_rope;
    let n_q = positions.len();
    assert_eq!(q.len(), n_q * d.heads * q_head, "mla_attention: q shape");
    assert_eq!(out.len(), n_q * d.heads * d.v, "mla_attention: out shape");
    assert_eq!(
        kv_b.len(),
        d.heads * (d.qk_nope + d.v) * d.kv_lora,
        "mla_attention: kv_b shape"
    );
    let len = cache.latent.len() / d.kv_lora;
    assert_eq!(
        cache.latent.len(),
        len * d.kv_lora,
        "mla_attention: latent shape"
    );
    assert_eq!(
        cache.rope_key.len(),
        len * d.qk_rope,
        "mla_attention: rope key shape"
    );
    assert!(
        positions.iter().all(|&p| p < len),
        "mla_attention: position beyond cache"
    );

    out.par_chunks_exact_mut(d.v)
        .enumerate()
        .for_each(|(ih, out_head)| {
            let (i, h) = (ih / d.heads, ih % d.heads);
            let q_vec = &q[ih * q_head..(ih + 1) * q_head];
            let (q_nope, q_pe) = q_vec.split_at(d.qk_nope);
            let w_head =
                &kv_b[h * (d.qk_nope + d.v) * d.kv_lora..(h + 1) * (d.qk_nope + d.v) * d.kv_lora];
            let (w_uk, w_uv) = w_head.split_at(d.qk_nope * d.kv_lora);

            let mut q_lat = vec![0f32; d.kv_lora];
            for (&qn, w_row) in q_nope.iter().zip(w_uk.chunks_exact(d.kv_lora)) {
                for (a, w) in q_lat.iter_mut().zip(w_row) {
                    *a += qn * w;
                }
            }
            let keys = positions[i] + 1;
            let mut scores: Vec<f32> = (0..keys)
                .map(|t| {
                    let c = &cache.latent[t * d.kv_lora..(t + 1) * d.kv_lora];
                    let k_pe = &cache.rope_key[t * d.qk_rope..(t + 1) * d.qk_rope];
                    (dot(&q_lat, c) + dot(q_pe, k_pe)) * softmax_scale
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let mut o_lat = vec![0f32; d.kv_lora];
            for (t, p) in scores.iter().enumerate() {
                let c = &cache.latent[t * d.kv_lora..(t + 1) * d.kv_lora];
                for (a, v) in o_lat.iter_mut().zip(c) {
                    *a += p * v;
                }
            }
            for a in &mut o_lat {
                *a /= sum;
            }
            for (o, w_row) in out_head.iter_mut().zip(w_uv.chunks_exact(d.kv_lora)) {
                *o = dot(w_row, &o_lat);
            }
        });
}
