//! `cargo xtask check-kernels`: compiles every `*.hip` file of the workspace for NVIDIA
//! (NVRTC, `sm_90a`) and AMD (hipcc, `gfx90a`) with no GPU, and fails on any error.
//!
//! The compilers come from `.ci/install-kernel-compilers`; source
//! `target/kernel-compilers/env.sh` first (it sets MXSERVE_NVRTC, MXSERVE_CUDA_INCLUDE and
//! MXSERVE_HIPCC).
//!
//! `--code-dir DIR` keeps every code object for reading the machine code without a GPU (how
//! many instructions a loop takes, what the compiler made of a change): `cuobjdump -sass
//! FILE.cubin` (PyPI's `nvidia-cuda-cuobjdump`), `llvm-objdump -d FILE.hsaco`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use runtime_rocm::{Defines, Target, Toolchain, check_tree};

/// Options of `cargo xtask check-kernels`.
#[derive(clap::Args)]
pub struct Args {
    /// Report a missing compiler instead of failing (CI never passes this).
    #[arg(long)]
    allow_missing: bool,
    /// After each NVIDIA compilation, one line per kernel: registers per thread, spilled
    /// bytes and static shared memory, as the assembler reported them.
    #[arg(long)]
    resources: bool,
    /// Write each compilation's code object into this folder (see the module doc).
    #[arg(long)]
    code_dir: Option<PathBuf>,
}

/// Checks every kernel source for both vendors and prints one line per compilation.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace");
    let toolchain = Toolchain::from_env();
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for target in [Target::h100(), Target::gfx90a()] {
        match toolchain.missing(&target) {
            None => targets.push(target),
            Some(err) => missing.push(format!("{target}: {err}")),
        }
    }
    for line in &missing {
        eprintln!("missing compiler: {line}");
    }
    if !missing.is_empty() {
        eprintln!("(run .ci/install-kernel-compilers, then `. target/kernel-compilers/env.sh`)");
        if !args.allow_missing {
            bail!("{} kernel compiler(s) missing", missing.len());
        }
    }

    if let Some(dir) = &args.code_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let results = check_tree(root, &targets, &toolchain)?;
    let mut failures = 0;
    for result in &results {
        let file = result
            .file
            .strip_prefix(root)
            .unwrap_or(&result.file)
            .display();
        let defines = if result.defines == Default::default() {
            "(defaults)".to_owned()
        } else {
            result.defines.to_string()
        };
        match &result.outcome {
            Ok(output) => {
                println!(
                    "ok    {:<14} {file} {defines}: {} bytes ({})",
                    result.target.to_string(),
                    output.code.len(),
                    output.compiler
                );
                if let Some(dir) = &args.code_dir {
                    let relative = result.file.strip_prefix(root).unwrap_or(&result.file);
                    let path = dir.join(code_file_name(relative, &result.target, &result.defines));
                    std::fs::write(&path, &output.code)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                if args.resources {
                    for k in &output.kernels {
                        println!(
                            "        {:<40} {:>3} registers, {} / {} bytes spilled (stores / loads), {} bytes shared",
                            k.kernel, k.registers, k.spill_stores, k.spill_loads, k.shared_bytes
                        );
                    }
                }
            }
            Err(err) => {
                failures += 1;
                println!(
                    "FAIL  {:<14} {file} {defines}:\n{err}",
                    result.target.to_string()
                );
            }
        }
    }
    println!("{} compilations, {failures} failed", results.len());
    if failures > 0 {
        bail!("{failures} kernel compilation(s) failed");
    }
    Ok(())
}

/// `source.arch.defines.ext` for a code object: the source's path in the workspace without its
/// extension, folders joined by `_` (two crates' sources of one name must not overwrite each
/// other), the target architecture, the define set (`defaults`, or `NAME=VALUE` pairs joined by
/// `_`), `cubin` or `hsaco`.
fn code_file_name(relative: &Path, target: &Target, defines: &Defines) -> String {
    let source = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("_");
    let (arch, ext) = match target {
        Target::Nvidia { arch } => (arch, "cubin"),
        Target::Amd { arch, .. } => (arch, "hsaco"),
    };
    let defines = match defines.to_string() {
        d if d.is_empty() => "defaults".to_owned(),
        d => d.replace(' ', "_"),
    };
    format!("{source}.{arch}.{defines}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_objects_are_named_by_source_target_and_defines() {
        let file = Path::new("moe-kernels/kernels/moe.hip");
        assert_eq!(
            code_file_name(file, &Target::h100(), &Defines::new()),
            "moe-kernels_kernels_moe.sm_90a.defaults.cubin"
        );
        let defines = Defines::new().set("MOE_HIDDEN", 256).set("TC_BN", 8);
        assert_eq!(
            code_file_name(file, &Target::gfx90a(), &defines),
            "moe-kernels_kernels_moe.gfx90a.MOE_HIDDEN=256_TC_BN=8.hsaco"
        );
        // Sources of one name in two crates get two files.
        assert_ne!(
            code_file_name(
                Path::new("a/kernels/fill.hip"),
                &Target::h100(),
                &Defines::new()
            ),
            code_file_name(
                Path::new("b/kernels/fill.hip"),
                &Target::h100(),
                &Defines::new()
            )
        );
    }
}
