//! `mxserve`: the command-line entry point. Each subcommand lives in `cli/<name>.rs`.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mxserve",
    version,
    about = "Serve DeepSeek-V3-family MXFP4 MoE models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI-compatible HTTP API.
    Serve(cli::serve::Args),
    /// Check a checkpoint before serving it: schemes, fusion decisions, skipped tensors, problems.
    Inspect(cli::inspect::Args),
    /// Run the model on prompt token ids and print the generated ids.
    Generate(cli::generate::Args),
}

fn main() -> anyhow::Result<()> {
    let code = match Cli::parse().command {
        Command::Serve(args) => cli::serve::run(args)?,
        Command::Inspect(args) => cli::inspect::run(args)?,
        Command::Generate(args) => cli::generate::run(args)?,
    };
    std::process::exit(code);
}
