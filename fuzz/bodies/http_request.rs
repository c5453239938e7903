//! Arbitrary bytes as the body of `POST /v1/chat/completions` or `POST /v1/completions` → the
//! server's body parsing, validation, chat template and tokenizer (the tiny model's), exactly as
//! a request handler runs them before anything reaches the engine.
//!
//! Every body must be accepted or rejected with a 4xx `ApiError` naming the problem; accepted
//! requests must satisfy the documented bounds (n in 1..=MAX_N, temperature in [0, 2], top_p
//! in (0, 1], max_tokens ≥ 1) and tokenize to ids inside the vocabulary.

use std::sync::LazyLock;

use model_deepseek::tiny::tokenizer::{tokenizer_config_json, tokenizer_json};
use server::error::ApiError;
use server::openai::{ChatCompletionRequest, CompletionRequest};
use server::tokenizer::TextCodec;
use server::validate::{self, GenerationSpec, MAX_N};

const MODEL: &str = "mxserve-tiny";

static CODEC: LazyLock<TextCodec> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, value) in [
        ("tokenizer.json", tokenizer_json()),
        ("tokenizer_config.json", tokenizer_config_json()),
    ] {
        std::fs::write(dir.path().join(name), value.to_string()).expect("tokenizer files written");
    }
    TextCodec::load(dir.path()).expect("the tiny tokenizer loads")
});

fn check_rejection(e: &ApiError) {
    assert!(
        e.status.is_client_error(),
        "a bad body gave {}: {e:?}",
        e.status
    );
}

fn check_spec(spec: &GenerationSpec) {
    assert!((1..=MAX_N as usize).contains(&spec.n));
    assert!((0.0..=2.0).contains(&spec.temperature));
    assert!(spec.top_p > 0.0 && spec.top_p <= 1.0);
    assert!(spec.max_tokens.is_none_or(|n| n >= 1));
}

fn check_ids(ids: &[u32]) {
    let vocab = CODEC.tokenizer().get_vocab_size(true) as u32;
    assert!(
        ids.iter().all(|&id| id < vocab),
        "token id outside the vocabulary"
    );
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&endpoint, body)) = data.split_first() else {
        return;
    };
    if endpoint & 1 == 0 {
        let validated = validate::parse_json::<ChatCompletionRequest>(body)
            .and_then(|r| validate::chat(r, MODEL));
        match validated {
            Err(e) => check_rejection(&e),
            Ok((messages, spec)) => {
                check_spec(&spec);
                if let Ok(ids) = CODEC.encode_chat(&messages) {
                    check_ids(&ids);
                }
            }
        }
    } else {
        let validated = validate::parse_json::<CompletionRequest>(body)
            .and_then(|r| validate::completion(r, MODEL));
        match validated {
            Err(e) => check_rejection(&e),
            Ok((prompts, spec)) => {
                check_spec(&spec);
                for prompt in prompts {
                    if let Ok(ids) = CODEC.encode_prompt(&prompt) {
                        check_ids(&ids);
                    }
                }
            }
        }
    }
}
