//! Text put in front of every kernel source so one HIP-dialect file compiles with hiprtc/hipcc
//! on AMD and with NVRTC on NVIDIA. Kernels include no headers themselves.
//!
//! Contract for kernel authors (both vendors):
//! - `WARP_SIZE` is defined by the runtime (64 on CDNA, 32 on NVIDIA/RDNA); never hard-code 32
//!   or 64, lane masks or shuffle widths. `__ballot` returns 64 bits on both vendors.
//! - Cross-lane ops use the HIP spellings (`__shfl`, `__shfl_xor`, `__shfl_down`, `__ballot`,
//!   `__any`, `__all`, `__lane_id`) over the whole wave.
//! - `mx_bf16_to_float` / `mx_float_to_bf16` convert raw bf16 bits (`unsigned short`) and work
//!   on every HIP version; on NVIDIA the native `__hip_bfloat16`, `__hip_fp8_e4m3` and
//!   `__hip_fp8_e5m2` are also mapped.
//! - A source marked `// dependent-launch` begins every kernel with `mx_wait_prior_kernels();`
//!   (see [`KernelSource`](crate::KernelSource)).
//! - Vendor-only builtins go behind `#ifdef __HIP_PLATFORM_AMD__` / `__HIP_PLATFORM_NVIDIA__`.

use crate::error::Vendor;

/// Prelude for NVRTC: CUDA spellings of the HIP device API.
const CUDA: &str = r#"
#define __HIP_PLATFORM_NVIDIA__ 1
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
typedef __nv_bfloat16 __hip_bfloat16;
typedef __nv_bfloat162 __hip_bfloat162;
typedef __nv_fp8_e4m3 __hip_fp8_e4m3;
typedef __nv_fp8_e5m2 __hip_fp8_e5m2;
#define hipThreadIdx_x threadIdx.x
#define hipThreadIdx_y threadIdx.y
#define hipThreadIdx_z threadIdx.z
#define hipBlockIdx_x blockIdx.x
#define hipBlockIdx_y blockIdx.y
#define hipBlockIdx_z blockIdx.z
#define hipBlockDim_x blockDim.x
#define hipBlockDim_y blockDim.y
#define hipBlockDim_z blockDim.z
#define hipGridDim_x gridDim.x
#define hipGridDim_y gridDim.y
#define hipGridDim_z gridDim.z
#define HIP_DYNAMIC_SHARED(type, var) extern __shared__ type var[];
#define __shfl(...) __shfl_sync(0xffffffffu, __VA_ARGS__)
#define __shfl_up(...) __shfl_up_sync(0xffffffffu, __VA_ARGS__)
#define __shfl_down(...) __shfl_down_sync(0xffffffffu, __VA_ARGS__)
#define __shfl_xor(...) __shfl_xor_sync(0xffffffffu, __VA_ARGS__)
#define __ballot(pred) ((unsigned long long)__ballot_sync(0xffffffffu, (pred)))
#define __any(pred) __any_sync(0xffffffffu, (pred))
#define __all(pred) __all_sync(0xffffffffu, (pred))
static __device__ __forceinline__ unsigned int __lane_id() {
    unsigned int lane;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(lane));
    return lane;
}
#define __builtin_nontemporal_load(ptr) __ldcs(ptr)
#define __builtin_nontemporal_store(value, ptr) __stcs((ptr), (value))
#define atomicAddNoRet(ptr, value) ((void)atomicAdd((ptr), (value)))
#define unsafeAtomicAdd(ptr, value) atomicAdd((ptr), (value))
// Programmatic dependent launch (sm_90+): hold the block until the kernels before it on the
// stream have completed and their writes are visible, then let the next kernel launch (its
// blocks start and wait in turn). Without a dependent launch both instructions do nothing.
static __device__ __forceinline__ void mx_wait_prior_kernels() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
"#;

/// Prelude for hiprtc and hipcc: hiprtc provides the device API itself; hipcc needs the header.
const HIP: &str = r#"
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
// HIP launches kernels one after another on a stream: nothing to wait for.
static __device__ __forceinline__ void mx_wait_prior_kernels() {}
"#;

/// Definitions shared by both vendors, after the vendor part.
const COMMON: &str = r#"
#ifndef WARP_SIZE
#error "WARP_SIZE must be defined by the runtime"
#endif
static __device__ __forceinline__ float mx_bf16_to_float(unsigned short bits) {
    return __uint_as_float(((unsigned int)bits) << 16);
}
static __device__ __forceinline__ unsigned short mx_float_to_bf16(float value) {
    unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((bits >> 16) | 0x40u);
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}
"#;

/// The full text handed to the compiler: prelude, then the kernel source. A `#line` directive
/// makes compiler messages point at the kernel file's own line numbers.
pub(crate) fn with_prelude(vendor: Vendor, source_name: &str, code: &str) -> String {
    let vendor_part = match vendor {
        Vendor::Cuda => CUDA,
        Vendor::Hip => HIP,
    };
    let file = source_name.replace(['"', '\\'], "_");
    format!("{vendor_part}{COMMON}\n#line 1 \"{file}\"\n{code}\n")
}
