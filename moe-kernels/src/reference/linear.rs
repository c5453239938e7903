//! Linear layers: the f32 matmul `x · Wᵀ` and the dispatch over weight formats.

use super::mxfp4::{ActivationQuant, Mxfp4Matrix, mxfp4_linear};
use rayon::prelude::*;
use std::ops::Range;

/// Below this many multiply-adds a matmul runs on the calling thread: rayon's fork/join costs
/// more than it saves on the tiny model's smallest projections.
const PARALLEL_MIN_WORK: usize = 1 << 15;
/// Output columns (weight rows) per parallel task.
const COLUMN_CHUNK: usize = 16;

/// A row-major f32 matrix `[rows, cols]`; as a linear layer's weight, `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows (output features of a linear layer).
    pub rows: usize,
    /// Number of columns (input features of a linear layer).
    pub cols: usize,
    /// `rows × cols` values, row after row.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix from its row-major values; `None` when `data` does not hold `rows × cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Option<Self> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(Self { rows, cols, data })
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `range`.
    pub fn slice_rows(&self, range: Range<usize>) -> Self {
        Self {
            rows: range.len(),
            cols: self.cols,
            data: self.data[range.start * self.cols..range.end * self.cols].to_vec(),
        }
    }

    /// Columns `range` of every row.
    pub fn slice_cols(&self, range: Range<usize>) -> Self {
        let data = self
            .data
            .chunks_exact(self.cols)
            .flat_map(|row| &row[range.clone()])
            .copied()
            .collect();
        Self {
            rows: self.rows,
            cols: range.len(),
            data,
        }
    }
}

/// The weight of one linear layer `y = x · Wᵀ` (no bias: DeepSeek-V3 has none).
#[derive(Debug, Clone, PartialEq)]
pub enum Linear {
    /// An unquantized weight `[out, in]` (bf16 or f32 in the checkpoint, held as f32).
    Dense(Matrix),
    /// An MXFP4 weight, with how its input activations are quantized at run time.
    Mxfp4 {
        /// The packed E2M1 codes and E8M0 scales, `[out, in]` logically.
        weight: Mxfp4Matrix,
        /// The layer's input spec: dynamic MXFP4 per 32 (W4A4) with a scale rule, or none.
        activations: ActivationQuant,
    },
}

impl Linear {
    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense(m) => m.rows,
            Linear::Mxfp4 { weight, .. } => weight.rows(),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match self {
            Linear::Dense(m) => m.cols,
            Linear::Mxfp4 { weight, .. } => weight.cols(),
        }
    }

    /// Short description of the format, for error messages and reports.
    pub fn format_name(&self) -> &'static str {
        match self {
            Linear::Dense(_) => "dense f32",
            Linear::Mxfp4 {
                activations: ActivationQuant::None,
                ..
            } => "MXFP4 weight-only",
            Linear::Mxfp4 { .. } => "MXFP4 W4A4",
        }
    }

    /// Output features `range` (weight rows), same format.
    pub fn slice_out(&self, range: Range<usize>) -> Self {
        match self {
            Linear::Dense(m) => Linear::Dense(m.slice_rows(range)),
            Linear::Mxfp4 {
                weight,
                activations,
            } => Linear::Mxfp4 {
                weight: weight.slice_rows(range),
                activations: *activations,
            },
        }
    }

    /// Input features `range` (weight columns), same format; `None` for an MXFP4 weight when
    /// the range does not fall on 32-element block boundaries.
    pub fn slice_in(&self, range: Range<usize>) -> Option<Self> {
        match self {
            Linear::Dense(m) => Some(Linear::Dense(m.slice_cols(range))),
            Linear::Mxfp4 {
                weight,
                activations,
            } => Some(Linear::Mxfp4 {
                weight: weight.slice_cols(range)?,
                activations: *activations,
            }),
        }
    }

    /// The weight as a dense f32 matrix (MXFP4 dequantized).
    pub fn to_dense(&self) -> Matrix {
        match self {
            Linear::Dense(m) => m.clone(),
            Linear::Mxfp4 { weight, .. } => weight.dequantize(),
        }
    }
}

/// Whether dynamic activation quantization (W4A4 layers) is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationMode {
    /// As each layer's input spec says (the checkpoint's numerics).
    #[default]
    Quantized,
    /// Never: W4A4 layers run as weight-only (activations stay f32).
    Unquantized,
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` in f32.
///
/// Every output element is the same f32 dot product of `x_i` and `w_j` (eight interleaved
/// partial sums), whatever `m` and the thread count; rayon splits rows when there are at least
/// as many rows as threads, else output columns.
pub fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul: x is not [m, k]");
    assert_eq!(w.len(), n * k, "matmul: w is not [n, k]");
    assert_eq!(out.len(), m * n, "matmul: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    if m * n * k < PARALLEL_MIN_WORK {
        for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            dot_rows(x_row, w, out_row);
        }
    } else if m >= rayon::current_num_threads() {
        out.par_chunks_exact_mut(n)
            .zip(x.par_chunks_exact(k))
            .for_each(|(out_row, x_row)| dot_rows(x_row, w, out_row));
    } else {
        for (x_row, out_row) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            out_row
                .par_chunks_mut(COLUMN_CHUNK)
                .zip(w.par_chunks(COLUMN_CHUNK * k))
                .for_each(|(o, w_rows)| dot_rows(x_row, w_rows, o));
        }
    }
}

/// `out[j] = dot(x_row, w_rows[j])` for each weight row (`w_rows` holds `out.len()` rows).
fn dot_rows(x_row: &[f32], w_rows: &[f32], out: &mut [f32]) {
    for (o, w_row) in out.iter_mut().zip(w_rows.chunks_exact(x_row.len())) {
        *o = dot(x_row, w_row);
    }
}

/// Apply a linear layer to `m` rows: `out[m, out_features] = x[m, in_features] · Wᵀ`.
pub fn linear(x: &[f32], m: usize, w: &Linear, mode: ActivationMode, out: &mut [f32]) {
    match w {
        Linear::Dense(d) => matmul(x, &d.data, m, d.cols, d.rows, out),
        Linear::Mxfp4 {
            weight,
            activations,
        } => {
            let act = match mode {
                ActivationMode::Quantized => *activations,
                ActivationMode::Unquantized => ActivationQuant::None,
            };
            mxfp4_linear(x, m, weight, act, out);
        }
    }
}

/// The f32 dot product every reference matmul uses: eight interleaved partial sums (lane
/// `i` takes elements `i, i+8, …`), then the tail, then the lanes added pairwise.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[i] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}
