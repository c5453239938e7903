//! libFuzzer entry of the `checkpoint_dir` target; the body (and what it checks) is in `bodies/checkpoint_dir.rs`,
//! which `tests/tests/fuzz_corpus.rs` also runs over the committed corpus on stable.

#![no_main]

#[path = "../bodies/checkpoint_dir.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
