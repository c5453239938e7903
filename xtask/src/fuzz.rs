//! `cargo xtask fuzz`: write the fuzz targets' seed corpus, run every target for a while, or
//! run CI's fuzz step (install cargo-fuzz, build, run each target briefly from the corpus).
//!
//! The fuzz project (`fuzz/`) is its own cargo workspace built with `cargo fuzz` (on stable:
//! without a sanitizer no unstable flag is needed); this task prepares its inputs and drives
//! it. See `fuzz/README.md`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

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

/// The cargo-fuzz release CI installs (pinned: its build flags decide what the targets are).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo fuzz build`/`run` options: release (cargo-fuzz's default, one codegen unit) with
/// debug assertions and overflow checks, no sanitizer (the code under test is safe Rust).
const BUILD_FLAGS: [&str; 4] = ["-O", "--debug-assertions", "--sanitizer", "none"];

/// libFuzzer options of every run (one process on one core, libFuzzer's default: `-jobs`
/// would fork a worker logging to `fuzz-N.log`): a 10 s per-input timeout and a 2 GiB memory
/// limit (both count as failures), final statistics for the summary.
const LIBFUZZER_FLAGS: [&str; 3] = ["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"];

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
    /// Run each target (or one) for a while, growing its local corpus `fuzz/corpus/<target>/`.
    Run {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Run only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// CI's fuzz step: install the pinned cargo-fuzz if missing, build every target, run each
    /// from a scratch copy of its committed corpus; fails on any crash, timeout or OOM.
    Ci {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// Runs the task.
pub fn run(args: Args) -> anyhow::Result<()> {
    let fuzz = Fuzz::new()?;
    match args.action {
        Action::Seeds => write_seeds(&fuzz.root),
        Action::Run { seconds, target } => {
            let targets: Vec<&str> = match &target {
                Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
                Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
                None => TARGETS.to_vec(),
            };
            let mut failed = Vec::new();
            for t in targets {
                let corpus = fuzz.dir.join("corpus").join(t);
                let outcome = fuzz.run_target(t, seconds, &corpus)?;
                outcome.report(&fuzz);
                if !outcome.passed {
                    failed.push(t);
                }
            }
            if !failed.is_empty() {
                bail!("fuzz targets failed: {}", failed.join(", "));
            }
            Ok(())
        }
        Action::Ci { seconds } => ci(&fuzz, seconds),
    }
}

/// The fuzz project's paths.
struct Fuzz {
    /// The repository root.
    root: PathBuf,
    /// `fuzz/`, the cargo-fuzz workspace.
    dir: PathBuf,
    /// Where the fuzz build goes: under the root's ignored `target/`, never inside `fuzz/`.
    target_dir: PathBuf,
}

impl Fuzz {
    fn new() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives in the workspace")?
            .to_path_buf();
        Ok(Self {
            dir: root.join("fuzz"),
            target_dir: root.join("target/fuzz"),
            root,
        })
    }

    /// `cargo fuzz <verb>` with the build flags, in `fuzz/`.
    fn cargo_fuzz(&self, verb: &str) -> Command {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(&self.dir)
            .args(["fuzz", verb])
            .args(BUILD_FLAGS)
            .arg("--target-dir")
            .arg(&self.target_dir);
        cmd
    }

    /// The command that replays one input, as a developer types it from the repository root.
    fn reproduce_command(&self, target: &str, input: &Path) -> String {
        let input = input.strip_prefix(&self.dir).unwrap_or(input);
        format!(
            "cd fuzz && cargo fuzz run {} --target-dir ../target/fuzz {target} {}",
            BUILD_FLAGS.join(" "),
            input.display()
        )
    }

    /// Runs one target for `seconds` on `corpus` (where libFuzzer also adds what it finds).
    /// libFuzzer's output is passed through, less what [`OutputFilter`] drops.
    fn run_target(&self, target: &str, seconds: u64, corpus: &Path) -> anyhow::Result<Outcome> {
        let artifacts = self.dir.join("artifacts").join(target);
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut child = self
            .cargo_fuzz("run")
            .arg(target)
            .arg(corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(LIBFUZZER_FLAGS)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cargo fuzz run (is cargo-fuzz installed? `cargo xtask fuzz ci` installs it)")?;
        let stderr = child
            .stderr
            .take()
            .context("cargo fuzz's stderr is piped")?;
        let mut stats = Stats::default();
        let mut filter = OutputFilter::default();
        let mut out = std::io::stderr().lock();
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading cargo fuzz's output")?;
            stats.read(&line);
            if filter.keep(&line) {
                writeln!(out, "{line}")?;
            }
        }
        drop(out);
        let status = child.wait().context("waiting for cargo fuzz run")?;
        Ok(Outcome {
            target: target.to_owned(),
            passed: status.success(),
            stats,
            corpus_files: count_files(corpus)?,
            new_artifacts: files_since(&artifacts, started)?,
            wall_s: clock.elapsed().as_secs_f64(),
        })
    }
}

/// The cargo that runs xtask (so the fuzz build uses the same toolchain).
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Drops the bulk of libFuzzer's output: the per-input status lines (`#1234<TAB>NEW ...`,
/// `REDUCE`, `pulse`; thousands per run) and the recommended dictionary printed at exit;
/// nothing in them that the final statistics do not summarise.
#[derive(Default)]
struct OutputFilter {
    in_dictionary: bool,
}

impl OutputFilter {
    fn keep(&mut self, line: &str) -> bool {
        if line.starts_with("###### Recommended dictionary") {
            self.in_dictionary = true;
        }
        if self.in_dictionary {
            self.in_dictionary = !line.starts_with("###### End of recommended dictionary");
            return false;
        }
        !line
            .strip_prefix('#')
            .and_then(|rest| rest.split_once('\t'))
            .is_some_and(|(_, event)| {
                ["NEW", "REDUCE", "pulse"]
                    .iter()
                    .any(|e| event.starts_with(e))
            })
    }
}

/// libFuzzer's final statistics (`-print_final_stats=1`).
#[derive(Default)]
struct Stats {
    executions: Option<u64>,
    exec_per_s: Option<u64>,
    peak_rss_mb: Option<u64>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        let field = |name: &str| {
            line.strip_prefix(name)
                .and_then(|rest| rest.trim_start_matches(':').trim().parse().ok())
        };
        if let Some(v) = field("stat::number_of_executed_units") {
            self.executions = Some(v);
        } else if let Some(v) = field("stat::average_exec_per_sec") {
            self.exec_per_s = Some(v);
        } else if let Some(v) = field("stat::peak_rss_mb") {
            self.peak_rss_mb = Some(v);
        }
    }
}

/// What one target's run did.
struct Outcome {
    target: String,
    passed: bool,
    stats: Stats,
    corpus_files: usize,
    new_artifacts: Vec<PathBuf>,
    wall_s: f64,
}

impl Outcome {
    /// Prints a failed run's inputs and how to replay them.
    fn report(&self, fuzz: &Fuzz) {
        if self.passed {
            return;
        }
        eprintln!("FUZZ FAILURE: target {} failed", self.target);
        if self.new_artifacts.is_empty() {
            eprintln!(
                "  no input was saved under fuzz/artifacts/{}/ (see the output above)",
                self.target
            );
        }
        for input in &self.new_artifacts {
            eprintln!("  input:     {}", input.display());
            eprintln!(
                "  reproduce: {}",
                fuzz.reproduce_command(&self.target, input)
            );
        }
        eprintln!(
            "  once fixed, commit the input as fuzz/corpus/{}/regression-<what> so the tests replay it",
            self.target
        );
    }

    fn row(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        format!(
            "{:<20} {:>12} {:>10} {:>8} {:>8} {:>7.0}  {}",
            self.target,
            opt(self.stats.executions),
            opt(self.stats.exec_per_s),
            self.corpus_files,
            opt(self.stats.peak_rss_mb),
            self.wall_s,
            if self.passed { "ok" } else { "FAILED" }
        )
    }
}

/// CI's fuzz step.
fn ci(fuzz: &Fuzz, seconds: u64) -> anyhow::Result<()> {
    let step_clock = Instant::now();

    println!("== fuzz: tools (cargo-fuzz {CARGO_FUZZ_VERSION}, a C++ compiler for libFuzzer)");
    let clock = Instant::now();
    require_cxx()?;
    install_cargo_fuzz()?;
    println!("tools ready ({:.0} s)", clock.elapsed().as_secs_f64());

    println!(
        "== fuzz: build every target (cargo fuzz build {})",
        BUILD_FLAGS.join(" ")
    );
    let clock = Instant::now();
    let status = fuzz
        .cargo_fuzz("build")
        .status()
        .context("starting cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    println!("built ({:.0} s)", clock.elapsed().as_secs_f64());

    // libFuzzer adds what it finds to the first corpus directory: give it a scratch copy so
    // the committed corpus stays as it is.
    let scratch = fuzz.target_dir.join("ci-corpus");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing {}", scratch.display()))?;
    }
    let mut outcomes = Vec::new();
    for target in TARGETS {
        println!("== fuzz: {target} ({seconds} s from fuzz/corpus/{target}/)");
        let corpus = scratch.join(target);
        copy_dir(&fuzz.dir.join("corpus").join(target), &corpus)?;
        outcomes.push(fuzz.run_target(target, seconds, &corpus)?);
    }

    println!("== fuzz: summary ({seconds} s per target)");
    println!(
        "{:<20} {:>12} {:>10} {:>8} {:>8} {:>7}  result",
        "target", "executions", "exec/s", "corpus", "rss MB", "wall s"
    );
    for outcome in &outcomes {
        println!("{}", outcome.row());
    }
    println!(
        "fuzz step total: {:.0} s",
        step_clock.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        for outcome in &outcomes {
            outcome.report(fuzz);
        }
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// libfuzzer-sys compiles libFuzzer's C++ sources with the `cc` crate: without a C++ compiler
/// the build fails deep in a build script, so say so first.
fn require_cxx() -> anyhow::Result<()> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match Command::new(&cxx).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!(
            "no C++ compiler ({cxx}) found: libFuzzer is C++; install one (Debian: apt-get install g++)"
        ),
    }
}

/// Installs the pinned cargo-fuzz unless that version is already on the PATH.
fn install_cargo_fuzz() -> anyhow::Result<()> {
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let installed = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if installed.as_deref() == Some(wanted.as_str()) {
        println!("{wanted} already installed");
        return Ok(());
    }
    println!(
        "installing {wanted} (found: {})",
        installed.as_deref().unwrap_or("none")
    );
    let status = Command::new(cargo())
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .status()
        .context("starting cargo install cargo-fuzz")?;
    if !status.success() {
        bail!(
            "cargo install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION} failed ({status}): the fuzz step cannot run"
        );
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .count())
}

/// Files in `dir` (if it exists) modified at or after `since`: the inputs a run saved.
fn files_since(dir: &Path, since: SystemTime) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.metadata()?.modified()? >= since {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real run's output (libfuzzer-sys 0.4.13), in order.
    const RUN_OUTPUT: [(&str, bool); 14] = [
        ("INFO: Seed: 4034431323", true),
        (
            "#17\tINITED cov: 2777 ft: 6641 corp: 15/62Kb exec/s: 0 rss: 62Mb",
            true,
        ),
        (
            "#18\tNEW    cov: 2780 ft: 6650 corp: 16/63Kb lim: 19466 exec/s: 0 rss: 62Mb L: 9/9 MS: 1 ChangeByte-",
            false,
        ),
        (
            "#2048\tpulse  cov: 3100 ft: 9000 corp: 300/1Mb lim: 19466 exec/s: 1024 rss: 62Mb",
            false,
        ),
        (
            "#2050\tREDUCE cov: 3100 ft: 9000 corp: 300/1Mb lim: 19466 exec/s: 1024 rss: 62Mb L: 5/9 MS: 1 EraseBytes-",
            false,
        ),
        (
            "#111032\tDONE   cov: 3911 ft: 14421 corp: 927/2727Kb lim: 19466 exec/s: 3581 rss: 62Mb",
            true,
        ),
        ("###### Recommended dictionary. ######", false),
        ("\"stream\" # Uses: 496", false),
        ("\"#1\\tNEW\" # Uses: 3", false),
        ("###### End of recommended dictionary. ######", false),
        ("Done 111032 runs in 31 second(s)", true),
        ("stat::number_of_executed_units: 111032", true),
        ("stat::average_exec_per_sec:     3581", true),
        ("stat::peak_rss_mb:              62", true),
    ];

    #[test]
    fn filter_drops_progress_lines_and_the_dictionary_only() {
        let mut filter = OutputFilter::default();
        for (line, kept) in RUN_OUTPUT {
            assert_eq!(filter.keep(line), kept, "{line:?}");
        }
        // A panic after the dictionary is shown again.
        assert!(
            filter.keep("thread '<unnamed>' panicked at fuzz_targets/../bodies/mxfp4.rs:111:5:")
        );
    }

    #[test]
    fn stats_come_from_the_final_statistics() {
        let mut stats = Stats::default();
        for (line, _) in RUN_OUTPUT {
            stats.read(line);
        }
        assert_eq!(stats.executions, Some(111_032));
        assert_eq!(stats.exec_per_s, Some(3581));
        assert_eq!(stats.peak_rss_mb, Some(62));
        let mut none = Stats::default();
        none.read("stat::number_of_executed_units: lots");
        assert_eq!(none.executions, None);
    }
}
