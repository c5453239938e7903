//! `cargo xtask bench-decode`: builds `bench-decode` (in `model-deepseek`) in release and runs
//! it on this machine's GPU — decode inter-token latency of a Kimi-K2.5-shaped model at
//! concurrency 1, 4, 16, 64, shared-expert fusion on and off, decode graphs on and off, next to
//! the bandwidth floor.
//!
//! The model's weights are generated on the GPU from a seed (a checkpoint of the ~60 GB one
//! card holds could not be written to and read from the device machine's disk in the
//! benchmark's time); it takes as many of Kimi-K2.5's 61 layers as fit.
//!
//! Device workflow (the device machine has no toolchain time to spare):
//! 1. here: `cargo build --release -p model-deepseek --bin bench-decode`;
//! 2. carry `target/release/bench-decode` to the device machine and run
//!    `target/release/bench-decode` there (under 3 minutes on an H100, kernel compilation
//!    included); `--help` lists its options.
//!
//! `cargo xtask bench-decode -- ARGS` does both steps on a machine that has the GPU.

use crate::release_run::cargo_run_release;

/// Options of `cargo xtask bench-decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed to `bench-decode` (e.g. `--concurrency 1,4 --steps 8 --layers 3`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Builds `bench-decode` in release and runs it.
pub fn run(args: Args) -> anyhow::Result<()> {
    cargo_run_release(
        "model-deepseek",
        &["--bin", "bench-decode"],
        &args.args,
        "bench-decode",
    )
}
