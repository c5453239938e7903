//! AMD backend: the HIP runtime and hiprtc, loaded at run time through [`ffi`].
//!
//! Chosen over `hip-sys` (links `libamdhip64.so.5` at build time, so the binary cannot start on
//! ROCm 6/7) and over `cubecl-hip-sys` (its build script fails when Debian's `hipconfig` is on
//! PATH, which is exactly the CI machine that compiles our kernels with hipcc; it also only
//! opens the unversioned `libamdhip64.so`). About thirty stable C entry points are all we need.

mod ffi;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

use crate::device::{DeviceId, DeviceInfo};
use crate::error::Vendor;
use crate::gpu::{ApiError, ApiResult, CompileOutput, DevicePtr, GpuApi, Handle};
use ffi::Hip;

fn library() -> Result<&'static Hip, String> {
    static HIP: OnceLock<Result<Hip, String>> = OnceLock::new();
    HIP.get_or_init(|| {
        let hip = Hip::load()?;
        // SAFETY: hipInit(0) has no preconditions.
        let status = unsafe { (hip.runtime.hipInit)(0) };
        if status != ffi::HIP_SUCCESS && status != ffi::HIP_ERROR_NO_DEVICE {
            return Err(format!("hipInit failed: {}", error_string(&hip, status)));
        }
        Ok(hip)
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn error_string(hip: &Hip, code: ffi::HipError) -> String {
    // SAFETY: hipGetErrorString returns a static string for any code.
    let text = unsafe { (hip.runtime.hipGetErrorString)(code) };
    if text.is_null() {
        format!("hipError {code}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

fn check(hip: &Hip, code: ffi::HipError) -> ApiResult<()> {
    if code == ffi::HIP_SUCCESS {
        Ok(())
    } else {
        Err(ApiError {
            code: code as i64,
            message: error_string(hip, code),
        })
    }
}

/// Number of AMD devices, or why the stack is unusable.
pub(crate) fn device_count() -> Result<usize, String> {
    let hip = library()?;
    let mut count: c_int = 0;
    // SAFETY: valid out-pointer.
    match unsafe { (hip.runtime.hipGetDeviceCount)(&mut count) } {
        ffi::HIP_SUCCESS => Ok(count.max(0) as usize),
        ffi::HIP_ERROR_NO_DEVICE => Ok(0),
        code => Err(format!(
            "hipGetDeviceCount failed: {}",
            error_string(hip, code)
        )),
    }
}

/// Opens AMD device `ordinal`.
pub(crate) fn open(ordinal: usize) -> Result<Box<dyn GpuApi>, String> {
    let hip = library()?;
    HipGpu::open(hip, ordinal)
        .map(|gpu| Box::new(gpu) as Box<dyn GpuApi>)
        .map_err(|e| format!("{} (code {})", e.message, e.code))
}

#[derive(Debug)]
struct HipGpu {
    hip: &'static Hip,
    ordinal: c_int,
    info: DeviceInfo,
    /// Full target id for hiprtc, with feature flags (`gfx942:sramecc+:xnack-`).
    compile_arch: String,
}

impl HipGpu {
    fn open(hip: &'static Hip, ordinal: usize) -> ApiResult<HipGpu> {
        let index = ordinal as c_int;
        let rt = &hip.runtime;
        // SAFETY: all out-pointers are valid; `index` is below the device count.
        unsafe {
            check(hip, (rt.hipSetDevice)(index))?;
            let mut name = [0 as c_char; 256];
            check(
                hip,
                (rt.hipDeviceGetName)(name.as_mut_ptr(), name.len() as c_int, index),
            )?;
            let mut total = 0usize;
            check(hip, (rt.hipDeviceTotalMem)(&mut total, index))?;
            let mut wave = 0;
            check(
                hip,
                (rt.hipDeviceGetAttribute)(&mut wave, ffi::ATTR_WARP_SIZE, index),
            )?;
            let mut units = 0;
            check(
                hip,
                (rt.hipDeviceGetAttribute)(&mut units, ffi::ATTR_MULTIPROCESSOR_COUNT, index),
            )?;
            let mut shared = 0;
            check(
                hip,
                (rt.hipDeviceGetAttribute)(
                    &mut shared,
                    ffi::ATTR_MAX_SHARED_MEMORY_PER_BLOCK,
                    index,
                ),
            )?;
            let compile_arch = arch_name(hip, index)?;
            let arch = compile_arch
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            Ok(HipGpu {
                hip,
                ordinal: index,
                info: DeviceInfo {
                    id: DeviceId::Rocm(ordinal),
                    name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                    arch,
                    total_memory: total as u64,
                    wave_size: wave as u32,
                    compute_units: units as u32,
                    max_shared_memory_per_block: shared as u32,
                },
                compile_arch,
            })
        }
    }

    fn bind(&self) -> ApiResult<()> {
        // SAFETY: valid device ordinal.
        check(self.hip, unsafe {
            (self.hip.runtime.hipSetDevice)(self.ordinal)
        })
    }

    fn ok(&self, code: ffi::HipError) -> ApiResult<()> {
        check(self.hip, code)
    }
}

/// Reads `gcnArchName` (`gfx942:sramecc+:xnack-`) without depending on the layout of
/// `hipDeviceProp_t`, which changed between ROCm 5 and 6: the struct is written into a zeroed
/// buffer larger than any version of it, and the only field that holds a `gfx…` string after
/// the 256-byte marketing name is `gcnArchName`.
unsafe fn arch_name(hip: &Hip, index: c_int) -> ApiResult<String> {
    let Some(get) = hip.get_device_properties else {
        return Err(ApiError {
            code: -1,
            message: "neither hipGetDevicePropertiesR0600 nor hipGetDeviceProperties is exported"
                .into(),
        });
    };
    let mut buffer = vec![0u64; 2048];
    // SAFETY: the buffer (16 KiB) is larger than hipDeviceProp_t in every ROCm version.
    check(hip, unsafe {
        get(buffer.as_mut_ptr() as *mut c_void, index)
    })?;
    let bytes: &[u8] = bytemuck::cast_slice(&buffer);
    find_gfx_name(&bytes[256..]).ok_or_else(|| ApiError {
        code: -1,
        message: "no gfx architecture name in hipDeviceProp_t".into(),
    })
}

/// First NUL-terminated `gfx<hex digits>[:features]` string in `bytes`.
fn find_gfx_name(bytes: &[u8]) -> Option<String> {
    let mut start = 0;
    while let Some(offset) = bytes[start..].windows(3).position(|w| w == b"gfx") {
        let at = start + offset;
        let end = bytes[at..].iter().position(|&b| b == 0).map(|n| at + n)?;
        let candidate = std::str::from_utf8(&bytes[at..end]).ok();
        let well_formed = candidate.is_some_and(|s| {
            let chip = s.split(':').next().unwrap_or_default();
            chip.len() > 3
                && chip[3..].chars().all(|c| c.is_ascii_hexdigit())
                && (at == 0 || bytes[at - 1] == 0)
        });
        if well_formed {
            return candidate.map(str::to_owned);
        }
        start = at + 3;
    }
    None
}

fn stream(handle: Option<Handle>) -> *mut c_void {
    handle.unwrap_or(0) as *mut c_void
}

fn ptr(device_ptr: DevicePtr) -> *mut c_void {
    device_ptr as usize as *mut c_void
}

impl GpuApi for HipGpu {
    fn vendor(&self) -> Vendor {
        Vendor::Hip
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn compile_arch(&self) -> &str {
        &self.compile_arch
    }

    fn compiler_version(&self) -> ApiResult<String> {
        let rtc = self.hip.rtc.as_ref().map_err(|message| ApiError {
            code: -1,
            message: message.clone(),
        })?;
        let (mut major, mut minor, mut runtime) = (0, 0, 0);
        // SAFETY: valid out-pointers.
        unsafe {
            let status = (rtc.hiprtcVersion)(&mut major, &mut minor);
            if status != ffi::HIPRTC_SUCCESS {
                return Err(rtc_error(rtc, status));
            }
            self.ok((self.hip.runtime.hipRuntimeGetVersion)(&mut runtime))?;
        }
        Ok(format!("hiprtc {major}.{minor} (HIP runtime {runtime})"))
    }

    fn compile(&self, source: &CStr, name: &CStr, options: &[String]) -> ApiResult<CompileOutput> {
        let rtc = self.hip.rtc.as_ref().map_err(|message| ApiError {
            code: -1,
            message: message.clone(),
        })?;
        hiprtc_compile(rtc, source, name, options)
    }

    fn dependent_launch_supported(&self) -> bool {
        false
    }

    fn mem_info(&self) -> ApiResult<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0, 0);
        // SAFETY: valid out-pointers.
        self.ok(unsafe { (self.hip.runtime.hipMemGetInfo)(&mut free, &mut total) })?;
        Ok((free, total))
    }

    fn malloc(&self, bytes: usize) -> ApiResult<DevicePtr> {
        self.bind()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.ok(unsafe { (self.hip.runtime.hipMalloc)(&mut out, bytes.max(1)) })?;
        Ok(out as usize as DevicePtr)
    }

    unsafe fn free(&self, device_ptr: DevicePtr) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a pointer from `malloc`, freed once.
        self.ok(unsafe { (self.hip.runtime.hipFree)(ptr(device_ptr)) })
    }

    unsafe fn copy_htod(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        let rt = &self.hip.runtime;
        // SAFETY: caller guarantees both ranges are valid for `bytes`.
        self.ok(unsafe {
            match on {
                Some(_) => {
                    (rt.hipMemcpyHtoDAsync)(ptr(dst), src as *const c_void, bytes, stream(on))
                }
                None => (rt.hipMemcpyHtoD)(ptr(dst), src as *const c_void, bytes),
            }
        })
    }

    unsafe fn copy_dtoh(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        let rt = &self.hip.runtime;
        // SAFETY: caller guarantees both ranges are valid for `bytes`.
        self.ok(unsafe {
            match on {
                Some(_) => (rt.hipMemcpyDtoHAsync)(dst as *mut c_void, ptr(src), bytes, stream(on)),
                None => (rt.hipMemcpyDtoH)(dst as *mut c_void, ptr(src), bytes),
            }
        })
    }

    unsafe fn copy_dtod(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        let rt = &self.hip.runtime;
        // SAFETY: caller guarantees both ranges are valid for `bytes`.
        self.ok(unsafe {
            match on {
                Some(_) => (rt.hipMemcpyDtoDAsync)(ptr(dst), ptr(src), bytes, stream(on)),
                None => (rt.hipMemcpyDtoD)(ptr(dst), ptr(src), bytes),
            }
        })
    }

    unsafe fn memset_d8(
        &self,
        dst: DevicePtr,
        value: u8,
        bytes: usize,
        on: Option<Handle>,
    ) -> ApiResult<()> {
        self.bind()?;
        let rt = &self.hip.runtime;
        // SAFETY: caller guarantees the range is valid for `bytes`.
        self.ok(unsafe {
            match on {
                Some(_) => (rt.hipMemsetD8Async)(ptr(dst), value, bytes, stream(on)),
                None => (rt.hipMemsetD8)(ptr(dst), value, bytes),
            }
        })
    }

    fn synchronize(&self) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: no preconditions.
        self.ok(unsafe { (self.hip.runtime.hipDeviceSynchronize)() })
    }

    fn stream_create(&self) -> ApiResult<Handle> {
        self.bind()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.ok(unsafe { (self.hip.runtime.hipStreamCreate)(&mut out) })?;
        Ok(out as Handle)
    }

    unsafe fn stream_destroy(&self, handle: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live stream.
        self.ok(unsafe { (self.hip.runtime.hipStreamDestroy)(handle as *mut c_void) })
    }

    unsafe fn stream_synchronize(&self, handle: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live stream or 0.
        self.ok(unsafe { (self.hip.runtime.hipStreamSynchronize)(handle as *mut c_void) })
    }

    unsafe fn stream_begin_capture(&self, stream: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live, non-default stream.
        self.ok(unsafe {
            (self.hip.runtime.hipStreamBeginCapture)(
                stream as *mut c_void,
                ffi::STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })
    }

    unsafe fn stream_end_capture(&self, stream: Handle) -> ApiResult<Handle> {
        self.bind()?;
        let mut graph = std::ptr::null_mut();
        // SAFETY: caller passes a stream that is capturing; valid out-pointer.
        self.ok(unsafe {
            (self.hip.runtime.hipStreamEndCapture)(stream as *mut c_void, &mut graph)
        })?;
        Ok(graph as Handle)
    }

    unsafe fn graph_instantiate(&self, graph: Handle) -> ApiResult<Handle> {
        self.bind()?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: caller passes a live graph; valid out-pointer; no error node or log wanted.
        self.ok(unsafe {
            (self.hip.runtime.hipGraphInstantiate)(
                &mut exec,
                graph as *mut c_void,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        })?;
        Ok(exec as Handle)
    }

    unsafe fn graph_destroy(&self, graph: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live graph.
        self.ok(unsafe { (self.hip.runtime.hipGraphDestroy)(graph as *mut c_void) })
    }

    unsafe fn graph_launch(&self, exec: Handle, stream: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live executable graph and stream.
        self.ok(unsafe {
            (self.hip.runtime.hipGraphLaunch)(exec as *mut c_void, stream as *mut c_void)
        })
    }

    unsafe fn graph_exec_destroy(&self, exec: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live executable graph.
        self.ok(unsafe { (self.hip.runtime.hipGraphExecDestroy)(exec as *mut c_void) })
    }

    fn event_create(&self) -> ApiResult<Handle> {
        self.bind()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.ok(unsafe { (self.hip.runtime.hipEventCreate)(&mut out) })?;
        Ok(out as Handle)
    }

    unsafe fn event_destroy(&self, event: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event.
        self.ok(unsafe { (self.hip.runtime.hipEventDestroy)(event as *mut c_void) })
    }

    unsafe fn event_record(&self, event: Handle, on: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event and stream.
        self.ok(unsafe {
            (self.hip.runtime.hipEventRecord)(event as *mut c_void, on as *mut c_void)
        })
    }

    unsafe fn event_synchronize(&self, event: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live event.
        self.ok(unsafe { (self.hip.runtime.hipEventSynchronize)(event as *mut c_void) })
    }

    unsafe fn event_elapsed_ms(&self, start: Handle, end: Handle) -> ApiResult<f32> {
        self.bind()?;
        let mut ms = 0f32;
        // SAFETY: caller passes two live, recorded events.
        self.ok(unsafe {
            (self.hip.runtime.hipEventElapsedTime)(
                &mut ms,
                start as *mut c_void,
                end as *mut c_void,
            )
        })?;
        Ok(ms)
    }

    unsafe fn module_load(&self, image: &[u8]) -> ApiResult<Handle> {
        self.bind()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: `image` is a code object from hiprtc for this device (or a verified cache entry).
        self.ok(unsafe {
            (self.hip.runtime.hipModuleLoadData)(&mut out, image.as_ptr() as *const c_void)
        })?;
        Ok(out as Handle)
    }

    unsafe fn module_unload(&self, module: Handle) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live module, unloaded once.
        self.ok(unsafe { (self.hip.runtime.hipModuleUnload)(module as *mut c_void) })
    }

    unsafe fn module_function(&self, module: Handle, name: &CStr) -> ApiResult<Handle> {
        self.bind()?;
        let mut out = std::ptr::null_mut();
        // SAFETY: caller passes a live module; `name` is NUL-terminated.
        self.ok(unsafe {
            (self.hip.runtime.hipModuleGetFunction)(&mut out, module as *mut c_void, name.as_ptr())
        })?;
        Ok(out as Handle)
    }

    unsafe fn launch(
        &self,
        function: Handle,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem_bytes: u32,
        on: Handle,
        params: &mut [*mut c_void],
        // Never asked for: `dependent_launch_supported` is false.
        _dependent: bool,
    ) -> ApiResult<()> {
        self.bind()?;
        // SAFETY: caller passes a live function and stream, and one pointer per kernel parameter.
        self.ok(unsafe {
            (self.hip.runtime.hipModuleLaunchKernel)(
                function as *mut c_void,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_mem_bytes,
                on as *mut c_void,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }
}

fn rtc_error(rtc: &ffi::Rtc, status: ffi::HiprtcResult) -> ApiError {
    // SAFETY: returns a static string for every code.
    let text = unsafe { (rtc.hiprtcGetErrorString)(status) };
    let message = if text.is_null() {
        format!("hiprtc error {status}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    ApiError {
        code: status as i64,
        message,
    }
}

fn hiprtc_compile(
    rtc: &ffi::Rtc,
    source: &CStr,
    name: &CStr,
    options: &[String],
) -> ApiResult<CompileOutput> {
    let options: Vec<CString> = options
        .iter()
        .map(|o| {
            CString::new(o.as_str()).expect("compiler options contain no NUL (validated defines)")
        })
        .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut program: ffi::HiprtcProgram = std::ptr::null_mut();
    let ok = |status| {
        if status == ffi::HIPRTC_SUCCESS {
            Ok(())
        } else {
            Err(rtc_error(rtc, status))
        }
    };
    // SAFETY: valid strings and out-pointer; no headers.
    ok(unsafe {
        (rtc.hiprtcCreateProgram)(
            &mut program,
            source.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    struct Program<'a>(&'a ffi::Rtc, ffi::HiprtcProgram);
    impl Drop for Program<'_> {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            unsafe { (self.0.hiprtcDestroyProgram)(&mut self.1) };
        }
    }
    let program = Program(rtc, program);
    // SAFETY: live program; option pointers outlive the call.
    let status = unsafe {
        (rtc.hiprtcCompileProgram)(program.1, option_ptrs.len() as c_int, option_ptrs.as_ptr())
    };
    let mut log_size = 0usize;
    // SAFETY: live program, valid out-pointers, buffer of the reported size.
    let log = unsafe {
        if (rtc.hiprtcGetProgramLogSize)(program.1, &mut log_size) == ffi::HIPRTC_SUCCESS
            && log_size > 1
        {
            let mut log = vec![0u8; log_size];
            (rtc.hiprtcGetProgramLog)(program.1, log.as_mut_ptr() as *mut c_char);
            String::from_utf8_lossy(&log[..log_size - 1]).into_owned()
        } else {
            String::new()
        }
    };
    if status == ffi::HIPRTC_ERROR_COMPILATION {
        return Ok(CompileOutput::Failed { log });
    }
    ok(status)?;
    let mut size = 0usize;
    // SAFETY: compiled program, valid out-pointer.
    ok(unsafe { (rtc.hiprtcGetCodeSize)(program.1, &mut size) })?;
    let mut code = vec![0u8; size];
    // SAFETY: buffer of the reported size.
    ok(unsafe { (rtc.hiprtcGetCode)(program.1, code.as_mut_ptr() as *mut c_char) })?;
    Ok(CompileOutput::Code { code, log })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::prelude::with_prelude;

    #[test]
    fn finds_the_arch_name_among_other_fields() {
        let mut props = vec![0u8; 1024];
        props[10..24].copy_from_slice(b"gfx-like-name\0");
        props[100..104].copy_from_slice(&7u32.to_le_bytes());
        let arch = b"gfx942:sramecc+:xnack-\0";
        props[600..600 + arch.len()].copy_from_slice(arch);
        assert_eq!(
            find_gfx_name(&props).as_deref(),
            Some("gfx942:sramecc+:xnack-")
        );
        assert_eq!(find_gfx_name(&props[..600]), None);
    }

    /// Exercises the hiprtc bindings and the HIP prelude without a GPU, wherever a HIP
    /// runtime is installed (CI installs Debian's with hipcc; its hiprtc handles gfx90a).
    #[test]
    fn hiprtc_compiles_the_runtime_kernels_for_gfx90a() {
        let hip = match Hip::load() {
            Ok(hip) => hip,
            Err(reason)
                if std::env::var("MXSERVE_REQUIRE_KERNEL_COMPILERS").is_ok_and(|v| v == "1") =>
            {
                panic!("MXSERVE_REQUIRE_KERNEL_COMPILERS=1 but no HIP runtime: {reason}")
            }
            Err(reason) => {
                eprintln!("skipped: no HIP runtime ({reason})");
                return;
            }
        };
        let rtc = hip.rtc.as_ref().expect("a HIP runtime without hiprtc");
        let options = [
            "--gpu-architecture=gfx90a".to_owned(),
            "-O3".to_owned(),
            "-DWARP_SIZE=64".to_owned(),
        ];
        let kernels = [
            ("axpy.hip", include_str!("../../kernels/axpy.hip")),
            ("reduce.hip", include_str!("../../kernels/reduce.hip")),
            ("fill.hip", include_str!("../../kernels/fill.hip")),
            ("shared.hip", include_str!("../../kernels/shared.hip")),
        ];
        for (name, code) in kernels {
            let text = CString::new(with_prelude(Vendor::Hip, name, code)).unwrap();
            let c_name = CString::new(name).unwrap();
            match hiprtc_compile(rtc, &text, &c_name, &options).unwrap() {
                CompileOutput::Code { code: object, .. } => {
                    assert_eq!(&object[..4], b"\x7fELF", "{name}: not an ELF code object")
                }
                CompileOutput::Failed { log } => panic!("hiprtc rejected {name}:\n{log}"),
            }
        }

        let broken = CString::new(with_prelude(
            Vendor::Hip,
            "broken.hip",
            "extern \"C\" __global__ void k() { nope; }",
        ))
        .unwrap();
        match hiprtc_compile(rtc, &broken, c"broken.hip", &options).unwrap() {
            CompileOutput::Failed { log } => assert!(log.contains("nope"), "{log}"),
            CompileOutput::Code { .. } => panic!("hiprtc accepted a broken kernel"),
        }
    }
}
