//! `mxserve generate`: run the model on prompt token ids and print the generated ids.

use std::path::PathBuf;

use anyhow::{Context, bail};
use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::{KvCache, SeqId, SequenceChunk};
use server::sampling::{Sampler, SamplingParams};

/// Activation handling as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivationsArg {
    /// As the checkpoint's input spec says (dynamic MXFP4 per 32 for W4A4 layers).
    Quantized,
    /// Unquantized activations (weight-only MXFP4; f32 arithmetic on the CPU).
    Bf16,
}

/// Options of `mxserve generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    pub dir: PathBuf,
    /// Prompt token ids, comma separated (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate (always exactly this many: end-of-sequence does not stop early, so
    /// `--logits-out` shapes are fixed).
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    /// Pick the most likely token at every step (ties go to the lowest id).
    #[arg(long)]
    pub greedy: bool,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature (ignored with --greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Shared-expert fusion mode: auto, on or off.
    #[arg(long, default_value = "auto")]
    pub fusion: FusionMode,
    /// Activation handling of W4A4 layers.
    #[arg(long, value_enum, default_value_t = ActivationsArg::Quantized)]
    pub activations: ActivationsArg,
    /// Write `prompt_logits` f32 [prompt_len, vocab], `generated_logits` f32 [max_tokens, vocab]
    /// and `generated_ids` i64 [max_tokens] to this safetensors file.
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
}

/// Picks the next token with the server's sampler, after refusing non-finite logits.
fn choose(logits: &[f32], sampler: &mut Sampler) -> anyhow::Result<u32> {
    if let Some((i, v)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!("logit {i} is {v}: the model produced a non-finite value");
    }
    sampler
        .sample(logits)
        .ok_or_else(|| anyhow::anyhow!("no logit is a number"))
}

fn write_logits(
    path: &std::path::Path,
    vocab: usize,
    prompt: &[f32],
    generated: &[f32],
    ids: &[u32],
) -> anyhow::Result<()> {
    use safetensors::{Dtype, tensor::TensorView};
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let prompt_bytes = f32_bytes(prompt);
    let generated_bytes = f32_bytes(generated);
    let id_bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| i64::from(i).to_le_bytes())
        .collect();
    let views = vec![
        (
            "prompt_logits",
            TensorView::new(Dtype::F32, vec![prompt.len() / vocab, vocab], &prompt_bytes)?,
        ),
        (
            "generated_logits",
            TensorView::new(Dtype::F32, vec![ids.len(), vocab], &generated_bytes)?,
        ),
        (
            "generated_ids",
            TensorView::new(Dtype::I64, vec![ids.len()], &id_bytes)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `mxserve generate`; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let options = LoadOptions {
        fusion: args.fusion,
        activations: match args.activations {
            ActivationsArg::Quantized => ActivationMode::Quantized,
            ActivationsArg::Bf16 => ActivationMode::Unquantized,
        },
    };
    let loaded = match loader::load(&args.dir, &options) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    eprintln!("fusion: {}", loaded.report.fusion.model.reason);
    let model = loaded.model;
    let vocab = model.config().vocab_size;
    let mut cache = KvCache::new(model.config(), args.prompt_ids.len() + args.max_tokens);
    let seq = SeqId(0);
    let prompt = model
        .forward_all_positions(
            &[SequenceChunk {
                seq,
                tokens: &args.prompt_ids,
            }],
            &mut cache,
        )
        .context("prompt forward pass")?
        .pop()
        .context("the forward pass returned no logits")?;
    let temperature = if args.greedy {
        0.0
    } else if args.temperature.is_finite() && args.temperature > 0.0 {
        args.temperature
    } else {
        bail!(
            "--temperature must be a positive number, got {}",
            args.temperature
        );
    };
    let mut sampler = Sampler::new(SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
        seed: args.seed,
    });
    let mut generated_logits = Vec::with_capacity(args.max_tokens * vocab);
    let mut ids = Vec::with_capacity(args.max_tokens);
    let mut logits = prompt.row(prompt.rows - 1).to_vec();
    for step in 0..args.max_tokens {
        let id = choose(&logits, &mut sampler)?;
        generated_logits.extend_from_slice(&logits);
        ids.push(id);
        if step + 1 < args.max_tokens {
            logits = model
                .forward(&[SequenceChunk { seq, tokens: &[id] }], &mut cache)
                .context("decode step")?
                .pop()
                .context("the forward pass returned no logits")?;
        }
    }
    let text: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("{}", text.join(","));
    if let Some(path) = &args.logits_out {
        write_logits(path, vocab, &prompt.data, &generated_logits, &ids)?;
    }
    Ok(0)
}
