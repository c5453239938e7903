//! `cargo xtask test`: the README's test command. Prepares what the tests need that cargo does
//! not fetch by itself, then runs every test of the workspace:
//!
//! 1. the kernel compilers (`.ci/install-kernel-compilers`: NVRTC + CUDA headers from PyPI,
//!    Debian's hipcc), so every `*.hip` file is compiled for NVIDIA and AMD — a missing compiler
//!    fails the run instead of skipping;
//! 2. a Python venv with the official `openai` client for the end-to-end server test;
//! 3. `cargo test --workspace` (whose `runtime_kernel_check` test compiles every kernel, as
//!    `cargo xtask check-kernels` does).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The `openai` client the end-to-end test drives the server with (pinned: the test checks
/// wire shapes that client versions interpret).
const OPENAI_CLIENT: &str = "openai==3.57.0";

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Skip preparing the kernel compilers and the Python venv (their tests then report what
    /// is missing instead of failing).
    #[arg(long)]
    no_prepare: bool,
    /// Extra arguments passed to `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    cargo_args: Vec<String>,
}

/// Prepares the test environment and runs `cargo test --workspace`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut env: Vec<(String, String)> = Vec::new();
    if !args.no_prepare {
        env.extend(kernel_compilers(&root)?);
        env.push(("MXSERVE_REQUIRE_KERNEL_COMPILERS".into(), "1".into()));
        let python = openai_venv(&root)?;
        env.push(("MXSERVE_E2E_PYTHON".into(), python.display().to_string()));
    }
    run_step(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["test", "--workspace"])
            .args(&args.cargo_args)
            .envs(env.iter().map(|(k, v)| (k, v))),
        "cargo test --workspace",
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs the idempotent installer and reads the variables it writes to `env.sh`.
fn kernel_compilers(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    run_step(
        Command::new(root.join(".ci/install-kernel-compilers")).current_dir(root),
        ".ci/install-kernel-compilers",
    )?;
    let env_file = root.join("target/kernel-compilers/env.sh");
    let text = std::fs::read_to_string(&env_file)
        .with_context(|| format!("reading {}", env_file.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (key, value) = line
                .strip_prefix("export ")
                .and_then(|rest| rest.split_once('='))
                .with_context(|| format!("{}: unexpected line {line:?}", env_file.display()))?;
            Ok((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

/// Creates (once) `target/py-e2e` with the `openai` client; returns its Python.
fn openai_venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/py-e2e");
    let python = venv.join("bin/python");
    if !python.exists() {
        run_step(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv target/py-e2e",
        )?;
    }
    run_step(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            OPENAI_CLIENT,
        ]),
        "pip install openai",
    )?;
    Ok(python)
}

fn run_step(command: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("== {what}");
    let status = command
        .status()
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
