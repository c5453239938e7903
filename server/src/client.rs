//! A minimal HTTP/1.1 client for this server's endpoints, used by the load benchmark and
//! the end-to-end tests: one connection per request, JSON bodies, server-sent events read
//! as they arrive (with their arrival times, for TTFT and inter-token latency).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a client request failed (transport or protocol, not an HTTP error status).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

fn err(context: &str) -> impl FnOnce(hyper::Error) -> ClientError + '_ {
    move |e| ClientError(format!("{context}: {e}"))
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// One server-sent event's data and when it arrived.
#[derive(Debug, Clone)]
pub struct Event {
    /// The text after `data: `.
    pub data: String,
    /// When its last byte arrived.
    pub at: Instant,
}

/// A streamed response.
#[derive(Debug)]
pub struct StreamReply {
    /// The HTTP status.
    pub status: StatusCode,
    /// When the request was sent.
    pub sent: Instant,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Bytes that were not part of a well-formed `data:` event (should be empty).
    pub stray: String,
}

/// GETs `path` and reads the whole response.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
    whole(send(addr, Method::GET, path, None).await?).await
}

/// POSTs `body` (JSON, or deliberately not) to `path` and reads the whole response.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<Reply, ClientError> {
    whole(send(addr, Method::POST, path, Some(body.into())).await?).await
}

async fn whole(response: hyper::Response<hyper::body::Incoming>) -> Result<Reply, ClientError> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(err("reading the body"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// POSTs a JSON body and reads the server-sent events of the answer as they arrive.
pub async fn stream(
    addr: SocketAddr,
    path: &str,
    json: &serde_json::Value,
) -> Result<StreamReply, ClientError> {
    let sent = Instant::now();
    let response = send(
        addr,
        Method::POST,
        path,
        Some(Bytes::from(json.to_string())),
    )
    .await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let mut raw = Vec::new();
    let mut stray = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(err("reading the stream"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        raw.extend_from_slice(&data);
        // Only whole UTF-8 is appended; a character split across frames waits.
        let valid = match std::str::from_utf8(&raw) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        buffer.push_str(std::str::from_utf8(&raw[..valid]).expect("checked"));
        raw.drain(..valid);
        let at = Instant::now();
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.strip_prefix("data: ") {
                events.push(Event {
                    data: data.trim_end_matches('\n').to_string(),
                    at,
                });
            } else {
                stray.push_str(&event);
            }
        }
    }
    Ok(StreamReply {
        status,
        sent,
        events,
        stray: stray + &buffer,
    })
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError(format!("connecting to {addr}: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(err("handshake"))?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| ClientError(format!("building the request: {e}")))?;
    sender
        .send_request(request)
        .await
        .map_err(err("sending the request"))
}
