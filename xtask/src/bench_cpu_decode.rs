//! `cargo xtask bench-cpu-decode`: decode throughput of the CPU forward pass on a synthetic
//! model, and the process's peak memory. Build with `--release` for meaningful numbers:
//! `cargo run --release -p xtask -- bench-cpu-decode`.

use std::time::Instant;

use anyhow::{Context, bail};
use model_deepseek::synthetic::{SyntheticSpec, synthetic_weights};
use model_deepseek::{
    ActivationMode, ForwardOptions, KvCache, Model, SeqId, SequenceChunk, parse_config,
};

/// Options of `cargo xtask bench-cpu-decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Routed experts (256: DeepSeek-V3 routing, 384: Kimi routing).
    #[arg(long, default_value_t = 256)]
    experts: usize,
    /// Model dimensions: `tiny` (the built-in model's: hidden 64, 3 layers) or `small`
    /// (hidden 512, 4 layers).
    #[arg(long, default_value = "tiny")]
    size: Size,
    /// Prompt tokens prefilled per sequence before decoding.
    #[arg(long, default_value_t = 32)]
    prompt: usize,
    /// Tokens decoded per sequence.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Batch sizes (sequences decoded together), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch: Vec<usize>,
    /// Keep W4A4 activations unquantized.
    #[arg(long)]
    unquantized: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Size {
    Tiny,
    Small,
}

fn config_json(size: Size, experts: usize) -> String {
    let (n_group, topk_group) = if experts == 256 { (8, 4) } else { (1, 1) };
    let dims = match size {
        Size::Tiny => [64, 3, 384, 4, 32, 32, 16, 8, 16, 32, 96],
        Size::Small => [512, 4, 4096, 8, 128, 128, 32, 16, 32, 128, 512],
    };
    let [
        hidden,
        layers,
        vocab,
        heads,
        q_lora,
        kv_lora,
        nope,
        rope,
        v,
        moe_inter,
        inter,
    ] = dims;
    format!(
        r#"{{
        "architectures": ["DeepseekV3ForCausalLM"],
        "vocab_size": {vocab}, "hidden_size": {hidden}, "num_hidden_layers": {layers},
        "num_attention_heads": {heads}, "q_lora_rank": {q_lora}, "kv_lora_rank": {kv_lora},
        "qk_nope_head_dim": {nope}, "qk_rope_head_dim": {rope}, "v_head_dim": {v},
        "moe_intermediate_size": {moe_inter}, "intermediate_size": {inter},
        "n_routed_experts": {experts}, "n_shared_experts": 1, "num_experts_per_tok": 8,
        "n_group": {n_group}, "topk_group": {topk_group}, "first_k_dense_replace": 1,
        "max_position_embeddings": 4096,
        "rope_scaling": {{"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}
    }}"#
    )
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> anyhow::Result<usize> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM line")?
        .parse()
        .context("malformed VmHWM value")?;
    Ok(kib * 1024)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Builds the model, prefills each batch, decodes greedily, prints one table row per batch.
pub fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: unoptimised build; use `cargo run --release -p xtask -- bench-cpu-decode`"
        );
    }
    if args.prompt == 0 || args.tokens == 0 || args.batch.contains(&0) {
        bail!("--prompt, --tokens and every --batch size must be at least 1");
    }
    let config = parse_config(&config_json(args.size, args.experts))?.model;
    let weights = synthetic_weights(&config, &SyntheticSpec::quark_w4a4(), 0)?;
    let weight_bytes = weights.size_bytes();
    let activations = if args.unquantized {
        ActivationMode::Unquantized
    } else {
        ActivationMode::Quantized
    };
    let model = Model::new(config.clone(), weights, ForwardOptions { activations })?;
    println!(
        "model: hidden {}, {} layers, {} experts (+{} shared), top-{}, vocab {}; weights {:.1} MiB; {} cores",
        config.hidden_size,
        config.num_hidden_layers,
        config.n_routed_experts,
        config.n_shared_experts,
        config.num_experts_per_tok,
        config.vocab_size,
        weight_bytes as f64 / (1 << 20) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!("| batch | prefill tok/s | decode tok/s | ms / step |");
    println!("|------:|--------------:|-------------:|----------:|");
    for &batch in &args.batch {
        let capacity = batch * (args.prompt + args.tokens);
        let mut cache = KvCache::new(&config, capacity);
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|s| {
                (0..args.prompt)
                    .map(|i| ((s * 31 + i * 7) % config.vocab_size) as u32)
                    .collect()
            })
            .collect();
        let start = Instant::now();
        let chunks: Vec<SequenceChunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(s, p)| SequenceChunk {
                seq: SeqId(s as u64),
                tokens: p,
            })
            .collect();
        let mut last: Vec<u32> = model
            .forward(&chunks, &mut cache)?
            .iter()
            .map(|l| argmax(l))
            .collect();
        let prefill = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..args.tokens {
            let step: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
            let chunks: Vec<SequenceChunk<'_>> = step
                .iter()
                .enumerate()
                .map(|(s, t)| SequenceChunk {
                    seq: SeqId(s as u64),
                    tokens: t,
                })
                .collect();
            last = model
                .forward(&chunks, &mut cache)?
                .iter()
                .map(|l| argmax(l))
                .collect();
        }
        let decode = start.elapsed().as_secs_f64();
        println!(
            "| {batch:>5} | {:>13.0} | {:>12.1} | {:>9.2} |",
            (batch * args.prompt) as f64 / prefill,
            (batch * args.tokens) as f64 / decode,
            decode * 1e3 / args.tokens as f64,
        );
    }
    println!(
        "peak resident memory: {:.1} MiB (weights {:.1} MiB)",
        peak_rss()? as f64 / (1 << 20) as f64,
        weight_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
