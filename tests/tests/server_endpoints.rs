//! Snapshots of every endpoint's responses, streamed and not, and of every error, from a
//! real server on the built-in tiny model (ids and timestamps redacted).

mod server_support;

use serde_json::{Value, json};
use server::client;
use server_support::{MODEL, limits, start};

/// Status, the headers that matter, and the JSON body.
async fn exchange(addr: std::net::SocketAddr, path: &str, body: Option<Vec<u8>>) -> Value {
    let reply = match body {
        Some(body) => client::post(addr, path, body).await,
        None => client::get(addr, path).await,
    }
    .unwrap();
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let body = serde_json::from_slice::<Value>(&reply.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into_owned()));
    json!({
        "status": reply.status.as_u16(),
        "content_type": header("content-type"),
        "retry_after": header("retry-after"),
        "body": body,
    })
}

/// Every event of a stream, parsed (`[DONE]` kept as text).
async fn events(addr: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let reply = client::stream(addr, path, &body).await.unwrap();
    assert_eq!(reply.stray, "", "bytes outside data: events");
    let events: Vec<Value> = reply
        .events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or_else(|_| Value::String(e.data.clone())))
        .collect();
    json!({"status": reply.status.as_u16(), "events": events})
}

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::assert_json_snapshot!($name, $value, {
            ".body.id" => "[id]",
            ".body.created" => "[created]",
            ".body.data[].created" => "[created]",
            ".events[].id" => "[id]",
            ".events[].created" => "[created]",
        })
    };
}

fn post(body: Value) -> Option<Vec<u8>> {
    Some(body.to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_responses() {
    let server = start(limits(), 1 << 20).await;
    let addr = server.addr;
    snapshot!("models", exchange(addr, "/v1/models", None).await);
    snapshot!("health", exchange(addr, "/health", None).await);
    let chat = json!({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}], "max_tokens": 8, "temperature": 0});
    snapshot!(
        "chat",
        exchange(addr, "/v1/chat/completions", post(chat.clone())).await
    );
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    chat_stream["stream_options"] = json!({"include_usage": true});
    snapshot!(
        "chat_stream",
        events(addr, "/v1/chat/completions", chat_stream).await
    );
    let sampled = json!({"model": MODEL, "messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7, "n": 2});
    snapshot!(
        "chat_sampled_n2",
        exchange(addr, "/v1/chat/completions", post(sampled)).await
    );
    let completion =
        json!({"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0});
    snapshot!(
        "completion",
        exchange(addr, "/v1/completions", post(completion.clone())).await
    );
    let mut completion_stream = completion.clone();
    completion_stream["stream"] = json!(true);
    snapshot!(
        "completion_stream",
        events(addr, "/v1/completions", completion_stream).await
    );
    let metrics = client::get(addr, "/metrics").await.unwrap();
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    // Values depend on timing; the metric families and the request counts do not.
    let stable: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# TYPE") || l.starts_with("mxserve_requests_total"))
        .collect();
    insta::assert_snapshot!("metrics_families", stable.join("\n"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_responses() {
    let server = start(limits(), 4096).await;
    let addr = server.addr;
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post(body)
    };
    let context = server.state.model.context_length;
    let cases: Vec<(&str, &str, Option<Vec<u8>>)> = vec![
        (
            "error_malformed_json",
            "/v1/chat/completions",
            Some(b"{\"model\": ".to_vec()),
        ),
        (
            "error_invalid_utf8",
            "/v1/chat/completions",
            Some(b"{\"model\": \"\xff\xfe\"}".to_vec()),
        ),
        (
            "error_wrong_type",
            "/v1/chat/completions",
            chat(json!({"max_tokens": "many"})),
        ),
        (
            "error_missing_messages",
            "/v1/chat/completions",
            post(json!({"model": MODEL})),
        ),
        (
            "error_unknown_field",
            "/v1/chat/completions",
            chat(json!({"frobnicate": true})),
        ),
        (
            "error_unknown_model",
            "/v1/chat/completions",
            post(json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})),
        ),
        (
            "error_empty_messages",
            "/v1/chat/completions",
            post(json!({"model": MODEL, "messages": []})),
        ),
        (
            "error_max_tokens_past_context",
            "/v1/chat/completions",
            chat(json!({"max_tokens": context})),
        ),
        (
            "error_negative_temperature",
            "/v1/chat/completions",
            chat(json!({"temperature": -1})),
        ),
        (
            "error_top_p_zero",
            "/v1/chat/completions",
            chat(json!({"top_p": 0})),
        ),
        (
            "error_top_p_above_one",
            "/v1/completions",
            post(json!({"model": MODEL, "prompt": "x", "top_p": 1.01})),
        ),
        (
            "error_n_zero",
            "/v1/completions",
            post(json!({"model": MODEL, "prompt": "x", "n": 0})),
        ),
        (
            "error_prompt_wrong_type",
            "/v1/completions",
            post(json!({"model": MODEL, "prompt": 42})),
        ),
        (
            "error_oversized_body",
            "/v1/completions",
            post(json!({"model": MODEL, "prompt": "x".repeat(5000)})),
        ),
        ("error_unknown_route", "/v2/nothing", None),
        ("error_wrong_method", "/v1/chat/completions", None),
    ];
    for (name, path, body) in cases {
        snapshot!(name, exchange(addr, path, body).await);
    }
    // The server still answers normally after all of that.
    let ok = exchange(
        addr,
        "/v1/completions",
        post(json!({"model": MODEL, "prompt": "x", "max_tokens": 2})),
    )
    .await;
    assert_eq!(ok["status"], 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut limits = limits();
    limits.max_waiting = 0;
    let server = start(limits, 1 << 20).await;
    let body = post(json!({"model": MODEL, "prompt": "x", "max_tokens": 2}));
    snapshot!(
        "error_queue_full",
        exchange(server.addr, "/v1/completions", body).await
    );
    server.shutdown().await;
}
