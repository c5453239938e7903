//! The launcher of `kernels/sampling.hip`: picks one token per row of device logits with
//! [`crate::reference::sample_token`]'s definition, so only the tokens (and a non-finite flag
//! per row) come back to the host instead of `rows × vocab` logits.

use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelSource, LaunchConfig, Stream, kernel_source,
};

use super::error::{GpuError, check_param};
use crate::reference::SamplingRule;

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/sampling.hip");

/// Threads per block (`SAMPLE_THREADS`): of `sample_rows` (one block per row) and of
/// `sample_scan` (one block per [`SCAN_SPAN`] logits of a row).
const THREADS: u32 = 512;
/// Logits per block of `sample_scan` (`SCAN_SPAN`: one pass of its 8 loads a thread).
const SCAN_SPAN: usize = THREADS as usize * 8;
/// u64 values of one `sample_scan` result (`SCAN_WORDS`).
const SCAN_WORDS: usize = 4;
/// `sample_scan`'s parts of a row go in grid.y, whose limit is 65535.
const MAX_SCAN_PARTS: usize = 65535;
/// f64 values per row request (`SAMPLE_REQ`).
pub const REQUEST_WIDTH: usize = 5;
/// i32 values per row result: the token (-1 for none) and the non-finite flag.
pub const RESULT_WIDTH: usize = 2;

/// What to do with one row of logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowPick {
    /// Only check the row for non-finite values.
    Skip,
    /// Pick a token by `rule` with the uniform number `u` in [0, 1) (unused when greedy).
    Sample {
        /// How to pick.
        rule: SamplingRule,
        /// The caller's uniform draw for this row and step.
        u: f64,
    },
}

/// The outcome of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSample {
    /// The picked token; `None` for a skipped row or one where no logit is a number.
    pub token: Option<u32>,
    /// The row holds a NaN or an infinity.
    pub non_finite: bool,
}

/// The sampling kernel compiled for one device.
#[derive(Debug)]
pub struct SamplingKernel {
    sample_scan: Function,
    sample_rows: Function,
}

impl SamplingKernel {
    /// Compiles (or loads from the kernel cache) the kernel for `device`.
    pub fn compile(device: &Device) -> Result<Self, GpuError> {
        if device.is_cpu() {
            return Err(GpuError::NotAGpu {
                device: device.id(),
            });
        }
        let defines = Defines::new()
            .set("SAMPLE_THREADS", THREADS)
            .set("SCAN_SPAN", SCAN_SPAN)
            .set("SCAN_WORDS", SCAN_WORDS);
        let module = device.compile(&SOURCE, &defines)?;
        Ok(Self {
            sample_scan: module.function("sample_scan")?,
            sample_rows: module.function("sample_rows")?,
        })
    }

    /// The u64 values of scan workspace that [`SamplingKernel::launch`] needs per row of
    /// `vocab` logits. (The first pass over a row, for the greedy pick, the non-finite flag and
    /// the candidates' range, is spread over many blocks: one block reading a whole row took
    /// ~56 µs on an H100, as long as ten MoE small kernels.)
    pub fn scan_len(vocab: usize) -> usize {
        vocab.div_ceil(SCAN_SPAN) * SCAN_WORDS
    }

    /// Picks a token from each of the first `picks.len()` rows of `logits` (`vocab` values a
    /// row) on `stream`, and waits for the result.
    pub fn sample(
        &self,
        stream: &Stream,
        logits: &DeviceBuffer<f32>,
        vocab: usize,
        picks: &[RowPick],
    ) -> Result<Vec<RowSample>, GpuError> {
        let requests = Self::encode_requests(picks, vocab)?;
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let device = stream.device();
        let requests = device.upload(&requests)?;
        let mut scans = device.alloc_zeroed::<u64>(picks.len() * Self::scan_len(vocab))?;
        let mut results = device.alloc_zeroed::<i32>(picks.len() * RESULT_WIDTH)?;
        self.launch(
            stream,
            logits,
            vocab,
            picks.len(),
            &requests,
            &mut scans,
            &mut results,
        )?;
        stream.synchronize()?;
        Ok(Self::decode_results(&results.to_vec()?))
    }

    /// Queues the picks of the first `rows` rows of `logits` (`vocab` values a row) on
    /// `stream`: `requests` holds [`Self::encode_requests`]'s values for them, `scans` is
    /// workspace of [`Self::scan_len`] values a row, and `results` gets [`RESULT_WIDTH`] values
    /// a row for [`Self::decode_results`]. Nothing is allocated, copied or waited for, so the
    /// launches can be captured in a graph (with buffers sized for the largest batch, filled
    /// before each replay).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        stream: &Stream,
        logits: &DeviceBuffer<f32>,
        vocab: usize,
        rows: usize,
        requests: &DeviceBuffer<f64>,
        scans: &mut DeviceBuffer<u64>,
        results: &mut DeviceBuffer<i32>,
    ) -> Result<(), GpuError> {
        let vocab_arg = vocab_arg(vocab)?;
        for (name, len, needed) in [
            ("logits", logits.len(), rows * vocab),
            ("requests", requests.len(), rows * REQUEST_WIDTH),
            ("scans", scans.len(), rows * Self::scan_len(vocab)),
            ("results", results.len(), rows * RESULT_WIDTH),
        ] {
            check_param(name, len, len >= needed, || {
                format!("buffer too short: {needed} elements needed")
            })?;
        }
        if rows == 0 {
            return Ok(());
        }
        let grid = u32::try_from(rows).map_err(|_| GpuError::Parameter {
            parameter: "rows",
            value: rows.to_string(),
            reason: "does not fit a 32-bit grid dimension".into(),
        })?;
        // The parts of a row go in grid.y, which holds 65535 (`vocab_arg` checked that).
        let parts = vocab.div_ceil(SCAN_SPAN) as u32;
        stream.launch(
            &self.sample_scan,
            LaunchConfig {
                grid: [grid, parts, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[logits, &vocab_arg, scans],
        )?;
        stream.launch(
            &self.sample_rows,
            LaunchConfig {
                grid: [grid, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[
                logits,
                &vocab_arg,
                requests,
                scans,
                &(parts as i32),
                results,
            ],
        )?;
        Ok(())
    }

    /// The requests of [`SamplingKernel::launch`] for `picks` over rows of `vocab` logits,
    /// [`REQUEST_WIDTH`] values a row; refuses a rule or draw out of range.
    pub fn encode_requests(picks: &[RowPick], vocab: usize) -> Result<Vec<f64>, GpuError> {
        vocab_arg(vocab)?;
        let mut requests = Vec::with_capacity(picks.len() * REQUEST_WIDTH);
        for pick in picks {
            requests.extend(encode(pick, vocab)?);
        }
        Ok(requests)
    }

    /// The outcome of each row from the first `rows × RESULT_WIDTH` values
    /// [`SamplingKernel::launch`] wrote.
    pub fn decode_results(results: &[i32]) -> Vec<RowSample> {
        results
            .chunks_exact(RESULT_WIDTH)
            .map(|r| RowSample {
                token: u32::try_from(r[0]).ok(),
                non_finite: r[1] != 0,
            })
            .collect()
    }
}

fn vocab_arg(vocab: usize) -> Result<i32, GpuError> {
    let arg = i32::try_from(vocab)
        .ok()
        .filter(|&v| v > 0 && vocab.div_ceil(SCAN_SPAN) <= MAX_SCAN_PARTS);
    check_param("vocab", vocab, arg.is_some(), || {
        format!(
            "must be positive and at most {}",
            MAX_SCAN_PARTS * SCAN_SPAN
        )
    })?;
    Ok(arg.expect("checked"))
}

/// One row's request as the kernel reads it: mode, 1/temperature (f32), top_k (at most the
/// vocabulary), top_p, u. Every value is exact in f64.
fn encode(pick: &RowPick, vocab: usize) -> Result<[f64; REQUEST_WIDTH], GpuError> {
    let RowPick::Sample { rule, u } = *pick else {
        return Ok([0.0; REQUEST_WIDTH]);
    };
    let t = rule.temperature;
    check_param("temperature", t, t.is_finite() && t >= 0.0, || {
        "must be finite and at least 0".into()
    })?;
    check_param(
        "top_p",
        rule.top_p,
        rule.top_p > 0.0 && rule.top_p <= 1.0,
        || "must be in (0, 1]".into(),
    )?;
    if rule.is_greedy() {
        return Ok([1.0, 0.0, 0.0, 1.0, 0.0]);
    }
    check_param("u", u, (0.0..1.0).contains(&u), || {
        "must be in [0, 1)".into()
    })?;
    // An overflowing 1/t is +inf: the kernel then keeps the maxima only, as the reference.
    Ok([
        2.0,
        f64::from(1.0 / t),
        rule.top_k.min(vocab) as f64,
        f64::from(rule.top_p),
        u,
    ])
}
