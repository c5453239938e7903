//! NVRTC through cudarc's dynamically loaded bindings, usable with or without a GPU.
//!
//! cudarc finds `libnvrtc` by soname only. To use a copy outside the loader's search path (the
//! PyPI wheel in CI), [`load`] first opens the file named by `MXSERVE_NVRTC` globally; the
//! dynamic loader then resolves cudarc's `libnvrtc.so.N` request to that already-loaded object.

use std::ffi::{CStr, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};

use crate::gpu::{ApiError, ApiResult, CompileOutput};

/// Environment variable naming the `libnvrtc.so.N` file to use.
pub const NVRTC_ENV: &str = "MXSERVE_NVRTC";

static LOADED: OnceLock<Result<String, String>> = OnceLock::new();
static PRELOADED: OnceLock<Vec<libloading::os::unix::Library>> = OnceLock::new();

/// Loads NVRTC once per process and returns its version (`NVRTC 13.0`), or why it is missing.
pub(crate) fn load() -> Result<String, String> {
    LOADED
        .get_or_init(|| {
            let explicit = std::env::var_os(NVRTC_ENV).map(PathBuf::from);
            if let Some(path) = &explicit {
                preload(path)?;
            }
            // SAFETY: only probes whether the library can be opened.
            if !unsafe { sys::is_culib_present() } {
                return Err(format!(
                    "libnvrtc was not found by the dynamic loader; set {NVRTC_ENV} to a \
                     libnvrtc.so.N file (e.g. from PyPI's nvidia-cuda-nvrtc) or add its \
                     directory to LD_LIBRARY_PATH"
                ));
            }
            let (mut major, mut minor): (c_int, c_int) = (0, 0);
            // SAFETY: the library is present; both pointers are valid for writes.
            unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
                .result()
                .map_err(|e| format!("nvrtcVersion failed: {}", nvrtc_message(e.0)))?;
            Ok(format!("NVRTC {major}.{minor}"))
        })
        .clone()
}

fn preload(path: &Path) -> Result<(), String> {
    let mut libraries = Vec::new();
    // The builtins library sits next to libnvrtc; NVRTC opens it by name at compile time.
    if let Some(dir) = path.parent() {
        let builtins = std::fs::read_dir(dir)
            .map_err(|e| format!("{NVRTC_ENV}={}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so."))
            });
        for builtin in builtins {
            libraries.push(open_global(&builtin)?);
        }
    }
    libraries.push(open_global(path)?);
    let _ = PRELOADED.set(libraries);
    Ok(())
}

fn open_global(path: &Path) -> Result<libloading::os::unix::Library, String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: NVRTC's initialisers have no preconditions.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("{NVRTC_ENV}: cannot load {}: {e}", path.display()))
}

fn nvrtc_message(code: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a static string for every code.
    let text = unsafe { sys::nvrtcGetErrorString(code) };
    if text.is_null() {
        format!("{code:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

fn api_error(code: sys::nvrtcResult) -> ApiError {
    ApiError {
        code: code as i64,
        message: nvrtc_message(code),
    }
}

/// Compiles `source` to a cubin with the given options. [`load`] must have succeeded.
pub(crate) fn compile(source: &CStr, name: &CStr, options: &[String]) -> ApiResult<CompileOutput> {
    let program = result::create_program(source, Some(name)).map_err(|e| api_error(e.0))?;
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created above and destroyed once.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let program = Program(program);
    // SAFETY: `program` is alive; options contain no NUL (defines are validated).
    let compiled = unsafe { result::compile_program(program.0, options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    match compiled {
        Ok(()) => {}
        Err(e) if e.0 == sys::nvrtcResult::NVRTC_ERROR_COMPILATION => {
            return Ok(CompileOutput::Failed { log });
        }
        Err(e) => return Err(api_error(e.0)),
    }
    if !log.trim().is_empty() {
        tracing::debug!("NVRTC log for {}: {log}", name.to_string_lossy());
    }
    let mut size = 0usize;
    // SAFETY: compiled program; `size` valid for writes.
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }
        .result()
        .map_err(|e| api_error(e.0))?;
    if size == 0 {
        return Err(ApiError {
            code: -1,
            message: "NVRTC produced no cubin (the target must be a real sm_XX architecture)"
                .into(),
        });
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| api_error(e.0))?;
    Ok(CompileOutput::Code { code: cubin, log })
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
