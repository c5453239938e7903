//! libFuzzer entry of the `http_request` target; the body (and what it checks) is in `bodies/http_request.rs`,
//! which `tests/tests/fuzz_corpus.rs` also runs over the committed corpus on stable.

#![no_main]

#[path = "../bodies/http_request.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
