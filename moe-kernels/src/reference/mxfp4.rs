//! MXFP4 linear layers: weights dequantized on the fly one row at a time, optionally with
//! the input activations fake-quantized per 32 first (W4A4, dynamic MXFP4).

use super::linear::{Matrix, dot};
use rayon::prelude::*;
use thiserror::Error;

// Transitional: replaced by quant-quark's codec when that branch lands.
mod codec {
    /// How the shared block exponent is chosen from the block's absolute maximum.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum ScaleRule {
        /// OCP MX v1.0: `floor(log2(amax)) - 2`.
        Ocp,
        /// Quark `scale_calculation_mode: "even"`: amax's mantissa rounded to one bit first.
        Even,
    }

    /// E2M1 code → value.
    pub const E2M1: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];

    /// E8M0 → `2^(s-127)`; `None` for the NaN code 255.
    pub fn e8m0_to_f32(s: u8) -> Option<f32> {
        match s {
            255 => None,
            0 => Some(f32::from_bits(0x0040_0000)),
            s => Some(f32::from_bits((s as u32) << 23)),
        }
    }

    /// Quantize one block of up to 32 values to MXFP4 and decode it back, in place.
    pub fn fake_quantize_block(block: &mut [f32], rule: ScaleRule) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            return;
        }
        let amax = match rule {
            ScaleRule::Ocp => amax,
            ScaleRule::Even => {
                let bits = amax.to_bits();
                // Round the mantissa to one bit: add half of bit 21's weight, truncate below.
                f32::from_bits((bits + (1 << 21)) & !((1 << 22) - 1))
            }
        };
        let exp = (amax.log2().floor() as i32 - 2).clamp(-127, 127);
        let scale = 2f32.powi(exp);
        for v in block.iter_mut() {
            let q = (*v / scale).abs().min(6.0);
            let grid = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
            let mut best = 0usize;
            for (i, g) in grid.iter().enumerate() {
                let d = (q - g).abs();
                let bd = (q - grid[best]).abs();
                if d < bd || (d == bd && i % 2 == 0) {
                    best = i;
                }
            }
            *v = grid[best].copysign(*v) * scale;
        }
    }
}

pub use codec::ScaleRule;

/// Elements per MXFP4 block (one E8M0 scale).
pub const BLOCK: usize = 32;

/// How a layer's input activations are quantized at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationQuant {
    /// Activations stay f32 (weight-only layer, W4A16).
    None,
    /// Dynamic MXFP4 per 32 along the input features with this scale rule (W4A4).
    Mxfp4(ScaleRule),
}

/// Why packed MXFP4 data cannot form a weight matrix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Mxfp4Error {
    /// The input dimension is not a multiple of the block size.
    #[error("MXFP4 weight with {cols} input features: not a positive multiple of {BLOCK}")]
    Cols {
        /// Input features.
        cols: usize,
    },
    /// A buffer has the wrong length.
    #[error("MXFP4 {what}: expected {expected} bytes, found {found}")]
    Length {
        /// `"packed codes"` or `"scales"`.
        what: &'static str,
        /// `rows × cols / 2` or `rows × cols / 32`.
        expected: usize,
        /// The buffer's length.
        found: usize,
    },
    /// A scale is the E8M0 NaN code (255).
    #[error("MXFP4 scale at row {row}, block {block} is NaN (E8M0 255)")]
    NanScale {
        /// Weight row.
        row: usize,
        /// Block index within the row.
        block: usize,
    },
}

/// An MXFP4 weight `[rows, cols]`: `packed` `[rows, cols/2]` (two E2M1 codes a byte, low nibble
/// = even element) and `scales` `[rows, cols/32]` (E8M0), as Quark stores `W.weight` and
/// `W.weight_scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mxfp4Matrix {
    rows: usize,
    cols: usize,
    packed: Vec<u8>,
    scales: Vec<u8>,
}

impl Mxfp4Matrix {
    /// Check the buffers against `[rows, cols]` and reject NaN scales.
    pub fn new(
        rows: usize,
        cols: usize,
        packed: Vec<u8>,
        scales: Vec<u8>,
    ) -> Result<Self, Mxfp4Error> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(Mxfp4Error::Cols { cols });
        }
        let check = |what, expected: usize, found: usize| {
            if expected == found {
                Ok(())
            } else {
                Err(Mxfp4Error::Length {
                    what,
                    expected,
                    found,
                })
            }
        };
        check("packed codes", rows * cols / 2, packed.len())?;
        check("scales", rows * cols / BLOCK, scales.len())?;
        if let Some(i) = scales.iter().position(|&s| s == 255) {
            let per_row = cols / BLOCK;
            return Err(Mxfp4Error::NanScale {
                row: i / per_row,
                block: i % per_row,
            });
        }
        Ok(Self {
            rows,
            cols,
            packed,
            scales,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed codes `[rows, cols/2]`.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The E8M0 scales `[rows, cols/32]`.
    pub fn scales(&self) -> &[u8] {
        &self.scales
    }

    /// Decode row `r` into `out` (`cols` values); exact, every MXFP4 value is an f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let packed = &self.packed[r * self.cols / 2..(r + 1) * self.cols / 2];
        let scales = &self.scales[r * self.cols / BLOCK..(r + 1) * self.cols / BLOCK];
        for ((block_out, block_in), &s) in out
            .chunks_exact_mut(BLOCK)
            .zip(packed.chunks_exact(BLOCK / 2))
            .zip(scales)
        {
            // NaN scales were rejected in `new`.
            let scale = codec::e8m0_to_f32(s).unwrap_or(f32::NAN);
            for (pair, &byte) in block_out.chunks_exact_mut(2).zip(block_in) {
                pair[0] = codec::E2M1[(byte & 0x0f) as usize] * scale;
                pair[1] = codec::E2M1[(byte >> 4) as usize] * scale;
            }
        }
    }

    /// The whole weight as an f32 matrix.
    pub fn dequantize(&self) -> Matrix {
        let mut data = vec![0f32; self.rows * self.cols];
        for (r, row) in data.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(r, row);
        }
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data,
        }
    }
}

/// Fake-quantize `x` (rows of `cols` values, `cols` a multiple of 32) to MXFP4 per 32 with
/// `rule` and decode it back: what a W4A4 layer's matmul sees of its input.
pub fn fake_quantize_rows(x: &[f32], cols: usize, rule: ScaleRule) -> Vec<f32> {
    assert_eq!(
        cols % BLOCK,
        0,
        "fake_quantize_rows: cols not a multiple of 32"
    );
    assert_eq!(x.len() % cols.max(1), 0, "fake_quantize_rows: ragged rows");
    let mut q = x.to_vec();
    for block in q.chunks_exact_mut(BLOCK) {
        codec::fake_quantize_block(block, rule);
    }
    q
}

/// `out[m, rows] = act(x)[m, cols] · dequantize(w)ᵀ`, where `act` fake-quantizes each row per
/// 32 for W4A4 layers and is the identity otherwise.
///
/// Each weight row is dequantized once per call into a scratch row and dotted with every
/// input row, so the result equals [`super::matmul`] on the dequantized weight exactly.
pub fn mxfp4_linear(x: &[f32], m: usize, w: &Mxfp4Matrix, act: ActivationQuant, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "mxfp4_linear: x is not [m, cols]");
    assert_eq!(out.len(), m * n, "mxfp4_linear: out is not [m, rows]");
    if m == 0 || n == 0 {
        return;
    }
    let quantized;
    let x = match act {
        ActivationQuant::None => x,
        ActivationQuant::Mxfp4(rule) => {
            quantized = fake_quantize_rows(x, k, rule);
            &quantized
        }
    };
    const CHUNK: usize = 16;
    // Column-major partial results per chunk of weight rows: [row j][input i].
    let columns: Vec<Vec<f32>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let rows = c * CHUNK..((c + 1) * CHUNK).min(n);
            let mut scratch = vec![0f32; k];
            let mut part = Vec::with_capacity(rows.len() * m);
            for r in rows {
                w.dequantize_row(r, &mut scratch);
                part.extend(x.chunks_exact(k).map(|x_row| dot(x_row, &scratch)));
            }
            part
        })
        .collect();
    for (c, part) in columns.iter().enumerate() {
        for (dj, col) in part.chunks_exact(m).enumerate() {
            let j = c * CHUNK + dj;
            for (i, v) in col.iter().enumerate() {
                out[i * n + j] = *v;
            }
        }
    }
}
