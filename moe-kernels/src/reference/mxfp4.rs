//! MXFP4 linear layers: weights dequantized on the fly one row at a time, optionally with
//! the input activations fake-quantized per 32 first (W4A4, dynamic MXFP4).

use super::linear::{Matrix, dot};
use rayon::prelude::*;
use thiserror::Error;

pub use quant_quark::ScaleRule;
use quant_quark::mxfp4::{self as codec, BLOCK};

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
        let packed = &self.packed[r * self.cols / 2..(r + 1) * self.cols / 2];
        let scales = &self.scales[r * self.cols / BLOCK..(r + 1) * self.cols / BLOCK];
        codec::dequantize_f32(packed, scales, out)
            .expect("lengths and scales were checked in Mxfp4Matrix::new");
    }

    /// Rows `range` (e.g. one shared-expert slot of `gate_proj`).
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Self {
        assert!(
            range.end <= self.rows,
            "slice_rows: range past the last row"
        );
        let (pb, sb) = (self.cols / 2, self.cols / BLOCK);
        Self {
            rows: range.len(),
            cols: self.cols,
            packed: self.packed[range.start * pb..range.end * pb].to_vec(),
            scales: self.scales[range.start * sb..range.end * sb].to_vec(),
        }
    }

    /// Columns `range` of every row (e.g. one shared-expert slot of `down_proj`); `None`
    /// unless both ends fall on a 32-element block boundary and the range is not empty.
    pub fn slice_cols(&self, range: std::ops::Range<usize>) -> Option<Self> {
        let aligned = range.start.is_multiple_of(BLOCK) && range.end.is_multiple_of(BLOCK);
        if !aligned || range.is_empty() || range.end > self.cols {
            return None;
        }
        let (pb, sb) = (self.cols / 2, self.cols / BLOCK);
        let mut packed = Vec::with_capacity(self.rows * range.len() / 2);
        let mut scales = Vec::with_capacity(self.rows * range.len() / BLOCK);
        for r in 0..self.rows {
            packed
                .extend_from_slice(&self.packed[r * pb + range.start / 2..r * pb + range.end / 2]);
            scales.extend_from_slice(
                &self.scales[r * sb + range.start / BLOCK..r * sb + range.end / BLOCK],
            );
        }
        Some(Self {
            rows: self.rows,
            cols: range.len(),
            packed,
            scales,
        })
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
///
/// A block holding a NaN or infinity has no MXFP4 encoding; it becomes all NaN, so the
/// failure shows in the output (the forward pass reports non-finite logits) instead of
/// being clipped away.
pub fn fake_quantize_rows(x: &[f32], cols: usize, rule: ScaleRule) -> Vec<f32> {
    assert!(
        cols > 0 && cols.is_multiple_of(BLOCK),
        "fake_quantize_rows: cols not a multiple of 32"
    );
    assert!(
        x.len().is_multiple_of(cols),
        "fake_quantize_rows: ragged rows"
    );
    let mut q = x.to_vec();
    for block in q.chunks_exact_mut(BLOCK) {
        if codec::fake_quantize(block, rule).is_err() {
            block.fill(f32::NAN);
        }
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
