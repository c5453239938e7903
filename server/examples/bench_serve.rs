//! Load benchmark of the HTTP server on the built-in tiny model: streams completions at
//! concurrency 1, 8 and 64 and prints aggregate tokens/s and TTFT / inter-token latency
//! percentiles. Run through `cargo xtask bench-serve`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use model_deepseek::fusion::FusionMode;
use serde_json::{Value, json};
use server::client;
use server::engine::EngineLimits;
use server::launch::{LaunchOptions, launch};

#[derive(Parser, Debug)]
#[command(about = "Load benchmark of mxserve on the built-in model")]
struct Args {
    /// Concurrency levels to run.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Requests per concurrency level, as a multiple of the concurrency (at least 4 requests).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Tokens generated per request (fewer if the model emits end-of-sequence).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Most tokens per forward step.
    #[arg(long, default_value_t = 1024)]
    max_batch_tokens: usize,
}

/// What one request measured.
struct Sample {
    tokens: usize,
    ttft: Duration,
    gaps: Vec<Duration>,
}

async fn one_request(addr: SocketAddr, i: usize, max_tokens: usize) -> anyhow::Result<Sample> {
    let body = json!({
        "model": "bench",
        "prompt": format!("request {i}: tell me a story about the number {}", i * 7919 % 1000),
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": i,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let reply = client::stream(addr, "/v1/completions", &body).await?;
    anyhow::ensure!(reply.status.as_u16() == 200, "status {}", reply.status);
    let mut tokens = 0;
    let mut arrivals = Vec::new();
    for event in reply.events.iter().filter(|e| e.data != "[DONE]") {
        let chunk: Value = serde_json::from_str(&event.data)?;
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            tokens = usage["completion_tokens"].as_u64().context("usage")? as usize;
        }
        if chunk["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            arrivals.push(event.at);
        }
    }
    let first = *arrivals.first().context("no text arrived")?;
    Ok(Sample {
        tokens,
        ttft: first - reply.sent,
        gaps: arrivals.windows(2).map(|w| w[1] - w[0]).collect(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir =
        model_deepseek::tiny::ensure_builtin_model().context("creating the built-in model")?;
    let max_running = args.concurrency.iter().copied().max().unwrap_or(1);
    let options = LaunchOptions {
        model_dir: dir,
        model_id: Some("bench".into()),
        fusion: FusionMode::Auto,
        limits: EngineLimits {
            max_batch_tokens: args.max_batch_tokens,
            max_running,
            max_waiting: 4 * max_running,
        },
        kv_capacity_tokens: None,
        max_body_bytes: 1 << 20,
    };
    let launched = launch(&options, &mut |_| {})?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::server::serve(
            listener,
            launched.state,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        // Warm up: first-touch allocations and the health forward pass.
        one_request(addr, 0, 4).await?;
        println!(
            "built-in model, max_tokens {}, {} cores",
            args.max_tokens,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:>5} {:>5} {:>7} {:>7} {:>9} {:>7} | {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7}",
            "conc", "reqs", "tokens", "wall s", "tok/s", "x c1", "TTFT p50", "p90", "p99", "ITL p50", "p90", "p99"
        );
        let mut base = None;
        for &c in &args.concurrency {
            let requests = (c * args.rounds).max(4);
            let started = Instant::now();
            let mut clients = Vec::new();
            for k in 0..c {
                let max_tokens = args.max_tokens;
                clients.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    for i in (k..requests).step_by(c) {
                        samples.push(one_request(addr, i + 1, max_tokens).await?);
                    }
                    anyhow::Ok(samples)
                }));
            }
            let mut samples = Vec::new();
            for client in clients {
                samples.extend(client.await??);
            }
            let wall = started.elapsed().as_secs_f64();
            let tokens: usize = samples.iter().map(|s| s.tokens).sum();
            let rate = tokens as f64 / wall;
            let base_rate = *base.get_or_insert(rate);
            let mut ttft: Vec<Duration> = samples.iter().map(|s| s.ttft).collect();
            let mut itl: Vec<Duration> = samples.iter().flat_map(|s| s.gaps.iter().copied()).collect();
            ttft.sort();
            itl.sort();
            println!(
                "{c:>5} {requests:>5} {tokens:>7} {wall:>7.2} {rate:>9.1} {:>7.2} | {:>8.1} {:>8.1} {:>8.1} | {:>7.2} {:>7.2} {:>7.2}",
                rate / base_rate,
                percentile(&ttft, 0.5),
                percentile(&ttft, 0.9),
                percentile(&ttft, 0.99),
                percentile(&itl, 0.5),
                percentile(&itl, 0.9),
                percentile(&itl, 0.99),
            );
        }
        println!("(latencies in ms; TTFT includes queueing; x c1 = throughput over concurrency 1)");
        let _ = stop.send(());
        server.await??;
        anyhow::Ok(())
    })
}
