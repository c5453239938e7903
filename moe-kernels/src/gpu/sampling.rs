//! The launcher of `kernels/sampling.hip`: picks one token per row of device logits with
//! [`crate::reference::sample_token`]'s definition, so only the tokens (and a non-finite flag
//! per row) come back to the host instead of `rows × vocab` logits.

use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelSource, LaunchConfig, Stream, kernel_source,
};

use super::error::{GpuError, check_param};
use crate::reference::SamplingRule;

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/sampling.hip");

/// Threads per block (`SAMPLE_THREADS`); one block per row.
const THREADS: u32 = 512;
/// f64 values per row request (`SAMPLE_REQ`).
const REQUEST_WIDTH: usize = 5;

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
        let module = device.compile(&SOURCE, &Defines::new().set("SAMPLE_THREADS", THREADS))?;
        Ok(Self {
            sample_rows: module.function("sample_rows")?,
        })
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
        let vocab_arg = i32::try_from(vocab).ok().filter(|&v| v > 0);
        check_param("vocab", vocab, vocab_arg.is_some(), || {
            "must be positive and fit a 32-bit kernel argument".into()
        })?;
        let needed = picks.len() * vocab;
        check_param("logits", logits.len(), logits.len() >= needed, || {
            format!("buffer too short: {needed} elements needed")
        })?;
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = u32::try_from(picks.len()).map_err(|_| GpuError::Parameter {
            parameter: "rows",
            value: picks.len().to_string(),
            reason: "does not fit a 32-bit grid dimension".into(),
        })?;
        let mut requests = Vec::with_capacity(picks.len() * REQUEST_WIDTH);
        for pick in picks {
            requests.extend(encode(pick, vocab)?);
        }
        let device = stream.device();
        let requests = device.upload(&requests)?;
        let mut results = device.alloc_zeroed::<i32>(picks.len() * 2)?;
        stream.launch(
            &self.sample_rows,
            LaunchConfig {
                grid: [rows, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[
                logits,
                &vocab_arg.expect("checked"),
                &requests,
                &mut results,
            ],
        )?;
        stream.synchronize()?;
        let results = results.to_vec()?;
        Ok(results
            .chunks_exact(2)
            .map(|r| RowSample {
                token: u32::try_from(r[0]).ok(),
                non_finite: r[1] != 0,
            })
            .collect())
    }
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
