//! Run-time loaded HIP runtime and hiprtc entry points.
//!
//! Only functions whose C signatures have been stable from ROCm 5 through 7 are bound, and no
//! struct whose layout changed between them is read field by field (see `HipGpu::arch_name`).
//! ROCm 6+ ships hiprtc as its own library; ROCm 5 exports it from libamdhip64.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::PathBuf;

use libloading::Library;

pub(crate) type HipError = c_int;
pub(crate) type HiprtcResult = c_int;
pub(crate) type HiprtcProgram = *mut c_void;

pub(crate) const HIP_SUCCESS: HipError = 0;
pub(crate) const HIP_ERROR_NO_DEVICE: HipError = 100;
pub(crate) const HIPRTC_SUCCESS: HiprtcResult = 0;
pub(crate) const HIPRTC_ERROR_COMPILATION: HiprtcResult = 6;
/// `hipStreamCaptureModeThreadLocal`, the same value in HIP 5.x through 7.x (and CUDA).
pub(crate) const STREAM_CAPTURE_MODE_THREAD_LOCAL: c_int = 1;
/// `hipDeviceAttributeMultiprocessorCount`, the same value in HIP 5.x through 7.x.
pub(crate) const ATTR_MULTIPROCESSOR_COUNT: c_int = 63;
/// `hipDeviceAttributeMaxSharedMemoryPerBlock`, the same value in HIP 5.x through 7.x.
pub(crate) const ATTR_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 74;
/// `hipDeviceAttributeWarpSize`, the same value in HIP 5.x through 7.x.
pub(crate) const ATTR_WARP_SIZE: c_int = 87;

macro_rules! hip_api {
    ($table:ident { $($name:ident : fn($($arg:ty),*) -> $ret:ty;)* }) => {
        #[allow(non_snake_case)]
        pub(crate) struct $table {
            $(pub(crate) $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl $table {
            /// Resolves every symbol; fails naming the first one missing.
            unsafe fn resolve(lib: &Library) -> Result<Self, String> {
                Ok(Self {
                    $($name: {
                        // SAFETY: the declared signature matches HIP's C API.
                        let symbol = unsafe {
                            lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        };
                        *symbol.map_err(|e| format!("symbol {}: {e}", stringify!($name)))?
                    },)*
                })
            }
        }
    };
}

hip_api!(Runtime {
    hipInit: fn(c_uint) -> HipError;
    hipGetDeviceCount: fn(*mut c_int) -> HipError;
    hipSetDevice: fn(c_int) -> HipError;
    hipDeviceGetName: fn(*mut c_char, c_int, c_int) -> HipError;
    hipDeviceTotalMem: fn(*mut usize, c_int) -> HipError;
    hipDeviceGetAttribute: fn(*mut c_int, c_int, c_int) -> HipError;
    hipRuntimeGetVersion: fn(*mut c_int) -> HipError;
    hipGetErrorString: fn(HipError) -> *const c_char;
    hipMemGetInfo: fn(*mut usize, *mut usize) -> HipError;
    hipMalloc: fn(*mut *mut c_void, usize) -> HipError;
    hipFree: fn(*mut c_void) -> HipError;
    hipMemcpyHtoD: fn(*mut c_void, *const c_void, usize) -> HipError;
    hipMemcpyDtoH: fn(*mut c_void, *mut c_void, usize) -> HipError;
    hipMemcpyDtoD: fn(*mut c_void, *mut c_void, usize) -> HipError;
    hipMemcpyHtoDAsync: fn(*mut c_void, *const c_void, usize, *mut c_void) -> HipError;
    hipMemcpyDtoHAsync: fn(*mut c_void, *mut c_void, usize, *mut c_void) -> HipError;
    hipMemcpyDtoDAsync: fn(*mut c_void, *mut c_void, usize, *mut c_void) -> HipError;
    hipMemsetD8: fn(*mut c_void, u8, usize) -> HipError;
    hipMemsetD8Async: fn(*mut c_void, u8, usize, *mut c_void) -> HipError;
    hipDeviceSynchronize: fn() -> HipError;
    hipStreamCreate: fn(*mut *mut c_void) -> HipError;
    hipStreamDestroy: fn(*mut c_void) -> HipError;
    hipStreamSynchronize: fn(*mut c_void) -> HipError;
    hipStreamBeginCapture: fn(*mut c_void, c_int) -> HipError;
    hipStreamEndCapture: fn(*mut c_void, *mut *mut c_void) -> HipError;
    hipGraphInstantiate: fn(*mut *mut c_void, *mut c_void, *mut *mut c_void, *mut c_char, usize) -> HipError;
    hipGraphDestroy: fn(*mut c_void) -> HipError;
    hipGraphLaunch: fn(*mut c_void, *mut c_void) -> HipError;
    hipGraphExecDestroy: fn(*mut c_void) -> HipError;
    hipEventCreate: fn(*mut *mut c_void) -> HipError;
    hipEventDestroy: fn(*mut c_void) -> HipError;
    hipEventRecord: fn(*mut c_void, *mut c_void) -> HipError;
    hipEventSynchronize: fn(*mut c_void) -> HipError;
    hipEventElapsedTime: fn(*mut f32, *mut c_void, *mut c_void) -> HipError;
    hipModuleLoadData: fn(*mut *mut c_void, *const c_void) -> HipError;
    hipModuleUnload: fn(*mut c_void) -> HipError;
    hipModuleGetFunction: fn(*mut *mut c_void, *mut c_void, *const c_char) -> HipError;
    hipModuleLaunchKernel: fn(
        *mut c_void, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint,
        *mut c_void, *mut *mut c_void, *mut *mut c_void
    ) -> HipError;
});

hip_api!(Rtc {
    hiprtcVersion: fn(*mut c_int, *mut c_int) -> HiprtcResult;
    hiprtcGetErrorString: fn(HiprtcResult) -> *const c_char;
    hiprtcCreateProgram: fn(
        *mut HiprtcProgram, *const c_char, *const c_char, c_int, *const *const c_char,
        *const *const c_char
    ) -> HiprtcResult;
    hiprtcCompileProgram: fn(HiprtcProgram, c_int, *const *const c_char) -> HiprtcResult;
    hiprtcGetProgramLogSize: fn(HiprtcProgram, *mut usize) -> HiprtcResult;
    hiprtcGetProgramLog: fn(HiprtcProgram, *mut c_char) -> HiprtcResult;
    hiprtcGetCodeSize: fn(HiprtcProgram, *mut usize) -> HiprtcResult;
    hiprtcGetCode: fn(HiprtcProgram, *mut c_char) -> HiprtcResult;
    hiprtcDestroyProgram: fn(*mut HiprtcProgram) -> HiprtcResult;
});

/// `hipGetDeviceProperties`: versioned symbol on ROCm 6+, plain on ROCm 5. The struct is read
/// through an oversized, zeroed buffer (see `HipGpu::arch_name`).
pub(crate) type GetDeviceProperties = unsafe extern "C" fn(*mut c_void, c_int) -> HipError;

/// The loaded libraries and their entry points.
pub(crate) struct Hip {
    pub(crate) runtime: Runtime,
    pub(crate) rtc: Result<Rtc, String>,
    pub(crate) get_device_properties: Option<GetDeviceProperties>,
    // Kept last so the function pointers above are dropped before the libraries.
    _libraries: Vec<Library>,
}

impl std::fmt::Debug for Hip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hip").finish_non_exhaustive()
    }
}

/// Directories to search first: `$ROCM_PATH/lib`, `$HIP_PATH/lib`, `/opt/rocm/lib`; then the
/// dynamic loader's own search path.
fn candidates(names: &[&str]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["ROCM_PATH", "HIP_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("lib"))
        .collect();
    dirs.push(PathBuf::from("/opt/rocm/lib"));
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .filter(|path| path.exists())
        .collect();
    paths.extend(names.iter().map(PathBuf::from));
    paths
}

fn open_first(names: &[&str]) -> Result<Library, String> {
    let mut last = String::from("no candidates");
    for path in candidates(names) {
        // SAFETY: loading the HIP runtime runs its initialisers, which have no preconditions.
        match unsafe { Library::new(&path) } {
            Ok(lib) => {
                tracing::debug!("loaded {}", path.display());
                return Ok(lib);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "none of {names:?} could be loaded (last error: {last})"
    ))
}

impl Hip {
    /// Loads libamdhip64 (ROCm 7, 6 or 5) and hiprtc.
    pub(crate) fn load() -> Result<Hip, String> {
        let runtime_lib = open_first(&[
            "libamdhip64.so",
            "libamdhip64.so.7",
            "libamdhip64.so.6",
            "libamdhip64.so.5",
        ])?;
        // SAFETY: symbols are resolved against the library they came from, kept alive below.
        let runtime = unsafe { Runtime::resolve(&runtime_lib) }?;
        // SAFETY: as above; the signature is (hipDeviceProp_t*, int) in every version.
        let get_device_properties = unsafe {
            runtime_lib
                .get::<GetDeviceProperties>(b"hipGetDevicePropertiesR0600\0")
                .or_else(|_| runtime_lib.get::<GetDeviceProperties>(b"hipGetDeviceProperties\0"))
                .map(|s| *s)
                .ok()
        };
        let mut libraries = Vec::new();
        let rtc = match open_first(&["libhiprtc.so", "libhiprtc.so.7", "libhiprtc.so.6"]) {
            // SAFETY: as above.
            Ok(rtc_lib) => {
                let rtc = unsafe { Rtc::resolve(&rtc_lib) };
                libraries.push(rtc_lib);
                rtc
            }
            // ROCm 5 exports hiprtc from the runtime library itself.
            Err(missing) => unsafe { Rtc::resolve(&runtime_lib) }
                .map_err(|e| format!("hiprtc not found ({missing}; {e})")),
        };
        libraries.push(runtime_lib);
        Ok(Hip {
            runtime,
            rtc,
            get_device_properties,
            _libraries: libraries,
        })
    }
}
