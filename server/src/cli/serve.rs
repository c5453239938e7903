//! `mxserve serve`.

/// Options of `mxserve serve`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `mxserve serve`; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("mxserve serve is being built in this session")
}
