//! `mxserve serve`: load a model (by default the built-in tiny one, created once in the
//! cache) and serve the OpenAI-compatible API until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use model_deepseek::fusion::FusionMode;
use runtime_rocm::{Device, DeviceSpec};
use server::engine::EngineLimits;
use server::launch::{LaunchOptions, launch_on};

/// The id the built-in model is served under.
const BUILTIN_MODEL_ID: &str = "mxserve-tiny";

/// Options of `mxserve serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, tokenizer_config.json).
    /// Default: the built-in tiny model, generated once into the cache directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model id clients send in `model` (default: the directory name; `mxserve-tiny` for
    /// the built-in model).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Device: auto, cpu, rocm:N or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Shared-expert fusion: auto, on or off.
    #[arg(long, default_value = "auto")]
    pub fusion: FusionMode,
    /// Most tokens (prefill chunks plus decode tokens) in one forward step.
    #[arg(long, default_value_t = 1024)]
    pub max_batch_tokens: usize,
    /// Most sequences generating at once.
    #[arg(long, default_value_t = 128)]
    pub max_running: usize,
    /// Most sequences waiting to start; past it requests get 429 with Retry-After.
    #[arg(long, default_value_t = 512)]
    pub max_waiting: usize,
    /// KV-cache capacity in tokens (default: max-running full contexts; on a GPU, whole
    /// blocks of 64 tokens, at least one full context, by default at most what the device's
    /// free memory holds).
    #[arg(long)]
    pub kv_capacity_tokens: Option<usize>,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds running requests get to finish after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
}

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The best device present.
    Auto,
    /// The CPU reference forward pass.
    Cpu,
    /// AMD GPU number N.
    Rocm(usize),
    /// NVIDIA GPU number N.
    Cuda(usize),
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Rocm(n) => write!(f, "rocm:{n}"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let gpu = |prefix: &str| -> Option<Result<usize, String>> {
            s.strip_prefix(prefix).map(|n| {
                n.parse()
                    .map_err(|_| format!("`{s}`: expected {prefix}N with N a device number"))
            })
        };
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            _ => match (gpu("rocm:"), gpu("cuda:")) {
                (Some(n), _) => n.map(Self::Rocm),
                (_, Some(n)) => n.map(Self::Cuda),
                _ => Err(format!("`{s}`: expected auto, cpu, rocm:N or cuda:N")),
            },
        }
    }
}

/// Runs `mxserve serve`; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let device = open_device(args.device)?;
    let (model_dir, model_id) = match &args.model {
        Some(dir) => (dir.clone(), args.model_id.clone()),
        None => {
            let spinner = spinner("preparing the built-in model (generated once, then cached)");
            let dir = model_deepseek::tiny::ensure_builtin_model()
                .context("creating the built-in model")?;
            spinner.finish_and_clear();
            tracing::info!(dir = %dir.display(), "built-in model");
            (
                dir,
                Some(
                    args.model_id
                        .clone()
                        .unwrap_or_else(|| BUILTIN_MODEL_ID.into()),
                ),
            )
        }
    };
    let options = LaunchOptions {
        model_dir: model_dir.clone(),
        model_id,
        fusion: args.fusion,
        limits: EngineLimits {
            max_batch_tokens: args.max_batch_tokens,
            max_running: args.max_running,
            max_waiting: args.max_waiting,
        },
        kv_capacity_tokens: args.kv_capacity_tokens,
        max_body_bytes: args.max_body_bytes,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(model_dir.display().to_string());
    let launched = launch_on(&options, &device, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    })
    .with_context(|| format!("loading {}", model_dir.display()))?;
    bar.finish_and_clear();
    let state = launched.state;
    for layer in &state.model.shared_expert_fusion {
        tracing::info!(
            layer = layer.layer,
            fused = layer.fused,
            "shared-expert fusion: {}",
            layer.reason
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .or_else(|_| {
                std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or(())
            })
            .map_err(|()| {
                anyhow::anyhow!("--host {}: not an address or resolvable name", args.host)
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let addr = listener.local_addr()?;
        print_banner(addr, &state.model.id, &launched.device);
        server::server::serve(
            listener,
            state,
            shutdown_signal(),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await
        .context("serving")
    })?;
    // The engine thread ends once the last sequence is done.
    launched
        .engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    tracing::info!("stopped");
    Ok(0)
}

/// Opens the device to serve on. `auto` takes the first GPU that opens (runtime-rocm logs why
/// each candidate was passed over) and the CPU otherwise; a named GPU that cannot be opened is
/// an error, never a silent fall back to the CPU.
fn open_device(arg: DeviceArg) -> anyhow::Result<Device> {
    let spec = match arg {
        DeviceArg::Auto => DeviceSpec::Auto,
        DeviceArg::Cpu => DeviceSpec::Cpu,
        DeviceArg::Rocm(n) => DeviceSpec::Rocm(n),
        DeviceArg::Cuda(n) => DeviceSpec::Cuda(n),
    };
    let device = Device::open(spec).with_context(|| format!("--device {arg}"))?;
    let info = device.info();
    match (arg, device.is_cpu()) {
        (DeviceArg::Auto, true) => {
            tracing::info!("device auto: no GPU opened, serving on the CPU reference forward pass")
        }
        (DeviceArg::Auto, false) => tracing::info!(
            "device auto: serving on {} ({}, {}), the first GPU that opened",
            info.id,
            info.name,
            info.arch
        ),
        (_, true) => tracing::info!("device: CPU"),
        (_, false) => tracing::info!("device: {} ({}, {})", info.id, info.name, info.arch),
    }
    Ok(device)
}

fn spinner(message: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(message.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

fn print_banner(addr: SocketAddr, model: &str, device: &str) {
    println!("mxserve is serving `{model}` on http://{addr} (device: {device})");
    println!("try:");
    println!(
        "  curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], \"max_tokens\": 32}}'"
    );
    println!("stop with Ctrl-C (running requests get to finish)");
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
