//! Bad-input catalogue, HTTP layer: a real server on the built-in tiny model, fed bad requests
//! over raw TCP (so nothing in a client library can tidy them up). Each must get its documented
//! status and an error body naming the problem, and the server must answer the next good
//! request. Then the attacks that are not a single bad body: slow (slowloris) headers and
//! bodies, a client that disconnects mid-stream, a flood past the queue limit, and a tokenizer
//! file that does not parse.

mod server_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::engine::EngineLimits;
use server::launch::{LaunchError, LaunchOptions, launch};
use server::routes::BODY_READ_TIMEOUT;
use server::server::HEADER_READ_TIMEOUT;
use server::tokenizer::TokenizerLoadError;
use server_support::{MODEL, limits, model_dir, start};
use tests::assert_no_failures;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test server's body limit.
const MAX_BODY: usize = 64 * 1024;

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` as is and reads until the server closes the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers within a minute")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn chat(extra: Value) -> Vec<u8> {
    let mut body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post("/v1/chat/completions", body.to_string().as_bytes())
}

fn completion(extra: Value) -> Vec<u8> {
    let mut body = json!({"model": MODEL, "prompt": "Once", "max_tokens": 4});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post("/v1/completions", body.to_string().as_bytes())
}

/// The good request every bad one is followed by.
async fn assert_still_serving(addr: SocketAddr, after: &str) {
    let reply = raw(addr, &completion(json!({"temperature": 0}))).await;
    assert_eq!(reply.status, 200, "after {after}: {reply:?}");
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body["choices"][0]["finish_reason"], "length",
        "after {after}"
    );
}

/// One catalogue entry: the request, the status it must get, and a fragment of the error body
/// (the parameter, code or reason) it must contain.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    names: &'static str,
}

fn catalogue() -> Vec<Case> {
    let chunked_huge = {
        let mut out =
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\
                        Connection: close\r\n\r\n"
                .to_vec();
        for _ in 0..(MAX_BODY / 4096 + 2) {
            out.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
            out.extend(std::iter::repeat_n(b' ', 4096));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let mut bad_utf8 = br#"{"model": "tiny", "prompt": "caf"#.to_vec();
    bad_utf8.extend_from_slice(&[0xc3, 0x28, 0xff]);
    bad_utf8.extend_from_slice(br#"", "max_tokens": 4}"#);
    vec![
        Case {
            name: "body over the limit (Content-Length)",
            request: post("/v1/completions", &vec![b' '; MAX_BODY + 1]),
            status: 413,
            names: "request_too_large",
        },
        Case {
            name: "body over the limit (chunked, no length)",
            request: chunked_huge,
            status: 413,
            names: "request_too_large",
        },
        Case {
            name: "invalid UTF-8",
            request: post("/v1/completions", &bad_utf8),
            status: 400,
            names: "UTF-8",
        },
        Case {
            name: "malformed JSON",
            request: post(
                "/v1/chat/completions",
                b"{\"model\": \"tiny\", \"messages\": [",
            ),
            status: 400,
            names: "not valid JSON",
        },
        Case {
            name: "JSON that is not an object",
            request: post("/v1/completions", b"[\"tiny\", \"Once\"]"),
            status: 400,
            names: "JSON object",
        },
        Case {
            name: "max_tokens of u32::MAX",
            request: completion(json!({"max_tokens": 4_294_967_295u64})),
            status: 400,
            names: "max_tokens",
        },
        Case {
            name: "max_tokens past u32",
            request: chat(json!({"max_tokens": 1e20})),
            status: 400,
            names: "max_tokens",
        },
        Case {
            name: "max_tokens negative",
            request: chat(json!({"max_tokens": -1})),
            status: 400,
            names: "max_tokens",
        },
        Case {
            name: "n too large",
            request: chat(json!({"n": 17})),
            status: 400,
            names: "\"param\":\"n\"",
        },
        Case {
            name: "n absurdly large",
            request: completion(json!({"n": 4_000_000_000u64})),
            status: 400,
            names: "\"param\":\"n\"",
        },
        Case {
            name: "n zero",
            request: completion(json!({"n": 0})),
            status: 400,
            names: "\"param\":\"n\"",
        },
        Case {
            name: "too many stop strings",
            request: chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            status: 400,
            names: "stop",
        },
        Case {
            name: "temperature NaN-like string",
            request: chat(json!({"temperature": "NaN"})),
            status: 400,
            names: "temperature",
        },
        Case {
            name: "unknown role",
            request: chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            status: 400,
            names: "messages[0].role",
        },
        Case {
            name: "prompt longer than the context",
            request: completion(json!({"prompt": "ab ".repeat(20_000)})),
            status: 400,
            names: "context",
        },
        Case {
            name: "unknown model",
            request: completion(json!({"model": "gpt-4"})),
            status: 404,
            names: "gpt-4",
        },
        Case {
            name: "wrong method",
            request: b"GET /v1/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                .to_vec(),
            status: 405,
            names: "POST",
        },
        Case {
            name: "garbage request line",
            request: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n".to_vec(),
            status: 400,
            names: "",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_the_next_good_one_is_served() {
    let server = start(limits(), MAX_BODY).await;
    let mut failures = Vec::new();
    for case in catalogue() {
        let reply = raw(server.addr, &case.request).await;
        if reply.status != case.status || !reply.body.contains(case.names) {
            failures.push(format!(
                "{}: wanted {} naming {:?}, got {} {}",
                case.name, case.status, case.names, reply.status, reply.body
            ));
        }
        assert_still_serving(server.addr, case.name).await;
    }
    assert_no_failures(&failures);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_the_read_timeouts() {
    let server = start(limits(), MAX_BODY).await;
    let addr = server.addr;
    // Headers trickled and then stalled: the connection is closed.
    let slow_headers = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(10),
            stream.read_to_end(&mut bytes),
        )
        .await;
        assert!(read.is_ok(), "a stalled header held its connection");
        started.elapsed()
    };
    // Headers complete, body stalled after 10 of 100 bytes: 408.
    let slow_body = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"model\":",
            )
            .await
            .unwrap();
        let reply = read_response(&mut stream).await;
        assert_eq!(reply.status, 408, "{reply:?}");
        assert!(reply.body.contains("request_timeout"), "{reply:?}");
        started.elapsed()
    };
    let (headers_after, body_after) = tokio::join!(slow_headers, slow_body);
    assert!(headers_after >= HEADER_READ_TIMEOUT - Duration::from_secs(1));
    assert!(body_after >= BODY_READ_TIMEOUT - Duration::from_secs(1));
    assert_still_serving(addr, "slow clients").await;
    server.shutdown().await;
}

/// `mxserve_running_sequences` from `/metrics`.
async fn running_sequences(addr: SocketAddr) -> u64 {
    let reply = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix("mxserve_running_sequences "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no running gauge in {}", reply.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let server = start(limits(), MAX_BODY).await;
    let addr = server.addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&completion(
            json!({"max_tokens": 200, "stream": true, "temperature": 0}),
        ))
        .await
        .unwrap_or_else(|_| panic!("sending"));
    // Wait for the first event, then hang up.
    let mut buffer = vec![0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("data: ") {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before the first event: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(
        running_sequences(addr).await,
        1,
        "the stream is not running"
    );
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_sequences(addr).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the disconnected stream's sequence still runs after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_still_serving(addr, "a mid-stream disconnect").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_queue_limit_gets_429_and_the_rest_are_served() {
    let tight = EngineLimits {
        max_batch_tokens: 64,
        max_running: 1,
        max_waiting: 2,
    };
    let server = start(tight, MAX_BODY).await;
    let addr = server.addr;
    let replies = futures_join_all(
        (0..16)
            .map(|_| async move { raw(addr, &completion(json!({"max_tokens": 24}))).await })
            .collect(),
    )
    .await;
    let busy: Vec<&Raw> = replies.iter().filter(|r| r.status == 429).collect();
    let served = replies.iter().filter(|r| r.status == 200).count();
    assert!(
        !busy.is_empty(),
        "16 requests against a queue of 2 and none was refused"
    );
    assert!(served >= 1, "nothing was served");
    assert_eq!(busy.len() + served, 16, "other statuses: {replies:?}");
    for r in busy {
        assert!(
            r.head.to_ascii_lowercase().contains("retry-after: 1"),
            "{r:?}"
        );
        assert!(r.body.contains("rate_limit_exceeded"), "{r:?}");
    }
    assert_still_serving(addr, "a flood").await;
    server.shutdown().await;
}

/// Awaits every future, concurrently (spawned, so they really overlap).
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn launch_options(dir: &std::path::Path) -> LaunchOptions {
    LaunchOptions {
        model_dir: dir.to_path_buf(),
        model_id: Some(MODEL.into()),
        fusion: Default::default(),
        limits: limits(),
        kv_capacity_tokens: Some(4096),
        max_body_bytes: MAX_BODY,
    }
}

/// Whether a launch error is the one a case wants.
type LaunchCheck = fn(&LaunchError) -> bool;

#[test]
fn a_tokenizer_file_that_does_not_parse_is_a_named_launch_error() {
    let source = model_dir();
    let cases: [(&str, &str, LaunchCheck); 3] = [
        (
            "tokenizer.json",
            "{\"model\": {\"type\": \"BPE\", \"vocab\": [",
            |e| {
                matches!(e, LaunchError::Tokenizer(TokenizerLoadError::Tokenizer { path, .. })
                if path.ends_with("tokenizer.json"))
            },
        ),
        (
            "tokenizer.json",
            "{\"version\": \"1.0\", \"model\": {\"type\": \"Unigram\"}}",
            |e| {
                matches!(
                    e,
                    LaunchError::Tokenizer(TokenizerLoadError::Tokenizer { .. })
                )
            },
        ),
        ("tokenizer_config.json", "{\"chat_template\": ", |e| {
            matches!(e, LaunchError::Tokenizer(TokenizerLoadError::Config { path, .. })
                if path.ends_with("tokenizer_config.json"))
        }),
    ];
    for (file, text, variant) in cases {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::write(dir.path().join(file), text).unwrap();
        match launch(&launch_options(dir.path()), &mut |_| {}) {
            Ok(_) => panic!("{file} = {text:?} launched"),
            Err(e) => {
                assert!(variant(&e), "{file} = {text:?}: wrong error {e:?}");
                assert!(e.to_string().contains(file), "{e} does not name {file}");
            }
        }
    }
}
