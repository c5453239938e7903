//! The one seam between the safe public types and the two vendor stacks. CUDA's driver API and
//! HIP's module API have the same shape, so each backend implements this trait once with raw
//! handles and the public types never see a vendor.

use std::ffi::{CStr, c_void};

use crate::device::DeviceInfo;
use crate::error::Vendor;

/// A vendor error before the public layer adds the operation and device.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: i64,
    pub message: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A device pointer.
pub(crate) type DevicePtr = u64;
/// An opaque vendor handle (stream, event, module, function); 0 is the default stream.
pub(crate) type Handle = usize;

/// Output of a run-time compilation.
pub(crate) enum CompileOutput {
    /// Loadable code object (cubin / HSA code object) and the compiler's log (warnings, and on
    /// NVIDIA the assembler's resource report where it was asked for one).
    Code { code: Vec<u8>, log: String },
    /// The compiler rejected the source; the log says why.
    Failed { log: String },
}

/// One GPU of one vendor. Methods taking raw handles are `unsafe`: the caller guarantees the
/// handles came from this same object and are still alive.
pub(crate) trait GpuApi: Send + Sync + std::fmt::Debug {
    fn vendor(&self) -> Vendor;
    fn info(&self) -> &DeviceInfo;
    /// The architecture string the compiler is given (`sm_90a`, `gfx942:sramecc+:xnack-`).
    fn compile_arch(&self) -> &str;
    /// Compiler name and version, part of the cache key.
    fn compiler_version(&self) -> ApiResult<String>;
    /// Compiles full source text (prelude included) with the given options.
    fn compile(&self, source: &CStr, name: &CStr, options: &[String]) -> ApiResult<CompileOutput>;
    /// Whether a launch may overlap the end of the kernel before it on its stream
    /// (programmatic dependent launch).
    fn dependent_launch_supported(&self) -> bool;

    fn mem_info(&self) -> ApiResult<(usize, usize)>;
    fn malloc(&self, bytes: usize) -> ApiResult<DevicePtr>;
    unsafe fn free(&self, ptr: DevicePtr) -> ApiResult<()>;
    unsafe fn copy_htod(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: usize,
        stream: Option<Handle>,
    ) -> ApiResult<()>;
    unsafe fn copy_dtoh(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: usize,
        stream: Option<Handle>,
    ) -> ApiResult<()>;
    unsafe fn copy_dtod(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
        stream: Option<Handle>,
    ) -> ApiResult<()>;
    unsafe fn memset_d8(
        &self,
        dst: DevicePtr,
        value: u8,
        bytes: usize,
        stream: Option<Handle>,
    ) -> ApiResult<()>;
    fn synchronize(&self) -> ApiResult<()>;

    fn stream_create(&self) -> ApiResult<Handle>;
    unsafe fn stream_destroy(&self, stream: Handle) -> ApiResult<()>;
    unsafe fn stream_synchronize(&self, stream: Handle) -> ApiResult<()>;

    fn event_create(&self) -> ApiResult<Handle>;
    unsafe fn event_destroy(&self, event: Handle) -> ApiResult<()>;
    unsafe fn event_record(&self, event: Handle, stream: Handle) -> ApiResult<()>;
    unsafe fn event_synchronize(&self, event: Handle) -> ApiResult<()>;
    unsafe fn event_elapsed_ms(&self, start: Handle, end: Handle) -> ApiResult<f32>;

    /// Starts capturing `stream`'s work into a graph, in thread-local mode: an unsafe call
    /// from this thread during the capture (a synchronous copy) fails instead of running.
    unsafe fn stream_begin_capture(&self, stream: Handle) -> ApiResult<()>;
    /// Ends the capture and returns the graph (it must be destroyed).
    unsafe fn stream_end_capture(&self, stream: Handle) -> ApiResult<Handle>;
    unsafe fn graph_instantiate(&self, graph: Handle) -> ApiResult<Handle>;
    unsafe fn graph_destroy(&self, graph: Handle) -> ApiResult<()>;
    unsafe fn graph_launch(&self, exec: Handle, stream: Handle) -> ApiResult<()>;
    unsafe fn graph_exec_destroy(&self, exec: Handle) -> ApiResult<()>;

    unsafe fn module_load(&self, image: &[u8]) -> ApiResult<Handle>;
    unsafe fn module_unload(&self, module: Handle) -> ApiResult<()>;
    unsafe fn module_function(&self, module: Handle, name: &CStr) -> ApiResult<Handle>;
    /// Launches `function`; with `dependent` (only where supported) the launch may start
    /// while the kernel before it on `stream` finishes, and the kernel waits for it itself.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        &self,
        function: Handle,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem_bytes: u32,
        stream: Handle,
        params: &mut [*mut c_void],
        dependent: bool,
    ) -> ApiResult<()>;
}
