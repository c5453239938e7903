//! `cargo xtask device-check`: builds every program that needs a GPU here (the device machine
//! has no Rust), stages them in one folder, then prints the carry list and the command that
//! runs them all there.
//!
//! Staged: `runtime_check` (the runtime-rocm example: correctness against the CPU, disk-cache
//! hit on its second run, device-to-device copy bandwidth, 10 000 alloc/free cycles, a failing
//! launch), every GPU integration-test binary (each skips with a message on a machine without
//! a GPU, so here they pass vacuously and only the device run counts), and the benchmarks.

use std::path::{Path, PathBuf};

use std::process::Command;

use anyhow::Context;

use crate::cargo_build;

/// Options of `cargo xtask device-check`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder (relative to the workspace root) to stage the binaries in. The default is under
    /// the git-ignored `target/`, so it travels only when named in `carry`.
    #[arg(long, default_value = "target/device-stage")]
    stage: PathBuf,
}

/// Builds in release mode, copies the executables into the stage folder, prints the workflow.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace");
    let stage = root.join(&args.stage);
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let builds: [&[&str]; 6] = [
        &[
            "build",
            "--release",
            "-p",
            "runtime-rocm",
            "--example",
            "runtime_check",
        ],
        &[
            "test",
            "--release",
            "-p",
            "tests",
            "--test",
            "runtime_gpu",
            "--test",
            "server_gpu",
            "--no-run",
        ],
        &[
            "test",
            "--release",
            "-p",
            "moe-kernels",
            "--test",
            "gpu_moe",
            "--test",
            "gpu_model_ops",
            "--test",
            "gpu_sampling",
            "--no-run",
        ],
        &[
            "test",
            "--release",
            "-p",
            "model-deepseek",
            "--test",
            "gpu_forward",
            "--test",
            "gpu_sampled",
            "--test",
            "gpu_synthetic",
            "--no-run",
        ],
        &[
            "test",
            "--release",
            "-p",
            "server",
            "--test",
            "gpu_backend",
            "--no-run",
        ],
        &[
            "build",
            "--release",
            "-p",
            "moe-kernels",
            "--bin",
            "moe-bench",
            "--bin",
            "sample-bench",
            "-p",
            "model-deepseek",
            "--bin",
            "bench-decode",
        ],
    ];
    for build in builds {
        for (name, path) in cargo_build::executables(root, build)? {
            let target = stage.join(&name);
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
            strip(&target);
            println!("staged {}", target.display());
        }
    }
    let dir = args.stage.display();
    println!("\ncarry: [\"{dir}\"]");
    println!(
        "command: export MXSERVE_KERNEL_CACHE=/tmp/kc; {dir}/runtime_check && {dir}/runtime_check \
         && for t in runtime_gpu gpu_moe gpu_model_ops gpu_sampling gpu_forward gpu_sampled \
         gpu_synthetic gpu_backend server_gpu; do {dir}/$t || exit; done; {dir}/moe-bench; \
         {dir}/bench-decode; {dir}/sample-bench"
    );
    Ok(())
}

/// Drops the debug information (the release profile keeps it for profiling): the device
/// machine receives at most 64 MiB per call, and the staged programs are ~10× smaller
/// stripped. Without a `strip` program the file stays as it is.
fn strip(path: &Path) {
    match Command::new("strip").arg(path).status() {
        Ok(status) if status.success() => {}
        other => eprintln!("not stripped ({other:?}): {}", path.display()),
    }
}
