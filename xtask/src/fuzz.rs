//! `cargo xtask fuzz`: write the fuzz targets' seed corpus, or run every target for a while.
//!
//! The fuzz project (`fuzz/`) is its own cargo workspace built with nightly and `cargo fuzz`;
//! this task only prepares its inputs and drives it. See `fuzz/README.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, config::config_json};
use serde_json::{Value, json};

/// Every fuzz target, in the order `run` takes them.
pub const TARGETS: [&str; 6] = [
    "quark_config",
    "config_json",
    "safetensors_header",
    "checkpoint_dir",
    "mxfp4",
    "http_request",
];

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// (Re)write the committed seed corpus `fuzz/corpus/<target>/seed-*` from our own fixtures
    /// and tiny checkpoints.
    Seeds,
    /// Run each target (or one) for a while from its corpus, one job on one core.
    Run {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Run only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

/// Runs the task.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf();
    match args.action {
        Action::Seeds => write_seeds(&root),
        Action::Run { seconds, target } => {
            let targets: Vec<&str> = match &target {
                Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
                Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
                None => TARGETS.to_vec(),
            };
            for t in targets {
                run_target(&root, t, seconds)?;
            }
            Ok(())
        }
    }
}

/// The `cargo fuzz run` command line for one target: no sanitizer (the code under test is safe
/// Rust, bounds-checked), overflow checks and debug assertions on, one job.
fn run_target(root: &Path, target: &str, seconds: u64) -> anyhow::Result<()> {
    let status = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            "--debug-assertions",
        ])
        .arg(target)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-jobs=1", "-workers=1", "-timeout=10", "-rss_limit_mb=2048"])
        .status()
        .context("starting cargo +nightly fuzz (is cargo-fuzz installed?)")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}); the crashing input is under fuzz/artifacts/{target}/"
        );
    }
    Ok(())
}

struct Seeds {
    dir: PathBuf,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> anyhow::Result<Self> {
        let dir = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn put(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

fn specs() -> Vec<(&'static str, TinySpec)> {
    let base = TinySpec {
        n_routed_experts: 16,
        ..TinySpec::default()
    };
    vec![
        ("deepseek", base.clone()),
        (
            "deepseek-bf16-shared",
            TinySpec {
                shared_experts: SharedExperts::Bf16,
                ..base.clone()
            },
        ),
        (
            "kimi-k25",
            TinySpec {
                layout: TinyLayout::KimiK25,
                ..base.clone()
            },
        ),
        (
            "kimi-k25-bf16-shared",
            TinySpec {
                layout: TinyLayout::KimiK25,
                shared_experts: SharedExperts::Bf16,
                ..base
            },
        ),
    ]
}

fn write_seeds(root: &Path) -> anyhow::Result<()> {
    // Quark configs: the crate's fixtures and the tiny checkpoints' own, under both name
    // mappings (the target's first byte picks one).
    let quark = Seeds::new(root, "quark_config")?;
    let fixtures = root.join("quant-quark/tests/fixtures");
    let mut fixture_files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .with_context(|| format!("reading {}", fixtures.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    fixture_files.sort();
    let mut quark_texts = Vec::new();
    for path in fixture_files {
        let text = std::fs::read_to_string(&path)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("fixture");
        quark_texts.push((stem.to_owned(), text));
    }
    let config = Seeds::new(root, "config_json")?;
    for (name, spec) in specs() {
        let json = config_json(&spec);
        config.put(name, serde_json::to_string_pretty(&json)?.as_bytes())?;
        let q = json
            .get("quantization_config")
            .context("tiny configs carry a quantization_config at the top level")?;
        quark_texts.push((format!("tiny-{name}"), serde_json::to_string(q)?));
    }
    for (name, text) in &quark_texts {
        for selector in [0u8, 1] {
            let mut bytes = vec![selector];
            bytes.extend_from_slice(text.as_bytes());
            quark.put(&format!("{name}-{selector}"), &bytes)?;
        }
    }

    // Checkpoints: the 16-expert DeepSeek-V3 tiny checkpoint the checkpoint_dir target's
    // config.json describes, a copy with one NaN scale byte, and small handmade files.
    let tmp = std::env::temp_dir().join(format!("mxserve-fuzz-seeds-{}", std::process::id()));
    let spec = specs().remove(0).1;
    model_deepseek::tiny::write_tiny_checkpoint(&tmp, &spec)?;
    let weights = std::fs::read(tmp.join("model.safetensors"))?;
    std::fs::remove_dir_all(&tmp)?;
    let ckpt = Seeds::new(root, "checkpoint_dir")?;
    ckpt.put("tiny-deepseek-16", &weights)?;
    let header = Seeds::new(root, "safetensors_header")?;
    header.put("tiny-deepseek-16", &weights)?;
    for (name, bytes) in handmade_safetensors() {
        header.put(name, &bytes)?;
    }

    // MXFP4: decode inputs (selector ≠ 0: blocks, skew, scales, packed) and encode inputs
    // (selector 0: rule, f32 values).
    let mx = Seeds::new(root, "mxfp4")?;
    let mut decode = vec![1u8, 2, 0, 127, 0];
    decode.extend((0..32u8).map(|b| b.wrapping_mul(37)));
    mx.put("decode-2-blocks", &decode)?;
    let mut decode_nan = vec![1u8, 1, 0, 255];
    decode_nan.extend([0x21u8; 16]);
    mx.put("decode-nan-scale", &decode_nan)?;
    let mut decode_short = vec![1u8, 3, 0x81, 130, 254];
    decode_short.extend([0xf7u8; 40]);
    mx.put("decode-lying-lengths", &decode_short)?;
    for (rule, name) in [(0u8, "ocp"), (1, "even")] {
        let mut encode = vec![0u8, rule];
        for i in 0..64 {
            let v = (i as f32 - 31.5) * 0.37;
            encode.extend(v.to_le_bytes());
        }
        mx.put(&format!("encode-{name}"), &encode)?;
    }
    // HTTP bodies: first byte even = chat, odd = completions.
    let http = Seeds::new(root, "http_request")?;
    let bodies: [(&str, u8, Value); 6] = [
        (
            "chat",
            0,
            json!({"model": "mxserve-tiny", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"}],
                "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3}),
        ),
        (
            "chat-stream-parts",
            0,
            json!({"model": "mxserve-tiny", "stream": true,
                "stream_options": {"include_usage": true}, "n": 2, "stop": ["\n", "."],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "é ☃"}]},
                             {"role": "assistant", "content": "b"},
                             {"role": "user", "content": "c"}]}),
        ),
        (
            "chat-bad-n",
            0,
            json!({"model": "mxserve-tiny", "n": 1000, "max_completion_tokens": 0,
                "messages": [{"role": "tool", "content": "x"}], "top_k": -5}),
        ),
        (
            "completion",
            1,
            json!({"model": "mxserve-tiny", "prompt": "Once upon a time", "max_tokens": 16}),
        ),
        (
            "completion-many",
            1,
            json!({"model": "mxserve-tiny", "prompt": ["a", "bc", ""], "n": 3, "top_k": 4,
                "logprobs": null, "stream": false}),
        ),
        (
            "completion-huge-max-tokens",
            1,
            json!({"model": "other", "prompt": "x", "max_tokens": 4294967295u32,
                "temperature": 2.5}),
        ),
    ];
    for (name, endpoint, body) in bodies {
        let mut bytes = vec![endpoint];
        bytes.extend(serde_json::to_vec(&body)?);
        http.put(name, &bytes)?;
    }
    println!(
        "seed corpus written under {}",
        root.join("fuzz/corpus").display()
    );
    Ok(())
}

/// Small well-formed safetensors files: the header target mutates them into lying ones.
fn handmade_safetensors() -> Vec<(&'static str, Vec<u8>)> {
    let file = |header: &str, data_len: usize| {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend((0..data_len).map(|i| i as u8));
        out
    };
    vec![
        (
            "two-tensors",
            file(
                r#"{"__metadata__":{"format":"pt"},"w.weight":{"dtype":"U8","shape":[2,16],"data_offsets":[0,32]},"w.weight_scale":{"dtype":"U8","shape":[2,1],"data_offsets":[32,34]}}"#,
                34,
            ),
        ),
        (
            "bf16-f32",
            file(
                r#"{"a":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},"c":{"dtype":"F8_E8M0","shape":[],"data_offsets":[16,17]}}"#,
                17,
            ),
        ),
        ("empty", file("{}", 0)),
    ]
}
