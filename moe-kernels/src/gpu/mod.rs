//! Typed launchers for the HIP kernels in `moe-kernels/kernels/`, on any GPU `runtime-rocm`
//! opens (AMD through hiprtc, NVIDIA through NVRTC).
//!
//! Every launcher mirrors the CPU reference op it is checked against
//! ([`crate::reference`]): same parameters, same meaning; only the data lives on the device.

mod bandwidth;
mod error;
pub mod model_ops;
mod moe;
mod moe_tc;
mod sampling;
mod synthetic;

pub use bandwidth::copy_bandwidth;
pub use error::GpuError;
pub use moe::{
    ExpertPath, MoeIo, MoeKernels, MoeShape, MoeWeights, MoeWorkspace, QuantizedActivations,
    Routing, SharedExpertMode, TENSOR_CORE_MIN_TOKENS,
};
pub use sampling::{REQUEST_WIDTH, RESULT_WIDTH, RowPick, RowSample, SamplingKernel};
pub use synthetic::Synthetic;
