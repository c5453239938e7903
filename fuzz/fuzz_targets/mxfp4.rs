//! libFuzzer entry of the `mxfp4` target; the body (and what it checks) is in `bodies/mxfp4.rs`,
//! which `tests/tests/fuzz_corpus.rs` also runs over the committed corpus on stable.

#![no_main]

#[path = "../bodies/mxfp4.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
