//! Compiling kernel sources: on a device (with the disk cache) and, without any device, as a
//! check for a named target (what CI and `cargo xtask check-kernels` run).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::device::Device;
use crate::error::{Error, Result, Vendor};
use crate::gpu::CompileOutput;
use crate::kernel::cache::{CacheKey, KernelCache};
use crate::kernel::launch::{Module, ModuleInner};
use crate::kernel::nvrtc;
use crate::kernel::prelude::with_prelude;
use crate::kernel::resources::{KernelResources, parse_ptxas_log};
use crate::kernel::source::{Defines, KernelSource};

/// Environment variable naming a directory holding `cuda_bf16.h` and the other CUDA headers.
pub const CUDA_INCLUDE_ENV: &str = "MXSERVE_CUDA_INCLUDE";
/// Environment variable naming the `hipcc` to use for checks.
pub const HIPCC_ENV: &str = "MXSERVE_HIPCC";

/// The CUDA header directory: `$MXSERVE_CUDA_INCLUDE`, `$CUDA_PATH/include` or
/// `/usr/local/cuda/include`, whichever first holds `cuda_bf16.h`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os(CUDA_INCLUDE_ENV).map(PathBuf::from),
        std::env::var_os("CUDA_PATH").map(|p| PathBuf::from(p).join("include")),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("cuda_bf16.h").is_file())
}

/// Compiler arguments for one vendor, target and define set.
fn options(
    vendor: Vendor,
    arch: &str,
    wave_size: u32,
    defines: &Defines,
    cuda_include: Option<&Path>,
) -> Vec<String> {
    let mut args = match vendor {
        Vendor::Cuda => vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_owned(),
        ],
        Vendor::Hip => vec![
            format!("--gpu-architecture={arch}"),
            "-O3".to_owned(),
            "-std=c++17".to_owned(),
        ],
    };
    if let Some(dir) = cuda_include {
        args.push(format!("-I{}", dir.display()));
    }
    args.push(format!("-DWARP_SIZE={wave_size}"));
    args.extend(defines.to_args());
    args
}

/// The source text and its name as C strings for the compiler APIs.
fn c_strings(
    source: &KernelSource<'_>,
    text: String,
    arch: &str,
    compiler: &str,
) -> Result<(CString, CString)> {
    let rejected = || Error::Compile {
        source_name: source.name.to_owned(),
        arch: arch.to_owned(),
        compiler: compiler.to_owned(),
        log: "the source text or its name contains a NUL byte".into(),
    };
    let text = CString::new(text).map_err(|_| rejected())?;
    let name = CString::new(source.name).map_err(|_| rejected())?;
    Ok((text, name))
}

impl Device {
    /// Compiles `source` with `defines` for this device, using the cache from
    /// [`KernelCache::from_env`]. See [`Device::compile_with_cache`].
    pub fn compile(&self, source: &KernelSource<'_>, defines: &Defines) -> Result<Module> {
        self.compile_with_cache(source, defines, KernelCache::from_env().as_ref())
    }

    /// Compiles `source` with `defines` (plus `WARP_SIZE`) for this device and loads it; reuses
    /// a cached code object when one exists for the same arch, compiler version, source,
    /// defines and options. Compile errors carry the compiler log.
    pub fn compile_with_cache(
        &self,
        source: &KernelSource<'_>,
        defines: &Defines,
        cache: Option<&KernelCache>,
    ) -> Result<Module> {
        defines.validate()?;
        let dependent_launch = source.dependent_launch()?;
        let Some(gpu) = self.gpu() else {
            return Err(Error::Unsupported {
                operation: format!("compiling kernel source {}", source.name),
                device: self.id(),
            });
        };
        let vendor = gpu.vendor();
        let arch = gpu.compile_arch().to_owned();
        let compiler = self.check(
            gpu.compiler_version(),
            format!("load the compiler for {}", source.name),
        )?;
        let include = match vendor {
            Vendor::Cuda => Some(cuda_include_dir().ok_or_else(|| Error::CompilerMissing {
                compiler: compiler.clone(),
                reason: format!(
                    "no directory with cuda_bf16.h; set {CUDA_INCLUDE_ENV} (or CUDA_PATH, or install \
                     the headers in /usr/local/cuda/include)"
                ),
            })?),
            Vendor::Hip => None,
        };
        let args = options(
            vendor,
            &arch,
            self.info().wave_size,
            defines,
            include.as_deref(),
        );
        let text = with_prelude(vendor, source.name, source.code);
        let key = CacheKey::new(
            [
                "mxserve-kernel-v1",
                &vendor.to_string(),
                &arch,
                &compiler,
                &text,
            ]
            .into_iter()
            .chain(args.iter().map(String::as_str)),
        );

        if let Some(code) = cache.and_then(|c| c.get(&key)) {
            match self.load_module(source.name, &code, true, dependent_launch) {
                Ok(module) => return Ok(module),
                // A stale or foreign entry that passed its checksum: rebuild it below.
                Err(err) => tracing::warn!(
                    "cached code for {} did not load ({err}); recompiling",
                    source.name
                ),
            }
        }
        let started = std::time::Instant::now();
        let (code_text, name) = c_strings(source, text, &arch, &compiler)?;
        let output = self.check(
            gpu.compile(&code_text, &name, &args),
            format!("compile {}", source.name),
        )?;
        let code = match output {
            CompileOutput::Code { code, .. } => code,
            CompileOutput::Failed { log } => {
                return Err(Error::Compile {
                    source_name: source.name.to_owned(),
                    arch,
                    compiler,
                    log,
                });
            }
        };
        tracing::info!(
            "compiled {} for {arch} in {:.0?}",
            source.name,
            started.elapsed()
        );
        if let Some(cache) = cache {
            cache.put(&key, &code);
        }
        self.load_module(source.name, &code, false, dependent_launch)
    }

    fn load_module(
        &self,
        source_name: &str,
        code: &[u8],
        cache_hit: bool,
        dependent_launch: bool,
    ) -> Result<Module> {
        let gpu = self
            .gpu()
            .expect("load_module is only called for GPU devices");
        // SAFETY: `code` is a code object compiled for this device's arch.
        let raw = self.check(
            unsafe { gpu.module_load(code) },
            format!("load module {source_name}"),
        )?;
        Ok(Module {
            inner: Arc::new(ModuleInner {
                device: self.clone(),
                raw,
                source_name: source_name.to_owned(),
                cache_hit,
                dependent_launch,
            }),
        })
    }
}

/// A compilation target for [`check`], needing no device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// NVIDIA through NVRTC, e.g. `sm_90a`.
    Nvidia {
        /// `sm_XX` or `sm_XXa`.
        arch: String,
    },
    /// AMD through hipcc, e.g. `gfx90a` with 64-wide waves.
    Amd {
        /// `gfxXXX` (hipcc `--offload-arch`).
        arch: String,
        /// The target's wave size (`WARP_SIZE`).
        wave_size: u32,
    },
}

impl Target {
    /// The H100 (`sm_90a`, wave 32).
    pub fn h100() -> Target {
        Target::Nvidia {
            arch: "sm_90a".into(),
        }
    }

    /// MI200 (`gfx90a`, wave 64): the newest target Debian 12's hipcc compiles.
    pub fn gfx90a() -> Target {
        Target::Amd {
            arch: "gfx90a".into(),
            wave_size: 64,
        }
    }

    fn arch(&self) -> &str {
        match self {
            Target::Nvidia { arch } | Target::Amd { arch, .. } => arch,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Nvidia { arch } => write!(f, "NVIDIA {arch}"),
            Target::Amd { arch, .. } => write!(f, "AMD {arch}"),
        }
    }
}

/// What a successful [`check`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutput {
    /// Compiler and version.
    pub compiler: String,
    /// The code object (a cubin for NVIDIA, an hsaco for AMD), for offline disassembly.
    pub code: Vec<u8>,
    /// Each kernel's registers, spills and shared memory (NVIDIA; empty for AMD).
    pub kernels: Vec<KernelResources>,
}

/// Where the offline compilers are: NVRTC is found through `MXSERVE_NVRTC` or the loader path,
/// its headers through [`cuda_include_dir`], hipcc through `MXSERVE_HIPCC` or `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// CUDA header directory for NVRTC.
    pub cuda_include: Option<PathBuf>,
    /// The hipcc executable.
    pub hipcc: Option<PathBuf>,
}

impl Toolchain {
    /// Discovers the compilers from the environment.
    pub fn from_env() -> Toolchain {
        let hipcc = std::env::var_os(HIPCC_ENV).map(PathBuf::from).or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("hipcc"))
                    .find(|p| p.is_file())
            })
        });
        Toolchain {
            cuda_include: cuda_include_dir(),
            hipcc,
        }
    }

    /// Why the compiler for `target` cannot run, or `None` when it can.
    pub fn missing(&self, target: &Target) -> Option<Error> {
        match target {
            Target::Nvidia { .. } => {
                if let Err(reason) = nvrtc::load() {
                    return Some(Error::CompilerMissing {
                        compiler: "NVRTC".into(),
                        reason,
                    });
                }
                self.cuda_include.is_none().then(|| Error::CompilerMissing {
                    compiler: "NVRTC".into(),
                    reason: format!("no CUDA headers (cuda_bf16.h); set {CUDA_INCLUDE_ENV}"),
                })
            }
            Target::Amd { .. } => self.hipcc.is_none().then(|| Error::CompilerMissing {
                compiler: "hipcc".into(),
                reason: format!("not on PATH; install Debian's hipcc or set {HIPCC_ENV}"),
            }),
        }
    }
}

/// Compiles `source` for `target` without a device, failing with the compiler log on any
/// error. NVIDIA uses NVRTC in-process; AMD runs `hipcc --genco` on a temporary file.
pub fn check(
    source: &KernelSource<'_>,
    defines: &Defines,
    target: &Target,
    toolchain: &Toolchain,
) -> Result<CheckOutput> {
    defines.validate()?;
    source.dependent_launch()?;
    if let Some(missing) = toolchain.missing(target) {
        return Err(missing);
    }
    match target {
        Target::Nvidia { arch } => {
            let compiler = nvrtc::load().expect("checked by Toolchain::missing");
            let mut args = options(
                Vendor::Cuda,
                arch,
                32,
                defines,
                toolchain.cuda_include.as_deref(),
            );
            // The assembler's per-kernel report (registers, spills), read into `kernels`.
            args.push("--ptxas-options=-v".to_owned());
            let full_text = with_prelude(Vendor::Cuda, source.name, source.code);
            let (text, name) = c_strings(source, full_text, arch, &compiler)?;
            let output = nvrtc::compile(&text, &name, &args).map_err(|e| Error::Compile {
                source_name: source.name.to_owned(),
                arch: arch.clone(),
                compiler: compiler.clone(),
                log: format!("NVRTC error: {} (code {})", e.message, e.code),
            })?;
            match output {
                CompileOutput::Code { code, log } => Ok(CheckOutput {
                    compiler,
                    code,
                    kernels: parse_ptxas_log(&log),
                }),
                CompileOutput::Failed { log } => Err(Error::Compile {
                    source_name: source.name.to_owned(),
                    arch: arch.clone(),
                    compiler,
                    log,
                }),
            }
        }
        Target::Amd { arch, wave_size } => {
            let hipcc = toolchain
                .hipcc
                .as_deref()
                .expect("checked by Toolchain::missing");
            hipcc_check(hipcc, source, defines, target.arch(), *wave_size).map_err(|log| {
                Error::Compile {
                    source_name: source.name.to_owned(),
                    arch: arch.clone(),
                    compiler: format!("hipcc ({})", hipcc.display()),
                    log,
                }
            })
        }
    }
}

fn hipcc_check(
    hipcc: &Path,
    source: &KernelSource<'_>,
    defines: &Defines,
    arch: &str,
    wave_size: u32,
) -> Result<CheckOutput, String> {
    // Unique per call: checks run concurrently (tests, several targets).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "mxserve-hipcc-{}-{call}-{}",
        std::process::id(),
        CacheKey::new([source.name, arch]).short()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let input = dir.join("kernel.hip");
    let output = dir.join("kernel.hsaco");
    let result = (|| {
        std::fs::write(&input, with_prelude(Vendor::Hip, source.name, source.code))
            .map_err(|e| format!("writing {}: {e}", input.display()))?;
        let mut command = Command::new(hipcc);
        command
            .arg(format!("--offload-arch={arch}"))
            .args(["--genco", "-O3", "-std=c++17"])
            .arg(format!("-DWARP_SIZE={wave_size}"))
            .args(defines.to_args())
            .arg(&input)
            .arg("-o")
            .arg(&output);
        let run = command
            .output()
            .map_err(|e| format!("running {}: {e}", hipcc.display()))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        if !run.status.success() {
            return Err(format!(
                "{} exited with {}:\n{log}",
                hipcc.display(),
                run.status
            ));
        }
        let code = std::fs::read(&output)
            .map_err(|e| format!("hipcc wrote no code object: {e}\n{log}"))?;
        Ok(CheckOutput {
            compiler: "hipcc".into(),
            code,
            kernels: Vec::new(),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Every `*.hip` file under `root`, sorted, skipping `target/` and hidden directories.
pub fn find_kernel_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            operation: "listing",
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    operation: "listing",
                    path: dir.clone(),
                    source,
                })?
                .path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if name.ends_with(".hip") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The result of checking one file for one target and one define set.
#[derive(Debug)]
pub struct CheckResult {
    /// The `.hip` file.
    pub file: PathBuf,
    /// The target compiled for.
    pub target: Target,
    /// The defines used (empty for the default configuration).
    pub defines: Defines,
    /// What the compiler produced, or why it failed.
    pub outcome: Result<CheckOutput>,
}

/// Compiles every `*.hip` under `root` for every target, in every configuration its
/// `// check-defines:` lines name. Compile failures are results; a file that cannot be read or
/// has an invalid `// check-defines:` line is an error of the whole call.
pub fn check_tree(
    root: &Path,
    targets: &[Target],
    toolchain: &Toolchain,
) -> Result<Vec<CheckResult>> {
    let mut results = Vec::new();
    for file in find_kernel_files(root)? {
        let code = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            operation: "reading",
            path: file.clone(),
            source,
        })?;
        let display = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let source = KernelSource::new(&display, &code);
        let configurations = source.check_configurations()?;
        for target in targets {
            for defines in &configurations {
                results.push(CheckResult {
                    file: file.clone(),
                    target: target.clone(),
                    defines: defines.clone(),
                    outcome: check(&source, defines, target, toolchain),
                });
            }
        }
    }
    Ok(results)
}
