//! `bench-decode`: batched decode of a Kimi-K2.5-shaped model on one GPU, fusion on and off,
//! next to the bandwidth floor of the bytes each step must read.
//!
//! The model has Kimi-K2.5's real layer dimensions (hidden 7168, 64 heads, MLA with q_lora
//! 1536 / kv_lora 512, 384 routed + 1 shared MXFP4 experts, top-8, the dense first layer,
//! vocab 163840) and as many layers as fit the device next to the KV cache and workspace.
//! Its weights are generated in device memory from a seed: a checkpoint of that size (~60 GB
//! for the layers one 80 GB card holds, ~600 GB for all 61) cannot be written to and read from
//! the device machine's disk in a benchmark's time.
//!
//! For each concurrency c, c sequences get a random prompt, then decode steps run with the
//! shared expert fused and unfused, each with decode graphs on and off (`--graphs`: replayed
//! from a captured graph, or one launch per op), in turn (the same weights, interleaved so
//! every mode sees the same context lengths and clocks). A step that captures a graph (the
//! first of its batch size and attention bucket) is timed too; the median hides the few. Inter-token latency (ITL) is the median wall time of a
//! step (`GpuModel::forward_sampled` with a greedy pick on the device, as the server decodes:
//! one token per sequence comes back, no logits).
//! The floor is the bytes the step must move (`decode_step_bytes`: dense and attention
//! weights, routers, the expected distinct experts of c tokens × top-8 plus the shared one,
//! the KV rows read and written, embedding rows, `lm_head`) divided by the device-to-device
//! copy bandwidth measured in the same run.
//!
//! `--dependent-launch off` launches every kernel after the one before it has finished; by
//! default, where the device supports it (NVIDIA sm_90+), a kernel's launch overlaps the end of
//! the one before it (`Device::dependent_launch`).
//!
//! ```text
//! bench-decode [--device auto] [--concurrency 1,4,16,64] [--steps 16] [--prompt 16]
//!              [--layers N] [--seed 7] [--graphs on,off] [--dependent-launch on|off]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use model_deepseek::gpu::blocks::blocks_for;
use model_deepseek::gpu::synthetic::{
    KIMI_K25_LAYERS, decode_step_bytes, kimi_k25_config, kimi_k25_layers_that_fit, synthetic_plan,
};
use model_deepseek::gpu::{GpuKvCache, GpuModel, GpuOptions, KvBudget};
use model_deepseek::sampling::{ChunkPick, Picked, SampledChunk, SamplingRule};
use model_deepseek::{SeqId, SequenceChunk};
use moe_kernels::gpu::{copy_bandwidth, median};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_rocm::Device;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Most tokens per forward call: prompts are prefilled this many tokens at a time.
const MAX_BATCH_TOKENS: usize = 256;

struct Args {
    device: String,
    concurrency: Vec<usize>,
    steps: usize,
    prompt: usize,
    layers: Option<usize>,
    seed: u32,
    /// Graph settings to measure, in turn.
    graphs: Vec<bool>,
    /// Dependent launch on or off; the device's default when not given.
    dependent_launch: Option<bool>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        device: "auto".into(),
        concurrency: vec![1, 4, 16, 64],
        steps: 16,
        prompt: 16,
        layers: None,
        seed: 7,
        graphs: vec![true, false],
        dependent_launch: None,
    };
    let on_off = |flag: &str, v: &str| match v {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{flag}: {other}: expected on or off")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |flag: &str, v: String| -> Result<usize> {
            Ok(v.parse().map_err(|e| format!("{flag}: {v}: {e}"))?)
        };
        match flag.as_str() {
            "--device" => args.device = value()?,
            "--concurrency" => {
                args.concurrency = value()?
                    .split(',')
                    .map(|c| number("--concurrency", c.to_owned()))
                    .collect::<Result<_>>()?
            }
            "--steps" => args.steps = number("--steps", value()?)?,
            "--prompt" => args.prompt = number("--prompt", value()?)?,
            "--layers" => args.layers = Some(number("--layers", value()?)?),
            "--seed" => args.seed = number("--seed", value()?)? as u32,
            "--graphs" => {
                args.graphs = value()?
                    .split(',')
                    .map(|g| on_off("--graphs", g))
                    .collect::<std::result::Result<_, _>>()?
            }
            "--dependent-launch" => {
                args.dependent_launch = Some(on_off("--dependent-launch", &value()?)?)
            }
            "--help" | "-h" => {
                println!(
                    "bench-decode [--device auto] [--concurrency 1,4,16,64] [--steps 16] \
                     [--prompt 16] [--layers N] [--seed 7] [--graphs on,off] \
                     [--dependent-launch on|off]\n\n\
                     Decode ITL of a Kimi-K2.5-shaped model (weights generated on the GPU \
                     from the seed; as many layers as fit unless --layers), fusion on and off, \
                     decode graphs as listed, next to the bandwidth floor. See the source's \
                     doc comment."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err("--concurrency must list positive sizes".into());
    }
    if args.graphs.is_empty() {
        return Err("--graphs must list on and/or off".into());
    }
    if args.steps == 0 || args.prompt == 0 {
        return Err("--steps and --prompt must be positive".into());
    }
    if args.concurrency.iter().any(|&c| c > MAX_BATCH_TOKENS) || args.prompt > MAX_BATCH_TOKENS {
        return Err(format!("--concurrency and --prompt go up to {MAX_BATCH_TOKENS}").into());
    }
    Ok(args)
}

/// Starts `c` sequences with random prompts of `prompt` tokens (prefilled a few sequences per
/// call) and returns each one's first generated token. All the benchmark's cache handling is
/// here and in [`finish_sequences`].
fn start_sequences(
    model: &mut GpuModel,
    cache: &mut GpuKvCache,
    c: usize,
    prompt: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<(SeqId, u32)>> {
    let vocab = model.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..c)
        .map(|_| (0..prompt).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let per_call = (MAX_BATCH_TOKENS / prompt).max(1);
    let mut out = Vec::with_capacity(c);
    for (group, prompts) in prompts.chunks(per_call).enumerate() {
        let chunks: Vec<SampledChunk<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| greedy(SeqId((group * per_call + i) as u64), p))
            .collect();
        let picked = model.forward_sampled(&chunks, cache)?;
        for (chunk, pick) in chunks.iter().zip(picked) {
            out.push((chunk.chunk.seq, token_of(pick)?));
        }
    }
    Ok(out)
}

/// A chunk whose next token is picked greedily on the device, as the server decodes.
fn greedy(seq: SeqId, tokens: &[u32]) -> SampledChunk<'_> {
    SampledChunk {
        chunk: SequenceChunk { seq, tokens },
        pick: Some(ChunkPick {
            rule: SamplingRule::GREEDY,
            u: 0.0,
            logits: false,
        }),
    }
}

fn token_of(pick: Option<Picked>) -> Result<u32> {
    Ok(pick.ok_or("a greedy pick returned no token")?.token)
}

fn finish_sequences(cache: &mut GpuKvCache, seqs: &[(SeqId, u32)]) {
    for (seq, _) in seqs {
        cache.free(*seq);
    }
}

struct Row {
    concurrency: usize,
    fused: bool,
    graphs: bool,
    itl_s: f64,
    floor_s: f64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-decode: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let device = Device::parse_and_open(&args.device)?;
    if device.is_cpu() {
        return Err("no GPU found: bench-decode measures the GPU forward pass".into());
    }
    if let Some(on) = args.dependent_launch {
        device.set_dependent_launch(on)?;
    }
    let copy_bw = {
        let stream = device.create_stream()?;
        copy_bandwidth(&device, &stream)?
    };
    eprintln!(
        "device-to-device copy: {:.3} TB/s (read + write)",
        copy_bw * 1e-12
    );

    let max_c = *args.concurrency.iter().max().expect("checked non-empty");
    // Fusion on and off, each with every graph setting, in turn.
    let modes: Vec<(bool, bool)> = [true, false]
        .into_iter()
        .flat_map(|fused| args.graphs.iter().map(move |&g| (fused, g)))
        .collect();
    // Per sequence: the prompt, one token from prefill, one untimed and `steps` timed decode
    // tokens per mode, each sequence in whole blocks.
    let kv = KvBudget {
        blocks: max_c * blocks_for(args.prompt + 1 + modes.len() * (args.steps + 1)),
    };
    let (free, _) = device.memory_info()?;
    let (config, plan) = match args.layers {
        Some(layers) => {
            let c = kimi_k25_config(layers)?;
            let plan = synthetic_plan(&c, kv, MAX_BATCH_TOKENS)?;
            (c, plan)
        }
        None => kimi_k25_layers_that_fit(free, &device.id().to_string(), kv, MAX_BATCH_TOKENS)?,
    };
    let layers = config.num_hidden_layers;
    eprintln!(
        "{layers} of Kimi-K2.5's {KIMI_K25_LAYERS} layers fit ({:.1} GB free): weights {:.2} GB, \
         KV cache {:.1} MB, workspace {:.2} GB; generating the weights on the device \
         (seed {}), no checkpoint is read",
        free as f64 * 1e-9,
        plan.weights as f64 * 1e-9,
        plan.kv_cache as f64 * 1e-6,
        plan.workspace as f64 * 1e-9,
        args.seed
    );
    let options = GpuOptions {
        kv,
        max_batch_tokens: MAX_BATCH_TOKENS,
        graphs: true,
    };
    let mut model = GpuModel::synthetic(&device, &config, args.seed, options)?;
    if model.weight_bytes_allocated() != plan.weights {
        return Err(format!(
            "planned {} weight bytes but allocated {}",
            plan.weights,
            model.weight_bytes_allocated()
        )
        .into());
    }
    eprintln!("model ready after {:.1} s", started.elapsed().as_secs_f64());
    let mut cache = model.new_cache()?;
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(args.seed));

    let mut rows = Vec::new();
    for &c in &args.concurrency {
        let mut seqs = start_sequences(&mut model, &mut cache, c, args.prompt, &mut rng)?;
        let mut times = vec![Vec::new(); modes.len()];
        let mut cached = c * args.prompt;
        let mut floor_s = vec![0.0f64; modes.len()];
        // One untimed step per mode first (warm-up), then `steps` timed ones per mode.
        for step in 0..modes.len() * (args.steps + 1) {
            let mode = step % modes.len();
            let (fused, graphs) = modes[mode];
            model.set_shared_expert_fusion(fused);
            model.set_graphs(graphs);
            let tokens: Vec<[u32; 1]> = seqs.iter().map(|s| [s.1]).collect();
            let chunks: Vec<SampledChunk<'_>> = seqs
                .iter()
                .zip(&tokens)
                .map(|(s, t)| greedy(s.0, t))
                .collect();
            let start = Instant::now();
            let picked = model.forward_sampled(&chunks, &mut cache)?;
            let elapsed = start.elapsed().as_secs_f64();
            if step >= modes.len() {
                times[mode].push(elapsed);
                floor_s[mode] += decode_step_bytes(&config, c, cached).total() / copy_bw;
            }
            cached += c;
            for (s, pick) in seqs.iter_mut().zip(picked) {
                s.1 = token_of(pick)?;
            }
        }
        finish_sequences(&mut cache, &seqs);
        for (mode, &(fused, graphs)) in modes.iter().enumerate() {
            rows.push(Row {
                concurrency: c,
                fused,
                graphs,
                itl_s: median(&mut times[mode]),
                floor_s: floor_s[mode] / args.steps as f64,
            });
        }
        eprintln!(
            "c = {c} done ({:.1} s, {} decode graphs captured so far)",
            started.elapsed().as_secs_f64(),
            model.graph_captures()
        );
    }

    println!();
    println!(
        "bench-decode: {} | Kimi-K2.5 dimensions, {layers} of {KIMI_K25_LAYERS} layers (1 dense + {} MoE), \
         weights generated on the device from seed {} (no checkpoint)",
        device.info().name,
        layers - 1,
        args.seed
    );
    println!(
        "MXFP4 W4A4 experts (384 routed + 1 shared, top-8), bf16 attention / dense MLP / router / \
         embedding / lm_head; prompt {} tokens, {} timed steps per mode; copy bandwidth {:.3} TB/s; \
         dependent launch {}",
        args.prompt,
        args.steps,
        copy_bw * 1e-12,
        if device.dependent_launch() {
            "on"
        } else {
            "off"
        }
    );
    println!();
    println!(
        "| concurrency | fusion | graphs | median ITL ms | tokens/s | floor ms | ITL / floor | \
         fusion gain | graph gain |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    // The gain of `r` over the row of the same concurrency that differs from it as `other`
    // says; empty where `r` is the baseline or that row was not measured.
    let gain = |r: &Row, other: &dyn Fn(&Row) -> bool| {
        rows.iter()
            .find(|o| o.concurrency == r.concurrency && other(o))
            .map(|o| format!("{:+.1}%", (1.0 - r.itl_s / o.itl_s) * 100.0))
            .unwrap_or_default()
    };
    let on_off = |b: bool| if b { "on" } else { "off" };
    for r in &rows {
        let fusion_gain = if r.fused {
            gain(r, &|o| !o.fused && o.graphs == r.graphs)
        } else {
            String::new()
        };
        let graph_gain = if r.graphs {
            gain(r, &|o| !o.graphs && o.fused == r.fused)
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.2} | {} | {} |",
            r.concurrency,
            on_off(r.fused),
            on_off(r.graphs),
            r.itl_s * 1e3,
            r.concurrency as f64 / r.itl_s,
            r.floor_s * 1e3,
            r.itl_s / r.floor_s,
            fusion_gain,
            graph_gain
        );
    }
    println!();
    println!(
        "fusion gain = ITL reduction of fused over unfused (same graph setting); graph gain = \
         ITL reduction of graph replay over one launch per op (same fusion); floor = bytes the step must move / \
         copy bandwidth; total run {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
