//! Rotary position embedding with interleaved (GPT-J) pairs and optional YaRN scaling.
//!
//! Pair `i` is dimensions `2i` and `2i+1`; it rotates by `position · inv_freq[i]`. (The
//! reference model de-interleaves before a NeoX-style rotation; that permutes q and k the same
//! way, which leaves every q·k product, and so attention, unchanged.) Frequencies and angles
//! are computed in f64 and the rotation in f32.

use std::f64::consts::PI;

/// YaRN's frequency parameters (`rope_scaling` with type `yarn`) and its cos/sin magnitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnParams {
    /// Context extension factor.
    pub factor: f64,
    /// Pre-extension context length.
    pub original_max_position_embeddings: f64,
    /// Rotations above which a dimension keeps its original frequency.
    pub beta_fast: f64,
    /// Rotations below which a dimension is fully interpolated (divided by `factor`).
    pub beta_slow: f64,
    /// Factor on cos and sin: `mscale(factor, mscale) / mscale(factor, mscale_all_dim)`.
    pub cos_sin_scale: f64,
}

/// Precomputed rotary frequencies for one rotary dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f64>,
    scale: f64,
}

impl Rope {
    /// Frequencies `theta^(-2i/dim)` for `i < dim/2`, YaRN-corrected when `yarn` is given:
    /// dimensions rotating more than `beta_fast` times over the original context keep their
    /// frequency, those rotating fewer than `beta_slow` times are divided by `factor`, with a
    /// linear ramp between (the correction range is floored/ceiled to whole pairs as the
    /// reference does).
    pub fn new(dim: usize, theta: f64, yarn: Option<&YarnParams>) -> Self {
        assert!(
            dim > 0 && dim.is_multiple_of(2),
            "rope: dim must be even and positive"
        );
        let half = dim / 2;
        let extra: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        let Some(y) = yarn else {
            return Self {
                inv_freq: extra,
                scale: 1.0,
            };
        };
        let correction_dim = |rotations: f64| {
            dim as f64 * (y.original_max_position_embeddings / (rotations * 2.0 * PI)).ln()
                / (2.0 * theta.ln())
        };
        let low = correction_dim(y.beta_fast).floor().max(0.0);
        let mut high = correction_dim(y.beta_slow).ceil().min((dim - 1) as f64);
        if low == high {
            high += 0.001;
        }
        let inv_freq = extra
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                // ramp 0: extrapolate (original frequency); ramp 1: interpolate (÷ factor).
                f / y.factor * ramp + f * (1.0 - ramp)
            })
            .collect();
        Self {
            inv_freq,
            scale: y.cos_sin_scale,
        }
    }

    /// Rotary dimension (twice the number of pairs).
    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// Inverse frequency of each pair.
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// The factor on cos and sin (YaRN's mscale ratio; 1 without YaRN).
    pub fn cos_sin_scale(&self) -> f64 {
        self.scale
    }

    /// `(cos, sin)` of each pair at `position`, times the cos/sin scale, rounded to f32.
    pub fn cos_sin(&self, position: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|f| {
                let angle = position as f64 * f;
                (
                    (angle.cos() * self.scale) as f32,
                    (angle.sin() * self.scale) as f32,
                )
            })
            .unzip()
    }

    /// Rotate `count` vectors of `dim()` values in `x`, the `h`-th starting at
    /// `h·stride + offset`, all at `position` (the query heads of one token, or its rope key).
    pub fn rotate(
        &self,
        x: &mut [f32],
        position: usize,
        count: usize,
        stride: usize,
        offset: usize,
    ) {
        let (cos, sin) = self.cos_sin(position);
        for h in 0..count {
            let v = &mut x[h * stride + offset..h * stride + offset + self.dim()];
            for ((pair, c), s) in v.chunks_exact_mut(2).zip(&cos).zip(&sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = b * c + a * s;
            }
        }
    }
}
