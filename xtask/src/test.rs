//! `cargo xtask test`: the README's test command. Prepares what the tests need that cargo does
//! not fetch by itself, then runs every test of the workspace.

use std::process::Command;

use anyhow::{Context, bail};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments passed to `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    cargo_args: Vec<String>,
}

/// Runs `cargo test --workspace` with the given extra arguments.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace"])
        .args(&args.cargo_args)
        .status()
        .context("starting cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
