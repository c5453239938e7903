//! The server under load on the built-in tiny model: 32 concurrent streams each complete and
//! in order, a greedy request gives the same text alone and inside a busy batch, stop
//! strings cut where they should, a client that goes away frees its sequence, and shutdown
//! lets a running stream finish.

mod server_support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::client;
use server::engine::SubmitError;
use server_support::{MODEL, limits, start, start_with_deadline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn prompt(i: usize) -> String {
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    (0..=i % 7 + 1)
        .map(|k| words[(i * 3 + k) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" {i}")
}

fn request(i: usize, stream: bool) -> Value {
    let mut body = if i.is_multiple_of(2) {
        json!({"model": MODEL, "messages": [{"role": "user", "content": prompt(i)}]})
    } else {
        json!({"model": MODEL, "prompt": prompt(i)})
    };
    body["max_tokens"] = json!(12 + i % 13);
    body["temperature"] = json!(0);
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn path(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    }
}

/// The text and usage of a non-streamed answer.
fn text_of(body: &Value) -> (String, Value) {
    let choice = &body["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or(choice["text"].as_str())
        .unwrap()
        .to_string();
    (text, body["usage"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_streams_match_their_requests_alone() {
    let server = start(limits(), 1 << 20).await;
    let addr = server.addr;
    let n = 32;
    let mut alone = Vec::new();
    for i in 0..n {
        let reply = client::post(addr, path(i), request(i, false).to_string())
            .await
            .unwrap();
        assert_eq!(reply.status.as_u16(), 200);
        alone.push(text_of(&serde_json::from_slice(&reply.body).unwrap()));
    }
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                client::stream(addr, path(i), &request(i, true))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = task.await.unwrap();
        assert_eq!(reply.status.as_u16(), 200, "request {i}");
        assert_eq!(reply.stray, "");
        let data: Vec<&str> = reply.events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(
            data.last(),
            Some(&"[DONE]"),
            "request {i}: stream must end with [DONE]"
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        // Content chunks, then the one finish chunk, then the usage chunk.
        let usage = chunks.last().unwrap();
        assert_eq!(
            usage["choices"],
            json!([]),
            "request {i}: last chunk carries usage"
        );
        assert_eq!(usage["usage"], alone[i].1, "request {i}: usage");
        let finish_at = chunks
            .iter()
            .position(|c| !c["choices"][0]["finish_reason"].is_null())
            .unwrap();
        assert_eq!(
            finish_at,
            chunks.len() - 2,
            "request {i}: finish chunk right before usage"
        );
        let mut text = String::new();
        for c in &chunks[..=finish_at] {
            assert_eq!(c["choices"].as_array().unwrap().len(), 1);
            let choice = &c["choices"][0];
            text.push_str(
                choice["delta"]["content"]
                    .as_str()
                    .or(choice["text"].as_str())
                    .unwrap_or(""),
            );
        }
        assert_eq!(
            text, alone[i].0,
            "request {i}: text inside a busy batch differs from alone"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_text_before_it() {
    let server = start(limits(), 1 << 20).await;
    let body =
        json!({"model": MODEL, "prompt": "once upon a time", "max_tokens": 24, "temperature": 0});
    let reply = client::post(server.addr, "/v1/completions", body.to_string())
        .await
        .unwrap();
    let (full, _) = text_of(&serde_json::from_slice(&reply.body).unwrap());
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 6, "need some text to cut: {full:?}");
    let stop: String = chars[3..5].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let mut body = body.clone();
        body["stop"] = json!(["\u{1}never", stop]);
        body["stream"] = json!(stream);
        let (text, finish) = if stream {
            let reply = client::stream(server.addr, "/v1/completions", &body)
                .await
                .unwrap();
            let mut text = String::new();
            let mut finish = Value::Null;
            for e in reply.events.iter().filter(|e| e.data != "[DONE]") {
                let c: Value = serde_json::from_str(&e.data).unwrap();
                text.push_str(c["choices"][0]["text"].as_str().unwrap());
                if !c["choices"][0]["finish_reason"].is_null() {
                    finish = c["choices"][0]["finish_reason"].clone();
                }
            }
            (text, finish)
        } else {
            let reply = client::post(server.addr, "/v1/completions", body.to_string())
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            (text_of(&v).0, v["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(text, cut, "stream={stream}");
        assert_eq!(finish, "stop", "stream={stream}");
    }
    server.shutdown().await;
}

/// Reads `/metrics` and returns the value of a gauge.
async fn gauge(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text =
        String::from_utf8(client::get(addr, "/metrics").await.unwrap().body.to_vec()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap();
    line[name.len() + 1..].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_sequence() {
    let server = start(limits(), 1 << 20).await;
    let addr = server.addr;
    let max_tokens = 300;
    let seed = seed_that_runs_to_length(addr, "a long story", max_tokens).await;
    wait_until_idle(addr).await;
    let generated_before = gauge(addr, "mxserve_generated_tokens_total").await;
    let body = json!({"model": MODEL, "prompt": "a long story", "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": true}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut seen = String::new();
    while !seen.contains("data: ") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed the stream early");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(!seen.starts_with("HTTP/1.1 4"), "request refused: {seen}");
    }
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gauge(addr, "mxserve_running_sequences").await == 0.0
            && gauge(addr, "mxserve_kv_cache_used_tokens").await == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sequence was not freed after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let generated = gauge(addr, "mxserve_generated_tokens_total").await - generated_before;
    assert!(
        generated < f64::from(max_tokens),
        "the sequence ran to its end ({generated} tokens) instead of being cancelled"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_stream_finish() {
    let server = start(limits(), 1 << 20).await;
    let addr = server.addr;
    let body = json!({"model": MODEL, "prompt": "finish me", "max_tokens": 200, "temperature": 0, "stream": true});
    let stream = tokio::spawn(async move {
        client::stream(addr, "/v1/completions", &body)
            .await
            .unwrap()
    });
    // Wait until the sequence is running, then shut down under it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(addr, "mxserve_running_sequences").await == 0.0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let state = server.state.clone();
    server.shutdown().await;
    let reply = stream.await.unwrap();
    assert_eq!(reply.events.last().unwrap().data, "[DONE]");
    let finish: Vec<Value> = reply.events[..reply.events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["choices"][0]["finish_reason"].clone()
        })
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish.len(), 1, "one finish_reason: {finish:?}");
    // After shutdown new work is refused.
    assert_eq!(
        state.engine.submit(Vec::new()),
        Err(SubmitError::ShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_deadline_a_stream_is_cancelled_with_an_error() {
    let server = start_with_deadline(limits(), 1 << 20, Duration::from_millis(20)).await;
    let addr = server.addr;
    // A sampled completion that cannot stop by itself before the deadline: its seed runs to
    // max_tokens, which takes ten times longer than the 20 ms deadline.
    let max_tokens = 300;
    let seed = seed_that_runs_to_length(addr, "a long story", max_tokens).await;
    wait_until_idle(addr).await;
    let body = json!({"model": MODEL, "prompt": "a long story", "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": true});
    let stream = tokio::spawn(async move {
        client::stream(addr, "/v1/completions", &body)
            .await
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(addr, "mxserve_running_sequences").await == 0.0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.shutdown().await;
    let reply = stream.await.unwrap();
    assert_eq!(reply.status, 200, "the stream was refused: {}", reply.stray);
    let data: Vec<&str> = reply.events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let error: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shut down"),
        "{error}"
    );
}

/// A seed whose sampled completion of `prompt` runs to `max_tokens` (finish_reason "length"), so
/// only cancellation or shutdown can end its stream early.
async fn seed_that_runs_to_length(
    addr: std::net::SocketAddr,
    prompt: &str,
    max_tokens: u32,
) -> u64 {
    for seed in 0..40 {
        let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed});
        let reply = client::post(addr, "/v1/completions", body.to_string())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        if v["choices"][0]["finish_reason"] == "length" {
            return seed;
        }
    }
    panic!("no seed in 0..40 completes {prompt:?} to {max_tokens} tokens");
}

/// Waits until no sequence runs. A reply can reach its client a moment before the engine
/// counts its sequence as finished, so a test that watches the running gauge for *its* request
/// must first see the gauge settle at zero.
async fn wait_until_idle(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(addr, "mxserve_running_sequences").await != 0.0 {
        assert!(Instant::now() < deadline, "the server never became idle");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
