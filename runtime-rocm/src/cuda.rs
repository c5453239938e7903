//! NVIDIA backend: the CUDA driver API through cudarc (loaded at run time), one primary
//! context per device, NVRTC for compilation.

use std::ffi::{CStr, c_void};
use std::sync::OnceLock;

use cudarc::driver::result::{self as driver, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute as Attr};

use crate::device::{DeviceId, DeviceInfo};
use crate::error::Vendor;
use crate::gpu::{ApiError, ApiResult, CompileOutput, DevicePtr, GpuApi, Handle};
use crate::kernel::nvrtc;

fn api_error(err: DriverError) -> ApiError {
    let message = err
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{err:?}"));
    ApiError {
        code: err.0 as i64,
        message,
    }
}

/// Loads libcuda and initialises the driver once per process.
fn init() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err("libcuda (the NVIDIA driver) was not found".into());
        }
        driver::init().map_err(|e| format!("cuInit failed: {}", api_error(e).message))
    })
    .clone()
}

/// Number of NVIDIA devices, or why the stack is unusable.
pub(crate) fn device_count() -> Result<usize, String> {
    init()?;
    driver::device::get_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| format!("cuDeviceGetCount failed: {}", api_error(e).message))
}

/// Opens NVIDIA device `ordinal` (retains its primary context).
pub(crate) fn open(ordinal: usize) -> Result<Box<dyn GpuApi>, String> {
    init()?;
    CudaGpu::open(ordinal)
        .map(|gpu| Box::new(gpu) as Box<dyn GpuApi>)
        .map_err(|e| format!("{} (code {})", e.message, e.code))
}

#[derive(Debug)]
struct CudaGpu {
    device: sys::CUdevice,
    context: sys::CUcontext,
    info: DeviceInfo,
    compile_arch: String,
    /// Programmatic dependent launch: compute capability 9.0 and later.
    dependent_launch: bool,
}

// SAFETY: a CUDA context may be used from any thread once made current there, which every
// method does first (`bind`).
unsafe impl Send for CudaGpu {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for CudaGpu {}

impl CudaGpu {
    fn open(ordinal: usize) -> ApiResult<CudaGpu> {
        let device = driver::device::get(ordinal as i32).map_err(api_error)?;
        // SAFETY: `device` came from cuDeviceGet.
        let context = unsafe { driver::primary_ctx::retain(device) }.map_err(api_error)?;
        let attribute = |attr| {
            // SAFETY: valid device handle.
            unsafe { driver::device::get_attribute(device, attr) }.map_err(api_error)
        };
        let major = attribute(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attribute(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let arch = format!("sm_{major}{minor}");
        // Hopper/Blackwell's arch-specific instructions (wgmma, setmaxnreg) need the `a` target;
        // code for it runs only on that exact chip, which is the one we compile for.
        let compile_arch = if major >= 9 {
            format!("{arch}a")
        } else {
            arch.clone()
        };
        let info = DeviceInfo {
            id: DeviceId::Cuda(ordinal),
            name: driver::device::get_name(device).map_err(api_error)?,
            arch,
            // SAFETY: valid device handle.
            total_memory: unsafe { driver::device::total_mem(device) }.map_err(api_error)? as u64,
            wave_size: attribute(Attr::CU_DEVICE_ATTRIBUTE_WARP_SIZE)? as u32,
            compute_units: attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            max_shared_memory_per_block: attribute(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
        };
        Ok(CudaGpu {
            device,
            context,
            info,
            compile_arch,
            dependent_launch: major >= 9,
        })
    }

    fn bind(&self) -> ApiResult<()> {
        // SAFETY: the context is retained for our lifetime.
        unsafe { driver::ctx::set_current(self.context) }.map_err(api_error)
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        // SAFETY: retained in `open`, released once.
        let _ = unsafe { driver::primary_ctx::release(self.device) };
    }
}

/// Dynamic shared memory a CUDA kernel may use without opting in.
const DEFAULT_DYNAMIC_SHARED_LIMIT: u32 = 48 * 1024;

fn stream(handle: Option<Handle>) -> sys::CUstream {
    handle.unwrap_or(0) as sys::CUstream
}

impl GpuApi for CudaGpu {
    fn vendor(&self) -> Vendor {
        Vendor::Cuda
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn compile_arch(&self) -> &str {
        &self.compile_arch
    }

    fn compiler_version(&self) -> ApiResult<String> {
        nvrtc::load().map_err(|message| ApiError { code: -1, message })
    }

    fn compile(&self, source: &CStr, name: &CStr, options: &[String]) -> ApiResult<CompileOutput> {
        nvrtc::load().map_err(|message| ApiError { code: -1, message })?;
        nvrtc::compile(source, name, options)
    }

    fn dependent_launch_supported(&self) -> bool {
        self.dependent_launch
    }

    fn mem_info(&self) -> ApiResult<(usize, usize)> {
        self.bind()?;
        driver::mem_get_info().map_err(api_error)
    }

    fn malloc(&self, bytes: usize) -> ApiResult<DevicePtr> {
        self.bind()?;
        // SAFETY: plain device allocation in the bound context.
        unsafe { driver::malloc_sync(bytes.max(1)) }.map_err(api_error)
    }

    unsafe fn free(&self, ptr: DevicePtr) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a pointer from `malloc`, freed once.
        unsafe { driver::free_sync(ptr) }.map_err(api_error)
    }

    unsafe fn copy_htod(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller guarantees `src` is readable for `bytes` and `dst` is a live allocation.
        let result = unsafe {
            match on {
                Some(_) => sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, stream(on)),
                None => sys::cuMemcpyHtoD_v2(dst, src as *const c_void, bytes),
            }
        };
        result.result().map_err(api_error)
    }

    unsafe fn copy_dtoh(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller guarantees `dst` is writable for `bytes` and `src` is a live allocation.
        let result = unsafe {
            match on {
                Some(_) => sys::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, bytes, stream(on)),
                None => sys::cuMemcpyDtoH_v2(dst as *mut c_void, src, bytes),
            }
        };
        result.result().map_err(api_error)
    }

    unsafe fn copy_dtod(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller guarantees both are live allocations of at least `bytes`.
        let result = unsafe {
            match on {
                Some(_) => sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream(on)),
                None => sys::cuMemcpyDtoD_v2(dst, src, bytes),
            }
        };
        result.result().map_err(api_error)
    }

    unsafe fn memset_d8(
        &self,
        dst: DevicePtr,
        value: u8,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller guarantees `dst` is a live allocation of at least `bytes`.
        let result = unsafe {
            match on {
                Some(_) => sys::cuMemsetD8Async(dst, value, bytes, stream(on)),
                None => sys::cuMemsetD8_v2(dst, value, bytes),
            }
        };
        result.result().map_err(api_error)
    }

    fn synchronize(&self) -> ApiResult<()> {
        self.bind()?;
        driver::ctx::synchronize().map_err(api_error)
    }

    fn stream_create(&self) -> ApiResult<Handle> {
        self.bind()?;
        // Blocking streams (as HIP's hipStreamCreate makes): work on them is ordered with the
        // default stream, so a synchronous copy after a launch waits for the kernel.
        driver::stream::create(driver::stream::StreamKind::Default)
            .map(|s| s as Handle)
            .map_err(api_error)
    }

    unsafe fn stream_destroy(&self, handle: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live stream from `stream_create`.
        unsafe { driver::stream::destroy(handle as sys::CUstream) }.map_err(api_error)
    }

    unsafe fn stream_synchronize(&self, handle: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live stream (or 0, the default stream).
        unsafe { driver::stream::synchronize(handle as sys::CUstream) }.map_err(api_error)
    }

    fn event_create(&self) -> ApiResult<Handle> {
        self.bind()?;
        driver::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map(|e| e as Handle)
            .map_err(api_error)
    }

    unsafe fn event_destroy(&self, event: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event.
        unsafe { driver::event::destroy(event as sys::CUevent) }.map_err(api_error)
    }

    unsafe fn event_record(&self, event: Handle, on: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event and stream.
        unsafe { driver::event::record(event as sys::CUevent, on as sys::CUstream) }
            .map_err(api_error)
    }

    unsafe fn event_synchronize(&self, event: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event.
        unsafe { driver::event::synchronize(event as sys::CUevent) }.map_err(api_error)
    }

    unsafe fn event_elapsed_ms(&self, start: Handle, end: Handle) -> ApiResult<f32> {
        self.bind()?;
        // SAFETY: caller passes two live, recorded events.
        unsafe { driver::event::elapsed(start as sys::CUevent, end as sys::CUevent) }
            .map_err(api_error)
    }

    unsafe fn stream_begin_capture(&self, stream: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live, non-default stream.
        unsafe {
            sys::cuStreamBeginCapture_v2(
                stream as sys::CUstream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .result()
        .map_err(api_error)
    }

    unsafe fn stream_end_capture(&self, stream: Handle) -> ApiResult<Handle> {
        self.bind()?;
        let mut graph = std::ptr::null_mut();
        // SAFETY: caller passes a stream that is capturing; valid out-pointer.
        unsafe { sys::cuStreamEndCapture(stream as sys::CUstream, &mut graph) }
            .result()
            .map_err(api_error)?;
        Ok(graph as Handle)
    }

    unsafe fn graph_instantiate(&self, graph: Handle) -> ApiResult<Handle> {
        self.bind()?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: caller passes a live graph; valid out-pointer.
        unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph as sys::CUgraph, 0) }
            .result()
            .map_err(api_error)?;
        Ok(exec as Handle)
    }

    unsafe fn graph_destroy(&self, graph: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live graph.
        unsafe { sys::cuGraphDestroy(graph as sys::CUgraph) }
            .result()
            .map_err(api_error)
    }

    unsafe fn graph_launch(&self, exec: Handle, stream: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live executable graph and stream.
        unsafe { sys::cuGraphLaunch(exec as sys::CUgraphExec, stream as sys::CUstream) }
            .result()
            .map_err(api_error)
    }

    unsafe fn graph_exec_destroy(&self, exec: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live executable graph.
        unsafe { sys::cuGraphExecDestroy(exec as sys::CUgraphExec) }
            .result()
            .map_err(api_error)
    }

    unsafe fn module_load(&self, image: &[u8]) -> ApiResult<Handle> {
        self.bind()?;
        // SAFETY: `image` is a cubin produced by NVRTC for this device (or read from the cache,
        // whose checksum was verified).
        unsafe { driver::module::load_data(image.as_ptr() as *const c_void) }
            .map(|m| m as Handle)
            .map_err(api_error)
    }

    unsafe fn module_unload(&self, module: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live module, unloaded once.
        unsafe { driver::module::unload(module as sys::CUmodule) }.map_err(api_error)
    }

    unsafe fn module_function(&self, module: Handle, name: &CStr) -> ApiResult<Handle> {
        self.bind()?;
        // SAFETY: caller passes a live module.
        unsafe { driver::module::get_function(module as sys::CUmodule, name.to_owned()) }
            .map(|f| f as Handle)
            .map_err(api_error)
    }

    unsafe fn launch(
        &self,
        function: Handle,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem_bytes: u32,
        on: Handle,
        params: &mut [*mut c_void],
        dependent: bool,
    ) -> ApiResult<()> {
        self.bind()?;
        if shared_mem_bytes > DEFAULT_DYNAMIC_SHARED_LIMIT {
            // Above 48 KiB a kernel must opt in; doing it here keeps launches uniform across
            // vendors. The driver rejects values over the device's opt-in maximum. The limit
            // is only ever raised: a captured graph may replay a launch of this function with
            // more shared memory than a later direct launch asks for.
            let attribute =
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            let mut current = 0;
            // SAFETY: caller passes a live function; valid out-pointer.
            unsafe {
                sys::cuFuncGetAttribute(&mut current, attribute, function as sys::CUfunction)
            }
            .result()
            .map_err(api_error)?;
            if i64::from(shared_mem_bytes) > i64::from(current) {
                // SAFETY: caller passes a live function.
                unsafe {
                    sys::cuFuncSetAttribute(
                        function as sys::CUfunction,
                        attribute,
                        shared_mem_bytes as i32,
                    )
                }
                .result()
                .map_err(api_error)?;
            }
        }
        if dependent {
            // `cuLaunchKernelEx` with programmatic stream serialisation: the launch may begin
            // before the kernel ahead of it on the stream has finished (inside a captured
            // graph too, where it becomes a programmatic edge); the kernel's
            // `mx_wait_prior_kernels()` waits for that kernel.
            // SAFETY: an all-zero attribute value is a valid (empty) union.
            let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
            value.programmaticStreamSerializationAllowed = 1;
            let mut attribute = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            };
            let config = sys::CUlaunchConfig {
                gridDimX: grid[0],
                gridDimY: grid[1],
                gridDimZ: grid[2],
                blockDimX: block[0],
                blockDimY: block[1],
                blockDimZ: block[2],
                sharedMemBytes: shared_mem_bytes,
                hStream: on as sys::CUstream,
                attrs: &mut attribute,
                numAttrs: 1,
            };
            // SAFETY: caller passes a live function and stream and one pointer per kernel
            // parameter; `config` and `attribute` outlive the call, which copies them.
            return unsafe {
                sys::cuLaunchKernelEx(
                    &config,
                    function as sys::CUfunction,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result()
            .map_err(api_error);
        }
        // SAFETY: caller passes a live function and stream, and one pointer per kernel parameter.
        unsafe {
            driver::launch_kernel(
                function as sys::CUfunction,
                (grid[0], grid[1], grid[2]),
                (block[0], block[1], block[2]),
                shared_mem_bytes,
                on as sys::CUstream,
                params,
            )
        }
        .map_err(api_error)
    }
}
