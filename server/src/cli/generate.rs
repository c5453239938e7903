//! `mxserve generate`.

/// Options of `mxserve generate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `mxserve generate`; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("mxserve generate is being built in this session")
}
