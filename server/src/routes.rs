//! The HTTP front: the route table, request bodies under a size limit, and the small
//! endpoints (`/health`, `/metrics`, `/v1/models`). Generation lives in `generate`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Body;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::engine::EngineHandle;
use crate::error::ApiError;
use crate::generate;
use crate::metrics::Metrics;
use crate::openai::{ModelCard, ModelList};
use crate::tokenizer::TextCodec;

/// The body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    /// The engine thread.
    pub engine: EngineHandle,
    /// Tokenizer and chat template.
    pub codec: Arc<TextCodec>,
    /// Server metrics.
    pub metrics: Arc<Metrics>,
    /// The served model, as `/v1/models` shows it.
    pub model: ModelCard,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

/// The endpoints, for dispatch, 405 answers and the startup log.
pub const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/chat/completions"),
    (Method::POST, "/v1/completions"),
    (Method::GET, "/v1/models"),
    (Method::GET, "/health"),
    (Method::GET, "/metrics"),
];

/// Answers one HTTP request. Never fails: every error becomes an error response.
pub async fn handle<B>(
    state: Arc<AppState>,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Infallible>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let Some(&(_, endpoint)) = ROUTES.iter().find(|(m, p)| *m == method && *p == path) else {
        let allowed = ROUTES.iter().find(|(_, p)| *p == path).map(|(m, _)| m);
        let error = match allowed {
            Some(allowed) => ApiError::method_not_allowed(method.as_str(), &path, allowed.as_str()),
            None => ApiError::not_found(method.as_str(), &path),
        };
        state.metrics.count_request("other", error.status.as_u16());
        let mut response = error_response(&error);
        if let Some(allowed) = allowed {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed.as_str()));
        }
        return Ok(response);
    };
    let result = match endpoint {
        "/health" => health(&state).await,
        "/metrics" => Ok(text_response(state.metrics.render())),
        "/v1/models" => Ok(json_response(
            StatusCode::OK,
            &ModelList {
                object: "list",
                data: vec![state.model.clone()],
            },
        )),
        generation => match read_body(request.into_body(), state.max_body_bytes).await {
            Err(e) => Err(e),
            Ok(body) if generation == "/v1/chat/completions" => {
                generate::chat(&state, &body, started).await
            }
            Ok(body) => generate::completions(&state, &body, started).await,
        },
    };
    let response = result.unwrap_or_else(|e| error_response(&e));
    // Streams count themselves when they end; everything else is done here.
    if response.headers().get(CONTENT_TYPE)
        != Some(&HeaderValue::from_static(generate::EVENT_STREAM))
    {
        state
            .metrics
            .count_request(endpoint, response.status().as_u16());
    }
    Ok(response)
}

/// How long a client gets to send a whole request body once its headers are in; a slow or
/// stalled client (slowloris) must not hold a connection and a task forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a request body, refusing more than `limit` bytes (413) or one that does not arrive
/// within [`BODY_READ_TIMEOUT`] (408).
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::too_large(limit));
    }
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::timeout(BODY_READ_TIMEOUT))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(limit))
        }
        Err(e) => Err(ApiError::invalid(
            None,
            format!("reading the request body failed: {e}"),
        )),
    }
}

async fn health(state: &AppState) -> Result<Response<ResponseBody>, ApiError> {
    state.engine.health().await.map_err(ApiError::unavailable)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok"}),
    ))
}

/// A JSON response.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).expect("wire types always serialize");
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(text: String) -> Response<ResponseBody> {
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The response for an error, with `Retry-After` where it applies.
pub fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let mut response = json_response(error.status, &error.body());
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn full(data: impl Into<Bytes>) -> ResponseBody {
    Full::new(data.into()).boxed_unsync()
}
