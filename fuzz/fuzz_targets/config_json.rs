//! libFuzzer entry of the `config_json` target; the body (and what it checks) is in `bodies/config_json.rs`,
//! which `tests/tests/fuzz_corpus.rs` also runs over the committed corpus on stable.

#![no_main]

#[path = "../bodies/config_json.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
