//! The server answering from a GPU: the built-in model resident on the first GPU, chat and
//! completion requests, streamed and not, one at a time and concurrently. Skipped with a
//! message on machines without a GPU (CI); run on the device machine as `cargo xtask
//! device-check` describes.
//!
//! Token-for-token agreement of the GPU forward pass with the CPU reference is checked at the
//! model level (`model-deepseek/tests/gpu_forward.rs`, which accounts for near-tied routing
//! decisions). Here the server's own contract is checked on the GPU backend: a stream carries
//! exactly the text of the same request answered whole, greedy answers do not depend on what
//! else runs in the batch, a seed reproduces a sampled answer, and `n` choices come back.

mod server_support;

use std::time::Duration;

use runtime_rocm::first_gpu;
use serde_json::{Value, json};
use server::client;
use server_support::{MODEL, TestServer, limits, start_on};

async fn gpu_server(test: &str) -> Option<TestServer> {
    let device = first_gpu(test)?;
    Some(start_on(device, limits(), 1 << 20, Duration::from_secs(60)).await)
}

async fn complete(addr: std::net::SocketAddr, path: &str, body: &Value) -> Value {
    let reply = client::post(addr, path, body.to_string()).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).unwrap()
}

/// The text a stream carries, joined from its deltas.
async fn streamed_text(addr: std::net::SocketAddr, path: &str, body: &Value) -> String {
    let reply = client::stream(addr, path, body).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.stray, "", "bytes outside data: events");
    assert_eq!(reply.events.last().unwrap().data, "[DONE]");
    reply.events[..reply.events.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            let choice = &v["choices"][0];
            choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn chat(prompt: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 40,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gpu_server_answers_chat_and_completions() {
    let Some(server) = gpu_server("the_gpu_server_answers_chat_and_completions").await else {
        return;
    };
    let addr = server.addr;
    let models = complete_get(addr, "/v1/models").await;
    assert_eq!(models["data"][0]["id"], MODEL);

    // Whole and streamed answers to the same greedy request carry the same text.
    let body = chat("Tell me about the sea.", json!({}));
    let whole = complete(addr, "/v1/chat/completions", &body).await;
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    assert_eq!(
        streamed_text(addr, "/v1/chat/completions", &streaming).await,
        text
    );

    // Plain completions, too.
    let completion = complete(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "once upon a time", "max_tokens": 32, "temperature": 0}),
    )
    .await;
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 32);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_gpu_answers_equal_the_same_requests_alone() {
    let Some(server) = gpu_server("batched_gpu_answers_equal_the_same_requests_alone").await else {
        return;
    };
    let addr = server.addr;
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("question {i}: {}", "why ".repeat(i * 3 + 1)))
        .collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let v = complete(addr, "/v1/chat/completions", &chat(p, json!({}))).await;
        alone.push(v["choices"][0]["message"]["content"].clone());
    }
    // The same requests at once: they share decode steps (different lengths in one batch).
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = chat(p, json!({"stream": true}));
            tokio::spawn(async move { streamed_text(addr, "/v1/chat/completions", &body).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            Value::String(task.await.unwrap()),
            alone[i],
            "prompt {i} changed when batched"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_reproduces_sampled_gpu_answers() {
    let Some(server) = gpu_server("a_seed_reproduces_sampled_gpu_answers").await else {
        return;
    };
    let addr = server.addr;
    let body = chat(
        "Write a poem.",
        json!({"temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 7, "n": 3}),
    );
    let first = complete(addr, "/v1/chat/completions", &body).await;
    let again = complete(addr, "/v1/chat/completions", &body).await;
    let texts = |v: &Value| -> Vec<Value> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].clone())
            .collect()
    };
    assert_eq!(texts(&first).len(), 3);
    assert_eq!(texts(&first), texts(&again));
    server.shutdown().await;
}

async fn complete_get(addr: std::net::SocketAddr, path: &str) -> Value {
    let reply = client::get(addr, path).await.unwrap();
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).unwrap()
}
