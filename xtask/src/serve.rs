//! `cargo xtask serve [ARGS]`: build `mxserve` and run `mxserve serve ARGS`.
//!
//! It builds in release mode: the CPU forward pass is the model's hot loop, and unoptimised
//! it is one to two orders of magnitude slower, which a first user would take for the
//! server's speed. The first build takes longer; later ones are incremental.

use crate::release_run::cargo_run_release;

/// Options of `cargo xtask serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `mxserve serve` (see `cargo xtask serve -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

/// Builds and runs the server; returns when it exits.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut serve_args = vec!["serve".to_owned()];
    serve_args.extend(args.serve_args);
    cargo_run_release(
        "server",
        &["--bin", "mxserve"],
        &serve_args,
        "mxserve serve",
    )
}
