//! `sample-bench`: what picking the next token costs per decode step on a GPU, with the
//! logits already on the device: the sampling kernel (`gpu::SamplingKernel`: request upload,
//! launch, token download) for greedy and for three sampling rules, next to the path it
//! replaces — copying `rows × vocab` f32 logits to the host and picking there with the
//! reference (`reference::sample_token`, one row after another as the engine did).
//! Medians of `--iters` runs, wall clock, microseconds per step.
//!
//! ```text
//! sample-bench [--device auto] [--vocab 163840] [--rows 1,4,16,64,256] [--iters 20]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use moe_kernels::gpu::{RowPick, SamplingKernel};
use moe_kernels::reference::{SamplingRule, sample_token};
use runtime_rocm::Device;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const RULES: [(&str, SamplingRule); 4] = [
    ("greedy", SamplingRule::GREEDY),
    (
        "t=1",
        SamplingRule {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        },
    ),
    (
        "t=.8 k=50",
        SamplingRule {
            temperature: 0.8,
            top_k: 50,
            top_p: 1.0,
        },
    ),
    (
        "t=.8 p=.9",
        SamplingRule {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.9,
        },
    ),
];

struct Args {
    device: String,
    vocab: usize,
    rows: Vec<usize>,
    iters: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        device: "auto".into(),
        vocab: 163_840,
        rows: vec![1, 4, 16, 64, 256],
        iters: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number =
            |s: &str, name: &str| s.parse::<usize>().map_err(|e| format!("{name}: {s}: {e}"));
        match flag.as_str() {
            "--device" => args.device = value()?,
            "--vocab" => args.vocab = number(&value()?, "--vocab")?,
            "--iters" => args.iters = number(&value()?, "--iters")?,
            "--rows" => {
                args.rows = value()?
                    .split(',')
                    .map(|r| number(r, "--rows"))
                    .collect::<std::result::Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.vocab == 0 || args.iters == 0 || args.rows.is_empty() || args.rows.contains(&0) {
        return Err("--vocab, --iters and every --rows entry must be positive".into());
    }
    Ok(args)
}

/// Logits shaped like a language model's: a few large values over a wide low tail.
fn logits(rows: usize, vocab: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..rows * vocab)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            -12.0 * u * u + 4.0
        })
        .collect()
}

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn run(args: &Args) -> Result<()> {
    let device = Device::parse_and_open(&args.device)?;
    if device.is_cpu() {
        return Err("sample-bench needs a GPU (--device rocm:N or cuda:N)".into());
    }
    let stream = device.create_stream()?;
    let kernel = SamplingKernel::compile(&device)?;
    println!(
        "device {}, vocab {}, {} iterations, median µs per step",
        device.id(),
        args.vocab,
        args.iters
    );
    print!("{:>6}", "rows");
    for (name, _) in RULES {
        print!(" {:>12}", name);
    }
    println!(" {:>14} {:>14}", "copy to host", "+ host t=.8 p=.9");
    for &rows in &args.rows {
        let host = logits(rows, args.vocab);
        let buffer = device.upload(&host)?;
        print!("{rows:>6}");
        for (_, rule) in RULES {
            let picks: Vec<RowPick> = (0..rows)
                .map(|r| RowPick::Sample {
                    rule,
                    u: (r as f64 + 0.5) / rows as f64,
                })
                .collect();
            kernel.sample(&stream, &buffer, args.vocab, &picks)?;
            let mut times = Vec::with_capacity(args.iters);
            for _ in 0..args.iters {
                let start = Instant::now();
                kernel.sample(&stream, &buffer, args.vocab, &picks)?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
            print!(" {:>12.1}", median_us(times));
        }
        let (mut copy, mut total) = (Vec::new(), Vec::new());
        let rule = RULES[3].1;
        for _ in 0..args.iters {
            let start = Instant::now();
            let back = buffer.to_vec()?;
            copy.push(start.elapsed().as_secs_f64() * 1e6);
            for (r, row) in back.chunks_exact(args.vocab).enumerate() {
                std::hint::black_box(sample_token(row, &rule, (r as f64 + 0.5) / rows as f64));
            }
            total.push(start.elapsed().as_secs_f64() * 1e6);
        }
        println!(" {:>14.1} {:>14.1}", median_us(copy), median_us(total));
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sample-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
