//! `cargo xtask serve [ARGS]`: build `mxserve` and run `mxserve serve ARGS`.
//!
//! It builds in release mode: the CPU forward pass is the model's hot loop, and unoptimised
//! it is one to two orders of magnitude slower, which a first user would take for the
//! server's speed. The first build takes longer; later ones are incremental.

use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `mxserve serve` (see `cargo xtask serve -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

/// Builds and runs the server; returns when it exits.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "-p",
            "server",
            "--bin",
            "mxserve",
            "--",
            "serve",
        ])
        .args(&args.serve_args)
        .status()
        .context("starting cargo run")?;
    if !status.success() {
        bail!("mxserve serve exited with {status}");
    }
    Ok(())
}
