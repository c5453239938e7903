//! Errors of the GPU launchers.

use runtime_rocm::DeviceId;

/// Why a GPU op could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The runtime failed (allocation, compilation, launch).
    #[error(transparent)]
    Runtime(#[from] runtime_rocm::Error),
    /// A buffer does not have the length the shape requires.
    #[error("{buffer}: expected {expected} elements for {shape}, found {found}")]
    Length {
        /// Which argument.
        buffer: &'static str,
        /// What the shape requires.
        expected: usize,
        /// The buffer's length.
        found: usize,
        /// The shape, in words.
        shape: String,
    },
    /// A parameter is outside what the kernels support.
    #[error("{parameter} = {value}: {reason}")]
    Parameter {
        /// Which parameter.
        parameter: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// The op needs a GPU and was given the CPU device (use the CPU reference there).
    #[error("GPU kernels cannot run on {device}; use moe_kernels::reference on the CPU")]
    NotAGpu {
        /// The device given.
        device: DeviceId,
    },
}

pub(crate) fn check_len(
    buffer: &'static str,
    expected: usize,
    found: usize,
    shape: impl FnOnce() -> String,
) -> Result<(), GpuError> {
    if expected == found {
        Ok(())
    } else {
        Err(GpuError::Length {
            buffer,
            expected,
            found,
            shape: shape(),
        })
    }
}

pub(crate) fn check_param(
    parameter: &'static str,
    value: impl std::fmt::Display,
    ok: bool,
    reason: impl FnOnce() -> String,
) -> Result<(), GpuError> {
    if ok {
        Ok(())
    } else {
        Err(GpuError::Parameter {
            parameter,
            value: value.to_string(),
            reason: reason(),
        })
    }
}
