//! `mxserve inspect`.

/// Options of `mxserve inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `mxserve inspect`; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("mxserve inspect is being built in this session")
}
