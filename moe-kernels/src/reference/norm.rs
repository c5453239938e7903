//! RMSNorm.

use super::linear::dot;
use rayon::prelude::*;

/// Rows at which normalisation is split across threads.
const PARALLEL_MIN_ROWS: usize = 64;

/// `out_i = weight ⊙ x_i / sqrt(mean(x_i²) + eps)` for each row `x_i` of `x` (rows of
/// `weight.len()` values), in f32 as the reference model computes it.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert!(d > 0, "rmsnorm: empty weight");
    assert_eq!(x.len() % d, 0, "rmsnorm: x is not [rows, weight.len()]");
    assert_eq!(out.len(), x.len(), "rmsnorm: out and x differ in length");
    let row = |(x_row, out_row): (&[f32], &mut [f32])| {
        let inv = 1.0 / (dot(x_row, x_row) / d as f32 + eps).sqrt();
        for ((o, v), w) in out_row.iter_mut().zip(x_row).zip(weight) {
            *o = w * (v * inv);
        }
    };
    if x.len() / d >= PARALLEL_MIN_ROWS {
        x.par_chunks_exact(d)
            .zip(out.par_chunks_exact_mut(d))
            .for_each(row);
    } else {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(row);
    }
}
