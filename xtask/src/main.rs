//! `cargo xtask <task>`: project tasks that need nothing but cargo.
//!
//! Each task lives in a module of its own, named for the task.

mod bench_cpu_decode;
mod check_kernels;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mxserve project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole test suite as CI does (the README's test command).
    Test(test::Args),
    /// Compile every `*.hip` kernel for NVIDIA (NVRTC) and AMD (hipcc) without a GPU.
    CheckKernels(check_kernels::Args),
    /// Decode tokens/s of the CPU forward pass on a synthetic model, and peak memory.
    BenchCpuDecode(bench_cpu_decode::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test(args) => test::run(args),
        Task::CheckKernels(args) => check_kernels::run(args),
        Task::BenchCpuDecode(args) => bench_cpu_decode::run(args),
    }
}
