//! `moe-bench`: times one Kimi-K2.5 MoE layer (384 routed + 1 shared expert, top-8, hidden
//! 7168, intermediate 2048, MXFP4 weights, bf16 in/out) on a GPU, fused and unfused, and prints
//! one table next to the measured device-to-device copy bandwidth and the PyTorch anchor
//! (`torch._grouped_mm` in bf16, from `moe-kernels/bench/anchor_grouped_mm.py`).
//!
//! Routing is redrawn every iteration (router logits rotate over 8 random sets) and the
//! weights rotate over several copies of the layer (9 GB each), so neither the L2 cache nor a
//! fixed expert set flatters the numbers. Fused and unfused runs are interleaved.
//!
//! `--path` picks the expert kernels: `gemv` (CUDA cores), `tc` (FP8 tensor cores, NVIDIA sm_89+)
//! or `auto` (tensor cores from `TENSOR_CORE_MIN_TOKENS` tokens on).
//!
//! With `--graph`, each layer is also captured into a graph (`runtime_rocm::Graph`) and
//! replayed, which removes the launch gaps between its kernels: the "graph µs" column.
//! `--dependent-launch off` launches each kernel only after the one before it has finished
//! (by default, on NVIDIA sm_90+, a launch overlaps the end of the kernel before it).
//!
//! ```text
//! moe-bench [--device cuda:0] [--batches 1,8,32,128,512,2048,16384] [--iters 40]
//!           [--copies 2] [--act w4a4|w4a16] [--anchor PATH|none] [--budget-ms 4000]
//!           [--breakdown] [--graph] [--path auto|gemv|tc] [--dependent-launch on|off]
//! ```

use std::process::{Command, ExitCode};

use half::bf16;
use moe_kernels::gpu::{
    ExpertPath, GpuError, MoeKernels, MoeShape, MoeWeights, MoeWorkspace, SharedExpertMode,
    Synthetic, TENSOR_CORE_MIN_TOKENS, copy_bandwidth, median,
};
use moe_kernels::reference::{ActivationQuant, RoutingParams, ScaleRule};
use runtime_rocm::{Device, DeviceBuffer, Graph, Stream};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SHAPE: MoeShape = MoeShape {
    hidden: 7168,
    inter: 2048,
    n_routed: 384,
    n_shared: 1,
};
const TOP_K: usize = 8;
const RSF: f32 = 2.827;
const LOGIT_SETS: usize = 8;
const WARMUP: usize = 2;
const MODES: [SharedExpertMode; 2] = [SharedExpertMode::Fused, SharedExpertMode::Separate];

struct Args {
    device: String,
    batches: Vec<usize>,
    iters: usize,
    copies: usize,
    act: ActivationQuant,
    anchor: Option<String>,
    budget_ms: f64,
    breakdown: bool,
    graph: bool,
    path: ExpertPath,
    /// Dependent launch on or off; the device's default when not given.
    dependent_launch: Option<bool>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        device: "auto".into(),
        batches: vec![1, 8, 32, 128, 512, 2048, 16384],
        iters: 40,
        copies: 2,
        act: ActivationQuant::Mxfp4(ScaleRule::Even),
        anchor: Some("moe-kernels/bench/anchor_grouped_mm.py".into()),
        budget_ms: 4000.0,
        breakdown: false,
        graph: false,
        path: ExpertPath::Auto,
        dependent_launch: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => args.device = value()?,
            "--batches" => {
                args.batches = value()?
                    .split(',')
                    .map(|b| {
                        b.parse::<usize>()
                            .map_err(|e| format!("--batches: {b}: {e}"))
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            "--iters" => args.iters = value()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--copies" => args.copies = value()?.parse().map_err(|e| format!("--copies: {e}"))?,
            "--budget-ms" => {
                args.budget_ms = value()?.parse().map_err(|e| format!("--budget-ms: {e}"))?
            }
            "--act" => {
                args.act = match value()?.as_str() {
                    "w4a4" => ActivationQuant::Mxfp4(ScaleRule::Even),
                    "w4a16" => ActivationQuant::None,
                    other => {
                        return Err(format!("--act: expected w4a4 or w4a16, found {other}").into());
                    }
                }
            }
            "--path" => {
                args.path = match value()?.as_str() {
                    "auto" => ExpertPath::Auto,
                    "gemv" => ExpertPath::Gemv,
                    "tc" => ExpertPath::TensorCore,
                    other => {
                        return Err(
                            format!("--path: expected auto, gemv or tc, found {other}").into()
                        );
                    }
                }
            }
            "--breakdown" => args.breakdown = true,
            "--graph" => args.graph = true,
            "--dependent-launch" => {
                args.dependent_launch = Some(match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => {
                        return Err(format!(
                            "--dependent-launch: expected on or off, found {other}"
                        )
                        .into());
                    }
                })
            }
            "--anchor" => {
                let v = value()?;
                args.anchor = (v != "none").then_some(v);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.batches.is_empty() || args.batches.contains(&0) || args.copies == 0 || args.iters == 0 {
        return Err(
            "--batches must list positive sizes; --copies and --iters must be positive".into(),
        );
    }
    Ok(args)
}

/// Median anchor time per (batch, fused) from the script's `ANCHOR` lines.
fn run_anchor(script: &str, batches: &[usize]) -> Result<Vec<(usize, bool, f64)>> {
    let list: Vec<String> = batches.iter().map(usize::to_string).collect();
    eprintln!("running the PyTorch anchor ({script})");
    let output = Command::new("python3")
        .arg(script)
        .arg("--batches")
        .arg(list.join(","))
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "anchor script failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(rest) = line.strip_prefix("ANCHOR ") else {
            continue;
        };
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| format!("anchor line without {name}: {line}"))
        };
        let batch: usize = field("batch")?.parse()?;
        let fused = field("mode")? == "fused";
        let ms: f64 = field("median_ms")?.parse()?;
        found.push((batch, fused, ms));
    }
    Ok(found)
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

struct Measured {
    batch: usize,
    mode: SharedExpertMode,
    median_s: f64,
    /// Median of the graph replays (`--graph`).
    graph_s: Option<f64>,
    experts: f64,
    iters: usize,
}

fn routing_params(mode: SharedExpertMode) -> RoutingParams {
    RoutingParams {
        n_group: 1,
        topk_group: 1,
        top_k: TOP_K,
        norm_topk_prob: true,
        routed_scaling_factor: RSF,
        shared_slots: if mode == SharedExpertMode::Fused {
            SHAPE.n_shared
        } else {
            0
        },
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("moe-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    // A failed anchor leaves its columns empty (and says why) rather than losing the run.
    let anchor = match &args.anchor {
        Some(script) => run_anchor(script, &args.batches).unwrap_or_else(|err| {
            eprintln!("moe-bench: the anchor did not run: {err}");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let device = Device::parse_and_open(&args.device)?;
    if device.is_cpu() {
        return Err("no GPU found: moe-bench measures GPU kernels".into());
    }
    if let Some(on) = args.dependent_launch {
        device.set_dependent_launch(on)?;
    }
    let stream = device.create_stream()?;
    let copy_bw = copy_bandwidth(&device, &stream)?;
    eprintln!(
        "device-to-device copy: {:.3} TB/s (read + write)",
        copy_bw * 1e-12
    );

    let mut kernels = MoeKernels::compile(&device, SHAPE.hidden, SHAPE.inter)?;
    kernels.set_expert_path(args.path)?;
    eprintln!(
        "expert path {:?} (tensor cores {}; auto takes them from {TENSOR_CORE_MIN_TOKENS} tokens)",
        args.path,
        if kernels.has_tensor_cores() {
            "present"
        } else {
            "absent"
        }
    );
    let synth = Synthetic::compile(&device)?;
    let mut copies = Vec::new();
    for c in 0..args.copies {
        let bytes = |n: usize| device.alloc_uninit::<u8>(n);
        let (h, i, e) = (SHAPE.hidden, SHAPE.inter, SHAPE.slots());
        let mut w = MoeWeights::new(
            SHAPE,
            bytes(e * i * h)?,
            bytes(e * 2 * i * h / 32)?,
            bytes(e * h * i / 2)?,
            bytes(e * h * i / 32)?,
        )?;
        let [w13, s13, w2, s2] = w.buffers_mut();
        let seed = 16 * c as u32;
        synth.bytes(&stream, w13, seed, 0, 255)?;
        synth.bytes(&stream, s13, seed + 1, 118, 124)?;
        synth.bytes(&stream, w2, seed + 2, 0, 255)?;
        synth.bytes(&stream, s2, seed + 3, 118, 124)?;
        copies.push(w);
    }
    stream.synchronize()?;
    eprintln!(
        "{} weight copies of {:.2} GB each ({} expert slots of {:.2} MB)",
        args.copies,
        (SHAPE.slots() * SHAPE.bytes_per_expert()) as f64 * 1e-9,
        SHAPE.slots(),
        SHAPE.bytes_per_expert() as f64 * 1e-6
    );

    let mut results = Vec::new();
    let mut breakdowns: Vec<(usize, Vec<(&'static str, f64)>)> = Vec::new();
    for &batch in &args.batches {
        let mut ws = MoeWorkspace::new(&device, SHAPE, TOP_K, batch)?;
        let mut x: DeviceBuffer<bf16> = device.alloc_uninit(batch * SHAPE.hidden)?;
        synth.normal_bf16(&stream, &mut x, 1000 + batch as u32, 1.0)?;
        let mut bias: DeviceBuffer<f32> = device.alloc_uninit(SHAPE.n_routed)?;
        // A small correction bias keeps routing close to uniform, the case the roofline counts.
        synth.normal_f32(&stream, &mut bias, 7, 1e-3)?;
        let mut logits = Vec::new();
        for s in 0..LOGIT_SETS {
            let mut l: DeviceBuffer<f32> = device.alloc_uninit(batch * SHAPE.n_routed)?;
            synth.normal_f32(&stream, &mut l, 2000 + s as u32, 1.0)?;
            logits.push(l);
        }
        let mut out: DeviceBuffer<bf16> = device.alloc_uninit(batch * SHAPE.hidden)?;
        // Iteration i's layer: weight copy and logit set rotate with i.
        let layer = |s: &Stream,
                     i: usize,
                     mode: SharedExpertMode,
                     ws: &mut MoeWorkspace,
                     out: &mut DeviceBuffer<bf16>|
         -> std::result::Result<(), GpuError> {
            kernels.forward(
                s,
                &copies[i % copies.len()],
                &routing_params(mode),
                args.act,
                mode,
                &x,
                &logits[i % LOGIT_SETS],
                &bias,
                batch,
                ws,
                out,
            )
        };
        let mut step =
            |i: usize, mode: SharedExpertMode, ws: &mut MoeWorkspace| -> Result<(f64, usize)> {
                let start = stream.record_event()?;
                layer(&stream, i, mode, ws, &mut out)?;
                let end = stream.record_event()?;
                end.synchronize()?;
                Ok((
                    f64::from(start.elapsed_ms(&end)?) * 1e-3,
                    ws.experts_touched(mode)?,
                ))
            };
        let mut warm = 0.0;
        for i in 0..WARMUP {
            for mode in MODES {
                warm = step(i, mode, &mut ws)?.0;
            }
        }
        // The budget may cut the run short, but not below 5 samples (or what was asked, if
        // fewer), and never above what was asked.
        let iters = ((args.budget_ms * 1e-3 / (2.0 * warm)) as usize)
            .max(5)
            .min(args.iters);
        let mut samples: Vec<Vec<(f64, usize)>> = vec![Vec::new(); MODES.len()];
        for i in 0..iters {
            for (m, mode) in MODES.into_iter().enumerate() {
                samples[m].push(step(WARMUP + i, mode, &mut ws)?);
            }
        }
        if args.breakdown {
            ws.record_stages();
            let runs = iters.min(10);
            for i in 0..runs {
                step(i, SharedExpertMode::Fused, &mut ws)?;
            }
            let times = ws.stage_times()?;
            let per_run = times.len() / runs;
            let stages = (0..per_run)
                .map(|k| {
                    let mut v: Vec<f64> = times
                        .iter()
                        .skip(k)
                        .step_by(per_run)
                        .map(|t| t.1 * 1e3)
                        .collect();
                    (times[k].0, median(&mut v))
                })
                .collect();
            breakdowns.push((batch, stages));
        }
        // Graphs over one period of the (weight copy, logit set) rotation, replayed in the
        // same interleaved order as the stream runs.
        let mut graph_times = [None; MODES.len()];
        if args.graph {
            let period = lcm(copies.len(), LOGIT_SETS);
            // A workspace of their own: the graphs keep its pointers, and stage marks stay off.
            let mut ws = MoeWorkspace::new(&device, SHAPE, TOP_K, batch)?;
            let mut graphs: Vec<Vec<Graph>> = MODES.iter().map(|_| Vec::new()).collect();
            for i in 0..period {
                for (m, mode) in MODES.into_iter().enumerate() {
                    graphs[m].push(
                        stream.capture::<GpuError>(|s| layer(s, i, mode, &mut ws, &mut out))?,
                    );
                }
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
            for i in 0..WARMUP + iters {
                for m in 0..MODES.len() {
                    let start = stream.record_event()?;
                    // SAFETY: every buffer the graphs use lives until the end of this batch
                    // size, and each replay is waited for.
                    unsafe { graphs[m][i % period].launch(&stream) }?;
                    let end = stream.record_event()?;
                    end.synchronize()?;
                    if i >= WARMUP {
                        samples[m].push(f64::from(start.elapsed_ms(&end)?) * 1e-3);
                    }
                }
            }
            for (m, times) in samples.iter_mut().enumerate() {
                graph_times[m] = Some(median(times));
            }
        }
        for (m, mode) in MODES.into_iter().enumerate() {
            let mut times: Vec<f64> = samples[m].iter().map(|s| s.0).collect();
            let experts = samples[m].iter().map(|s| s.1 as f64).sum::<f64>() / iters as f64;
            results.push(Measured {
                batch,
                mode,
                median_s: median(&mut times),
                graph_s: graph_times[m],
                experts,
                iters,
            });
        }
    }

    println!();
    println!(
        "moe-bench: {} | {:?} | Kimi-K2.5 layer: {} routed + {} shared, top-{TOP_K}, hidden {}, intermediate {}",
        device.info().name,
        args.act,
        SHAPE.n_routed,
        SHAPE.n_shared,
        SHAPE.hidden,
        SHAPE.inter
    );
    println!(
        "measured device-to-device copy: {:.3} TB/s (read + write); times are medians; \
         dependent launch {}",
        copy_bw * 1e-12,
        if device.dependent_launch() {
            "on"
        } else {
            "off"
        }
    );
    println!();
    println!(
        "| B | mode | iters | time µs | graph µs | experts touched | GB touched | TB/s | % of copy | TFLOP/s | anchor µs | speed-up | fusion gain |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let bytes = r.experts * SHAPE.bytes_per_expert() as f64;
        let bw = bytes / r.median_s;
        let flops = 2.0
            * r.batch as f64
            * (TOP_K + SHAPE.n_shared) as f64
            * 3.0
            * (SHAPE.hidden * SHAPE.inter) as f64;
        let fused = r.mode == SharedExpertMode::Fused;
        let anchor_s = anchor
            .iter()
            .find(|a| a.0 == r.batch && a.1 == fused)
            .map(|a| a.2 * 1e-3);
        let fusion = if fused {
            results
                .iter()
                .find(|o| o.batch == r.batch && o.mode == SharedExpertMode::Separate)
                .map(|o| format!("{:+.1}%", (o.median_s / r.median_s - 1.0) * 100.0))
                .unwrap_or_default()
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.1} | {:.3} | {:.3} | {:.1}% | {:.1} | {} | {} | {} |",
            r.batch,
            if fused { "fused" } else { "separate" },
            r.iters,
            r.median_s * 1e6,
            r.graph_s
                .map(|g| format!("{:.1}", g * 1e6))
                .unwrap_or_else(|| "-".into()),
            r.experts,
            bytes * 1e-9,
            bw * 1e-12,
            100.0 * bw / copy_bw,
            flops / r.median_s * 1e-12,
            anchor_s
                .map(|a| format!("{:.1}", a * 1e6))
                .unwrap_or_else(|| "-".into()),
            anchor_s
                .map(|a| format!("{:.2}x", a / r.median_s))
                .unwrap_or_else(|| "-".into()),
            fusion
        );
    }
    if let Some((_, first)) = breakdowns.first() {
        println!();
        println!("Per-stage device time of the fused layer, µs (median; events between stages):");
        println!();
        let names: Vec<&str> = first.iter().map(|s| s.0).collect();
        println!("| B | {} | sum |", names.join(" | "));
        println!("|---:|{}---:|", "---:|".repeat(names.len()));
        for (batch, stages) in &breakdowns {
            let cells: Vec<String> = stages.iter().map(|s| format!("{:.1}", s.1)).collect();
            println!(
                "| {batch} | {} | {:.1} |",
                cells.join(" | "),
                stages.iter().map(|s| s.1).sum::<f64>()
            );
        }
    }
    Ok(())
}
