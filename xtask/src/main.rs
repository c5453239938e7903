//! `cargo xtask <task>`: project tasks that need nothing but cargo.
//!
//! Each task lives in a module of its own, named for the task.

mod bench_cpu_decode;
mod bench_decode;
mod bench_serve;
mod cargo_build;
mod check_kernels;
mod device_check;
mod fuzz;
mod release_run;
mod serve;
mod soak;
mod test;
mod tiny_model;

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
    /// Build and run `mxserve serve` (with no arguments: the built-in model on 127.0.0.1:8000).
    Serve(serve::Args),
    /// HTTP load benchmark on the built-in model at concurrency 1, 8 and 64.
    BenchServe(bench_serve::Args),
    /// Write a tiny synthetic checkpoint (real expert counts, tiny dims, MXFP4).
    TinyModel(tiny_model::Args),
    /// Decode tokens/s of the CPU forward pass on a synthetic model, and peak memory.
    BenchCpuDecode(bench_cpu_decode::Args),
    /// GPU decode ITL of a Kimi-K2.5-shaped model (weights generated on the device), fusion
    /// on/off, next to the bandwidth floor. Device workflow: build `target/release/bench-decode`
    /// here (`cargo build --release -p model-deepseek --bin bench-decode`), carry it, run it there.
    BenchDecode(bench_decode::Args),
    /// Compile every `*.hip` kernel for NVIDIA (NVRTC) and AMD (hipcc) without a GPU.
    CheckKernels(check_kernels::Args),
    /// Build the runtime's GPU check programs and stage them for the device machine.
    DeviceCheck(device_check::Args),
    /// Fuzzing: write the seed corpus, run the targets, or CI's fuzz step (`fuzz ci`).
    Fuzz(fuzz::Args),
    /// Soak the server: C streaming clients for N minutes, bad requests, disconnects, SIGTERM.
    Soak(soak::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test(args) => test::run(args),
        Task::Serve(args) => serve::run(args),
        Task::BenchServe(args) => bench_serve::run(args),
        Task::TinyModel(args) => tiny_model::run(args),
        Task::BenchCpuDecode(args) => bench_cpu_decode::run(args),
        Task::BenchDecode(args) => bench_decode::run(args),
        Task::CheckKernels(args) => check_kernels::run(args),
        Task::DeviceCheck(args) => device_check::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Soak(args) => soak::run(args),
    }
}
