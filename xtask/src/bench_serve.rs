//! `cargo xtask bench-serve [ARGS]`: the HTTP load benchmark on the built-in model
//! (`server/examples/bench_serve.rs`), built in release mode like the server it measures.

use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask bench-serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the benchmark (e.g. `--concurrency 1,8,64 --max-tokens 64`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    bench_args: Vec<String>,
}

/// Builds and runs the benchmark, which prints its table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "-p",
            "server",
            "--example",
            "bench_serve",
            "--",
        ])
        .args(&args.bench_args)
        .status()
        .context("starting cargo run")?;
    if !status.success() {
        bail!("the serving benchmark failed ({status})");
    }
    Ok(())
}
