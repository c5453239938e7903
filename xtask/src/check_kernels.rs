//! `cargo xtask check-kernels`: compiles every `*.hip` file of the workspace for NVIDIA
//! (NVRTC, `sm_90a`) and AMD (hipcc, `gfx90a`) with no GPU, and fails on any error.
//!
//! The compilers come from `.ci/install-kernel-compilers`; source
//! `target/kernel-compilers/env.sh` first (it sets MXSERVE_NVRTC, MXSERVE_CUDA_INCLUDE and
//! MXSERVE_HIPCC).

use std::path::Path;

use anyhow::bail;
use runtime_rocm::{Target, Toolchain, check_tree};

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
                    output.code_bytes,
                    output.compiler
                );
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
