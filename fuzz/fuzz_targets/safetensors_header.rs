//! libFuzzer entry of the `safetensors_header` target; the body (and what it checks) is in `bodies/safetensors_header.rs`,
//! which `tests/tests/fuzz_corpus.rs` also runs over the committed corpus on stable.

#![no_main]

#[path = "../bodies/safetensors_header.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
