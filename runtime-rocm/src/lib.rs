//! Devices (CPU, HIP on AMD, HIP-on-CUDA on NVIDIA), memory, streams, events and run-time
//! kernel compilation with an on-disk cache. All FFI of the project lives here; every vendor
//! library is loaded at run time, so the crate builds and runs with no GPU stack installed.
//!
//! # Devices
//! [`enumerate`] lists every device (GPUs first, the CPU last) and says which vendor stacks
//! were unusable and why, without failing. [`Device::open`] takes a [`DeviceSpec`] parsed from
//! `auto`, `cpu`, `rocm:N` or `cuda:N`; `auto` falls back to the CPU. [`DeviceInfo`] gives the
//! name, architecture (`gfx942`, `sm_90`), memory and wave size.
//! GPU tests take their devices from [`gpus`] or [`first_gpu`], which print
//! `skipped: no GPU (<test>)` where there is none.
//!
//! # Memory, streams, events
//! [`DeviceBuffer<T>`] owns device memory (a host vector on the CPU device) and frees it on
//! drop; copies host↔device and device↔device, synchronous or queued on a [`Stream`];
//! `memset`. [`Stream::record_event`] gives [`Event`]s, and [`Event::elapsed_ms`] the device
//! time between two of them. [`Stream::capture`] records the work a closure queues into a
//! [`Graph`] that replays it with one launch.
//!
//! # Kernels
//! Kernel sources are HIP C++ files (`*.hip`) following the [`KernelSource`] convention:
//! `extern "C" __global__` entry points, no `#include`, the wave size taken from the
//! `WARP_SIZE` define, defaults for every other define. [`Device::compile`] prepends a prelude
//! (on NVIDIA it maps HIP spellings to CUDA ones; see the `prelude` module source), compiles with
//! hiprtc (AMD) or NVRTC (NVIDIA), caches the code object on disk ([`KernelCache`]: keyed by
//! arch, compiler version, source and defines; `MXSERVE_KERNEL_CACHE` overrides the
//! directory) and loads it. [`Module::function`] looks a kernel up by name and
//! [`Stream::launch`] runs it with a [`LaunchConfig`] and typed arguments ([`KernelArg`]).
//! [`check`] compiles a source for a [`Target`] with no device present (NVRTC for `sm_90a`,
//! hipcc for `gfx90a`); `cargo xtask check-kernels` runs it over every `.hip` file.
//!
//! ```no_run
//! use runtime_rocm::{Defines, Device, DeviceSpec, LaunchConfig, kernel_source};
//!
//! # fn main() -> Result<(), runtime_rocm::Error> {
//! let device = Device::open(DeviceSpec::Auto)?;
//! if device.is_cpu() {
//!     return Ok(()); // callers run their CPU implementation instead
//! }
//! let x = device.upload(&[1.0f32, 2.0, 3.0])?;
//! let mut y = device.upload(&[10.0f32, 20.0, 30.0])?;
//! let module = device.compile(&kernel_source!("../kernels/axpy.hip"), &Defines::new())?;
//! let axpy = module.function("axpy_f32")?;
//! let stream = device.create_stream()?;
//! stream.launch(&axpy, LaunchConfig::linear(3, 256), &[&y, &x, &2.0f32, &3u32])?;
//! stream.synchronize()?;
//! assert_eq!(y.to_vec()?, vec![12.0, 24.0, 36.0]);
//! # Ok(()) }
//! ```
//!
//! # Environment
//! - `MXSERVE_KERNEL_CACHE`: kernel cache directory (default `$XDG_CACHE_HOME/mxserve/kernels`
//!   or `~/.cache/mxserve/kernels`).
//! - `MXSERVE_NVRTC`: a `libnvrtc.so.N` outside the loader path (PyPI's `nvidia-cuda-nvrtc`).
//! - `MXSERVE_CUDA_INCLUDE`: the CUDA headers for NVRTC (default `$CUDA_PATH/include`, then
//!   `/usr/local/cuda/include`).
//! - `MXSERVE_HIPCC`: the hipcc used by [`check`] (default: `hipcc` on `PATH`).
//! - `ROCM_PATH` / `HIP_PATH`: searched first for `libamdhip64` and `libhiprtc`.
//!
//! `.ci/install-kernel-compilers` installs NVRTC, the CUDA headers and Debian's hipcc and
//! writes `target/kernel-compilers/env.sh` exporting the three `MXSERVE_*` compiler variables.
//!
//! # Device workflow (the H100 machine)
//! `cargo xtask device-check` builds `examples/runtime_check.rs` and the `runtime_gpu` test
//! binary in release mode and stages them in `target/device-stage/`; the device tool then runs,
//! with `carry: ["target/device-stage"]`:
//! `export MXSERVE_KERNEL_CACHE=/tmp/kc; target/device-stage/runtime_check &&
//! target/device-stage/runtime_check && target/device-stage/runtime_gpu --test-threads=1`
//! (the second `runtime_check` shows the disk-cache hits).
//!
//! # Backends
//! NVIDIA: `cudarc` with dynamic loading (driver + NVRTC). AMD: a thin `libloading` layer over
//! `libamdhip64` (ROCm 5, 6 or 7) and hiprtc; see the `hip` module for why not `hip-sys` or
//! `cubecl-hip-sys`.

mod buffer;
mod cpu;
mod cuda;
mod device;
mod error;
mod gpu;
mod graph;
mod hip;
mod kernel;
mod spec;
mod stream;

pub use buffer::DeviceBuffer;
pub use device::{
    Device, DeviceId, DeviceInfo, Enumeration, Unavailable, enumerate, first_gpu, gpus,
};
pub use error::{Error, Result, Vendor};
pub use graph::Graph;
pub use kernel::cache::{CACHE_DIR_ENV, KernelCache};
pub use kernel::compile::{
    CUDA_INCLUDE_ENV, CheckOutput, CheckResult, HIPCC_ENV, Target, Toolchain, check, check_tree,
    cuda_include_dir, find_kernel_files,
};
pub use kernel::launch::{ArgValue, Function, KernelArg, LaunchConfig, Module};
pub use kernel::nvrtc::NVRTC_ENV;
pub use kernel::resources::{KernelResources, parse_ptxas_log};
pub use kernel::source::{Defines, KernelSource, RESERVED_DEFINES};
pub use spec::{DeviceSpec, SpecError};
pub use stream::{Event, Stream};
