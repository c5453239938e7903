//! `cargo xtask tiny-model`: write a tiny synthetic checkpoint (random weights from a seed, real
//! expert counts, Quark MXFP4) in a published layout, with a byte-level tokenizer.

use std::path::PathBuf;

use anyhow::Context;
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};

/// Options of `cargo xtask tiny-model`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write (created if missing; existing files are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Tensor-name layout: deepseek, kimi-k25 or kimi-k25-flat.
    #[arg(long, default_value = "deepseek")]
    layout: TinyLayout,
    /// Shared-expert storage: quantized (MXFP4, fusable) or bf16 (not fusable).
    #[arg(long, default_value = "quantized")]
    shared_experts: SharedExperts,
    /// Routed experts per MoE layer: 256 (DeepSeek-V3) or 384 (Kimi).
    #[arg(long, default_value_t = 256, value_parser = parse_experts)]
    experts: usize,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_experts(s: &str) -> Result<usize, String> {
    match s {
        "256" => Ok(256),
        "384" => Ok(384),
        other => Err(format!(
            "{other} is not a published expert count (256 or 384)"
        )),
    }
}

/// Writes the checkpoint.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = TinySpec {
        layout: args.layout,
        shared_experts: args.shared_experts,
        n_routed_experts: args.experts,
        n_shared_experts: 1,
        seed: args.seed,
    };
    write_tiny_checkpoint(&args.out, &spec)
        .with_context(|| format!("writing a tiny checkpoint to {}", args.out.display()))?;
    println!("wrote {spec:?} to {}", args.out.display());
    Ok(())
}
