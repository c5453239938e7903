//! The fuzz targets' bodies (`fuzz/bodies/*.rs`) run over the committed corpus
//! (`fuzz/corpus/<target>/seed-*` and `regression-*`), on stable and without libFuzzer: every
//! input that once found a bug stays a regression test, and every seed keeps exercising its
//! parser's invariants.

use std::path::Path;

#[path = "../../fuzz/bodies/checkpoint_dir.rs"]
mod checkpoint_dir;
#[path = "../../fuzz/bodies/config_json.rs"]
mod config_json;
#[path = "../../fuzz/bodies/http_request.rs"]
mod http_request;
#[path = "../../fuzz/bodies/mxfp4.rs"]
mod mxfp4;
#[path = "../../fuzz/bodies/quark_config.rs"]
mod quark_config;
#[path = "../../fuzz/bodies/safetensors_header.rs"]
mod safetensors_header;

#[test]
fn quark_config_corpus() {
    run_corpus("quark_config", quark_config::run);
}

#[test]
fn config_json_corpus() {
    run_corpus("config_json", config_json::run);
}

#[test]
fn safetensors_header_corpus() {
    run_corpus("safetensors_header", safetensors_header::run);
}

#[test]
fn checkpoint_dir_corpus() {
    run_corpus("checkpoint_dir", checkpoint_dir::run);
}

#[test]
fn mxfp4_corpus() {
    run_corpus("mxfp4", mxfp4::run);
}

#[test]
fn http_request_corpus() {
    run_corpus("http_request", http_request::run);
}

fn run_corpus(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        // The committed corpus: seeds and inputs that once found a bug. What a local fuzzing
        // run adds is neither, and may change under a running fuzzer.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-") || n.starts_with("regression-"))
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    for input in &inputs {
        let bytes = std::fs::read(input).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{} fails {target}", input.display());
    }
}
