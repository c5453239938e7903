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

pub use bandwidth::{copy_bandwidth, median};
pub use error::GpuError;
pub use moe::{
    ExpertPath, MoeIo, MoeKernels, MoeShape, MoeWeights, MoeWorkspace, QuantizedActivations,
    Routing, SharedExpertMode, TENSOR_CORE_MIN_TOKENS,
};
pub use sampling::{REQUEST_WIDTH, RESULT_WIDTH, RowPick, RowSample, SamplingKernel};
pub use synthetic::Synthetic;

/// Compute capability of an NVIDIA device from its architecture (`sm_90a` -> 90); None for
/// anything else (AMD `gfx…`): the tensor-core kernels that use NVIDIA-only instructions check
/// it before they compile.
pub(crate) fn nvidia_capability(arch: &str) -> Option<u32> {
    arch.strip_prefix("sm_")?
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::nvidia_capability;

    #[test]
    fn capability_from_arch() {
        assert_eq!(nvidia_capability("sm_90"), Some(90));
        assert_eq!(nvidia_capability("sm_90a"), Some(90));
        assert_eq!(nvidia_capability("sm_89"), Some(89));
        assert_eq!(nvidia_capability("sm_100a"), Some(100));
        assert_eq!(nvidia_capability("gfx942"), None);
        assert_eq!(nvidia_capability("x86_64"), None);
    }
}
