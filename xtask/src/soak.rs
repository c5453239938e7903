//! `cargo xtask soak --minutes N --clients C`: a long run of the built-in model under load.
//!
//! Starts the release `mxserve serve` as a child process, then C client threads send a mix of
//! requests over plain HTTP/1.1 until the time is up: streamed and whole chat and completion
//! requests of mixed prompt and output lengths, streams the client abandons mid-way, and bad
//! requests that must get their 4xx. While the clients are still sending, the server gets
//! SIGTERM and must exit cleanly. Prints requests served, outcomes by kind, p50/p99 latency and
//! the server's resident memory at start, after warm-up and at the end; fails on any
//! unexpected outcome, on memory growth past 10% of the warmed-up level, or on an unclean
//! shutdown.
//!
//! Std only (threads and blocking sockets), so the load generator shares nothing with the
//! server it tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cargo_build;

/// The id the built-in model is served under.
const MODEL: &str = "mxserve-tiny";
/// Allowed growth of resident memory from the warmed-up level to the end.
const MAX_MEMORY_GROWTH: f64 = 0.10;
/// Seconds running requests get after SIGTERM (the server's `--shutdown-timeout`).
const SHUTDOWN_TIMEOUT_S: u64 = 20;

/// Options of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Args {
    /// Minutes of load.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Port for the server.
    #[arg(long, default_value_t = 18_431)]
    port: u16,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// 200 with a complete answer (a whole body, or a stream ending in `[DONE]`).
    Served,
    /// A stream the client abandoned on purpose.
    Abandoned,
    /// A deliberately bad request that got the 4xx it should.
    RejectedAsExpected,
    /// 429: the queue was full (expected under load; counted, not a failure).
    Busy,
    /// Refused or cut off after SIGTERM (expected while shutting down).
    DuringShutdown,
    /// Anything else: a 5xx, a wrong status, a broken stream, a transport error.
    Unexpected,
}

/// Requests of one kind.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Stream,
    Whole,
    Abandon,
    Bad(usize),
}

/// Bodies that must be rejected, and the status each must get.
const BAD: [(&str, &[u8], u16); 5] = [
    (
        "/v1/chat/completions",
        b"{\"model\": \"mxserve-tiny\", \"messages\": [",
        400,
    ),
    (
        "/v1/completions",
        b"{\"model\": \"mxserve-tiny\", \"prompt\": \"x\", \"n\": 99}",
        400,
    ),
    (
        "/v1/completions",
        b"{\"model\": \"mxserve-tiny\", \"prompt\": \"x\", \"max_tokens\": 4294967295}",
        400,
    ),
    (
        "/v1/completions",
        b"{\"model\": \"nope\", \"prompt\": \"x\"}",
        404,
    ),
    (
        "/v1/completions",
        b"{\"model\": \"mxserve-tiny\", \"prompt\": \"caf\xc3\x28\"}",
        400,
    ),
];

/// xorshift64*: enough randomness for a request mix, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<(Outcome, String), u64>,
    latencies_ms: Vec<f64>,
}

/// Runs the soak.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf();
    let binary = build(&root)?;
    let addr: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let log_path = std::env::temp_dir().join(format!("mxserve-soak-{}.log", args.port));
    let mut child = start_server(&binary, &args, &log_path)?;
    let pid = child.id();
    wait_healthy(addr, &mut child, &log_path)?;
    let rss_start = rss_kib(pid)?;
    println!(
        "server pid {pid} healthy; log {}; {} clients for {} min",
        log_path.display(),
        args.clients,
        args.minutes
    );

    let load = Duration::from_secs_f64(args.minutes * 60.0);
    let warm_up = (load / 10).min(Duration::from_secs(60));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let terminated = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let (stop, terminated, tally) = (stop.clone(), terminated.clone(), tally.clone());
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64) | 1;
            std::thread::spawn(move || client(addr, seed, &stop, &terminated, &tally))
        })
        .collect();

    std::thread::sleep(warm_up);
    let rss_warm = rss_kib(pid)?;
    let mut rss_peak = rss_warm;
    while started.elapsed() < load {
        std::thread::sleep(Duration::from_secs(1).min(load.saturating_sub(started.elapsed())));
        rss_peak = rss_peak.max(rss_kib(pid).unwrap_or(0));
    }
    let rss_end = rss_kib(pid)?;

    // SIGTERM while the clients are still sending.
    terminated.store(true, Ordering::SeqCst);
    let term_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("sending SIGTERM")?;
    if !kill.success() {
        bail!("kill -TERM {pid} failed");
    }
    let exit = wait_exit(&mut child, Duration::from_secs(SHUTDOWN_TIMEOUT_S + 15))?;
    let shutdown_took = term_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }

    let mut tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("clients still hold the tally"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a client panicked holding the tally"))?;
    report(
        &mut tally,
        &args,
        started.elapsed(),
        [rss_start, rss_warm, rss_peak, rss_end],
    );
    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm as f64;
    println!(
        "shutdown: SIGTERM under load → exit {exit} after {:.1} s",
        shutdown_took.as_secs_f64()
    );
    let unexpected: u64 = tally
        .outcomes
        .iter()
        .filter(|((o, _), _)| *o == Outcome::Unexpected)
        .map(|(_, n)| n)
        .sum();
    let mut failures = Vec::new();
    if unexpected > 0 {
        failures.push(format!("{unexpected} unexpected outcome(s)"));
    }
    if growth > MAX_MEMORY_GROWTH {
        failures.push(format!(
            "resident memory grew {:.1}% after warm-up (limit {:.0}%)",
            growth * 100.0,
            MAX_MEMORY_GROWTH * 100.0
        ));
    }
    if !exit.success() {
        failures.push(format!("the server exited with {exit} after SIGTERM"));
    }
    if failures.is_empty() {
        println!("soak passed");
        Ok(())
    } else {
        bail!("soak failed: {}", failures.join("; "))
    }
}

fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let built = cargo_build::executables(
        root,
        &["build", "--release", "-p", "server", "--bin", "mxserve"],
    )?;
    built
        .into_iter()
        .find(|(name, _)| name == "mxserve")
        .map(|(_, path)| path)
        .context("cargo built no mxserve")
}

fn start_server(binary: &Path, args: &Args, log: &Path) -> anyhow::Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(binary)
        .args(["serve", "--port", &args.port.to_string()])
        .args(["--shutdown-timeout", &SHUTDOWN_TIMEOUT_S.to_string()])
        // The waiting queue is smaller than the client count, so floods hit 429 for real.
        .args(["--max-running", "32", "--max-waiting", "16"])
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

fn wait_healthy(addr: SocketAddr, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited with {status} before serving; see {}",
                log.display()
            );
        }
        if let Ok(reply) = request(addr, "GET", "/health", b"", Duration::from_secs(5))
            && reply.0 == 200
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the server was not healthy after 300 s; see {}",
        log.display()
    )
}

fn wait_exit(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            bail!(
                "the server did not exit within {} s of SIGTERM",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident set size of `pid` in KiB, from `/proc`.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// One client: requests back to back until told to stop.
fn client(
    addr: SocketAddr,
    seed: u64,
    stop: &AtomicBool,
    terminated: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::SeqCst) {
        let kind = match rng.below(100) {
            0..55 => Kind::Stream,
            55..75 => Kind::Whole,
            75..87 => Kind::Abandon,
            _ => Kind::Bad(rng.below(BAD.len() as u64) as usize),
        };
        let started = Instant::now();
        let outcome = one_request(addr, kind, &mut rng);
        let (mut outcome, detail) = match outcome {
            Ok(o) => o,
            Err(e) => (Outcome::Unexpected, e),
        };
        if outcome == Outcome::Unexpected && terminated.load(Ordering::SeqCst) {
            outcome = Outcome::DuringShutdown;
        }
        let mut t = tally.lock().expect("no client panics holding the tally");
        if outcome == Outcome::Served {
            t.latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        *t.outcomes.entry((outcome, detail)).or_default() += 1;
        drop(t);
        if outcome == Outcome::Busy || outcome == Outcome::DuringShutdown {
            // Honour Retry-After (1 s) loosely, as a client should.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A prompt of mixed length from a small vocabulary of words.
fn prompt(rng: &mut Rng) -> String {
    const WORDS: [&str; 8] = [
        "the", "model", "runs", "fast", "on", "two", "cores", "today",
    ];
    let words = 1 + rng.below(48) as usize;
    (0..words)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_request(addr: SocketAddr, kind: Kind, rng: &mut Rng) -> Result<(Outcome, String), String> {
    let max_tokens = 1 + rng.below(64);
    let chat = rng.below(2) == 0;
    let text = prompt(rng);
    let (path, body) = if chat {
        (
            "/v1/chat/completions",
            serde_json::json!({"model": MODEL, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}]}),
        )
    } else {
        (
            "/v1/completions",
            serde_json::json!({"model": MODEL, "max_tokens": max_tokens, "prompt": text}),
        )
    };
    let timeout = Duration::from_secs(120);
    match kind {
        Kind::Bad(i) => {
            let (path, body, want) = BAD[i];
            let (status, _) = request(addr, "POST", path, body, timeout)?;
            Ok(if status == want {
                (Outcome::RejectedAsExpected, format!("{want}"))
            } else if status == 429 {
                (Outcome::Busy, "429".into())
            } else {
                (
                    Outcome::Unexpected,
                    format!("bad request {i} got {status}, wanted {want}"),
                )
            })
        }
        Kind::Whole => {
            let (status, reply) =
                request(addr, "POST", path, body.to_string().as_bytes(), timeout)?;
            Ok(match status {
                200 if reply.contains("\"finish_reason\"") => (Outcome::Served, "whole".into()),
                200 => (Outcome::Unexpected, "200 without finish_reason".into()),
                429 => (Outcome::Busy, "429".into()),
                other => (Outcome::Unexpected, format!("whole request got {other}")),
            })
        }
        Kind::Stream | Kind::Abandon => {
            let mut body = body;
            body["stream"] = serde_json::json!(true);
            let abandon_after = matches!(kind, Kind::Abandon).then(|| 1 + rng.below(4) as usize);
            stream(
                addr,
                path,
                body.to_string().as_bytes(),
                abandon_after,
                timeout,
            )
        }
    }
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {}", e.kind()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("send: {}", e.kind()))?;
    Ok(stream)
}

fn status_of(line: &str) -> Result<u16, String> {
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))
}

/// A whole request: status and body (headers dropped).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream = send(addr, method, path, body, timeout)?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {}", e.kind()))?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "response without a header end".to_owned())?;
    Ok((
        status_of(head.lines().next().unwrap_or(""))?,
        body.to_owned(),
    ))
}

/// A streamed request read event by event (the server sends chunked SSE); with
/// `abandon_after`, the client hangs up after that many events.
fn stream(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    abandon_after: Option<usize>,
    timeout: Duration,
) -> Result<(Outcome, String), String> {
    let stream = send(addr, "POST", path, body, timeout)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {}", e.kind()))?;
    if line.is_empty() {
        return Err("connection closed before a status line".into());
    }
    let status = status_of(&line)?;
    if status != 200 {
        return Ok(if status == 429 {
            (Outcome::Busy, "429".into())
        } else {
            (Outcome::Unexpected, format!("stream got {status}"))
        });
    }
    let mut events = 0;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("stream read: {}", e.kind()))?;
        if n == 0 {
            return Ok((Outcome::Unexpected, "stream ended without [DONE]".into()));
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return Ok((Outcome::Served, "stream".into()));
        }
        if data.contains("\"error\"") {
            return Ok((Outcome::Unexpected, "error event in a stream".into()));
        }
        events += 1;
        if abandon_after.is_some_and(|k| events >= k) {
            return Ok((Outcome::Abandoned, "disconnect".into()));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn report(tally: &mut Tally, args: &Args, elapsed: Duration, rss: [u64; 4]) {
    tally.latencies_ms.sort_by(f64::total_cmp);
    let served = tally.latencies_ms.len();
    println!();
    println!(
        "soak: {} clients, {:.1} min, seed {}",
        args.clients,
        elapsed.as_secs_f64() / 60.0,
        args.seed
    );
    println!("{:<22} {:<44} {:>9}", "outcome", "detail", "count");
    for ((outcome, detail), n) in &tally.outcomes {
        println!("{:<22} {:<44} {:>9}", format!("{outcome:?}"), detail, n);
    }
    println!(
        "served {served} ({:.1}/s); latency of served requests p50 {:.0} ms, p99 {:.0} ms",
        served as f64 / elapsed.as_secs_f64(),
        percentile(&tally.latencies_ms, 50.0),
        percentile(&tally.latencies_ms, 99.0)
    );
    let [start, warm, peak, end] = rss;
    println!(
        "resident memory: start {:.1} MiB, after warm-up {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({:+.1}% since warm-up)",
        start as f64 / 1024.0,
        warm as f64 / 1024.0,
        peak as f64 / 1024.0,
        end as f64 / 1024.0,
        (end as f64 - warm as f64) / warm as f64 * 100.0
    );
}
