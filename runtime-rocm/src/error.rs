//! The crate's error type. Every variant names the operation (and the kernel where there is
//! one) and, for vendor failures, carries the vendor's own error string.

use std::path::PathBuf;

use crate::device::DeviceId;
use crate::spec::SpecError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which vendor stack reported a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// NVIDIA: the CUDA driver API or NVRTC.
    Cuda,
    /// AMD: the HIP runtime, hiprtc or hipcc.
    Hip,
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vendor::Cuda => "CUDA",
            Vendor::Hip => "HIP",
        })
    }
}

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device string such as `cuda:0` could not be parsed.
    #[error(transparent)]
    Spec(#[from] SpecError),

    /// The requested device or vendor stack is not present on this machine.
    #[error("device {requested} is not available: {reason}")]
    NotAvailable {
        /// What was asked for (`cuda:1`, `rocm:0`, ...).
        requested: String,
        /// Why it is not there (library missing, no device, index out of range).
        reason: String,
    },

    /// A vendor API call failed.
    #[error("{vendor} {operation} failed on {device}: {message} (code {code})")]
    Driver {
        /// The stack that failed.
        vendor: Vendor,
        /// The operation, with the kernel name where a kernel was involved.
        operation: String,
        /// The device the call was made for.
        device: DeviceId,
        /// The vendor's numeric error code.
        code: i64,
        /// The vendor's error string.
        message: String,
    },

    /// Run-time compilation of a kernel source failed; `log` is the compiler's output.
    #[error("compiling kernel source {source_name} for {arch} with {compiler} failed:\n{log}")]
    Compile {
        /// Name of the kernel source (usually its file name).
        source_name: String,
        /// Target architecture (`sm_90a`, `gfx942:sramecc+:xnack-`, ...).
        arch: String,
        /// Compiler and version (`NVRTC 13.0`, `hiprtc 6.2`, `hipcc`).
        compiler: String,
        /// The compiler log (errors and warnings).
        log: String,
    },

    /// A kernel source breaks a rule of the source convention (see
    /// [`KernelSource`](crate::KernelSource)).
    #[error("kernel source {source_name}: {reason}")]
    InvalidSource {
        /// Name of the kernel source.
        source_name: String,
        /// The rule broken, and where.
        reason: String,
    },

    /// A kernel compiler needed for a check is not installed or not configured.
    #[error("{compiler} is not available: {reason}")]
    CompilerMissing {
        /// The compiler that was looked for.
        compiler: String,
        /// Where it was looked for and what to set.
        reason: String,
    },

    /// A define passed to the compiler is not a valid preprocessor name or value.
    #[error("invalid kernel define {name:?}={value:?}: {reason}")]
    InvalidDefine {
        /// The define's name.
        name: String,
        /// The define's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Host and device lengths of a copy do not agree.
    #[error("{operation}: length mismatch, expected {expected} elements, found {found}")]
    LengthMismatch {
        /// The copy that was attempted.
        operation: &'static str,
        /// The destination's length.
        expected: usize,
        /// The source's length.
        found: usize,
    },

    /// A partial copy is longer than the buffer it reads or writes.
    #[error("{operation}: {found} elements do not fit a buffer of {capacity}")]
    DoesNotFit {
        /// The copy that was attempted.
        operation: &'static str,
        /// The buffer's length.
        capacity: usize,
        /// The host slice's length.
        found: usize,
    },

    /// Objects from two different devices were combined.
    #[error("{operation}: expected an object on {expected}, found one on {found}")]
    WrongDevice {
        /// The operation that was attempted.
        operation: String,
        /// The device the operation runs on.
        expected: DeviceId,
        /// The device the argument belongs to.
        found: DeviceId,
    },

    /// A launch configuration that no device accepts (zero-sized grid or block).
    #[error("launch of {kernel}: invalid configuration: {reason}")]
    InvalidLaunch {
        /// The kernel being launched.
        kernel: String,
        /// What is wrong.
        reason: String,
    },

    /// The operation has no meaning on this device (e.g. compiling a kernel for the CPU).
    #[error("{operation} is not supported on {device}")]
    Unsupported {
        /// What was attempted.
        operation: String,
        /// The device it was attempted on.
        device: DeviceId,
    },

    /// A file-system operation of the kernel cache or the compiler driver failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
