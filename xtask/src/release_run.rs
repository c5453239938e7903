//! Running one of the workspace's programs through `cargo run --release`, for the tasks that
//! measure or serve (unoptimised, the CPU forward pass is one to two orders of magnitude slower).

use std::process::Command;

use anyhow::{Context, bail};

/// Runs `cargo run --release -p <package> <target...> -- <args...>` and waits for it;
/// `what` names the program in errors.
pub fn cargo_run_release(
    package: &str,
    target: &[&str],
    args: &[String],
    what: &str,
) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "-p", package])
        .args(target)
        .arg("--")
        .args(args)
        .status()
        .with_context(|| format!("starting cargo run for {what}"))?;
    if !status.success() {
        bail!("{what} exited with {status}");
    }
    Ok(())
}
