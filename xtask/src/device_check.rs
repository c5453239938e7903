//! `cargo xtask device-check`: builds the runtime's device programs here and stages them for
//! the GPU machine, then prints the carry list and the command to run there.
//!
//! Staged: `runtime_check` (the runtime-rocm example: correctness against the CPU, disk-cache
//! hit on its second run, device-to-device copy bandwidth, 10 000 alloc/free cycles, a failing
//! launch) and the `runtime_gpu` integration-test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

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
    let builds: [&[&str]; 2] = [
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
            "--no-run",
        ],
    ];
    for build in builds {
        for (name, path) in executables(root, build)? {
            let target = stage.join(&name);
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
            println!("staged {}", target.display());
        }
    }
    let dir = args.stage.display();
    println!("\ncarry: [\"{dir}\"]");
    println!(
        "command: export MXSERVE_KERNEL_CACHE=/tmp/kc; {dir}/runtime_check && {dir}/runtime_check \
         && {dir}/runtime_gpu --test-threads=1"
    );
    Ok(())
}

/// Runs one cargo build and returns (name, path) of each executable it produced.
fn executables(root: &Path, args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !output.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), output.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).context("parsing cargo's JSON output")?;
        if let (Some(path), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    if found.is_empty() {
        bail!("cargo {} produced no executable", args.join(" "));
    }
    Ok(found)
}
