//! Arbitrary bytes as the `model.safetensors` of a tiny DeepSeek-V3 checkpoint directory (its
//! `config.json` fixed: 16 routed experts, MXFP4 W4A4) → the loader's plan, inspect report, and,
//! when the report finds nothing wrong, the full load (dequantizing every MXFP4 tensor).
//!
//! Lying offsets, overlapping ranges, absurd shapes, wrong dtypes, NaN scales and truncated data
//! must all be `LoadError`s; a checkpoint the report calls servable must load.

use std::path::PathBuf;
use std::sync::LazyLock;

use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::tiny::{TinySpec, config::config_json};

/// The spec of the fixed `config.json`; `cargo xtask fuzz --seeds` writes its weights as the seed.
fn spec() -> TinySpec {
    TinySpec {
        n_routed_experts: 16,
        ..TinySpec::default()
    }
}

/// One directory for the whole run: the fuzzer is single-threaded and rewrites the weights file
/// before every input.
static DIR: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = serde_json::to_string(&config_json(&spec())).expect("JSON serializes");
    std::fs::write(dir.path().join("config.json"), config).expect("config.json written");
    let weights = dir.path().join("model.safetensors");
    (dir, weights)
});

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let (dir, weights) = &*DIR;
    std::fs::write(weights, data).expect("weights written");
    let options = LoadOptions::default();
    let Ok(report) = loader::inspect(dir.path(), &options) else {
        return;
    };
    // The report checks headers, names, dtypes, shapes and scale bytes; only values it cannot
    // see without decoding may still fail the load.
    if report.servable()
        && let Err(e) = loader::load(dir.path(), &options)
    {
        assert!(
            matches!(
                e,
                loader::LoadError::Tensors { .. } | loader::LoadError::Quantization(_)
            ),
            "servable report but load failed: {e}"
        );
    }
}
