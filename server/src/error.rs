//! Errors the API returns to clients, as OpenAI-style JSON bodies with the right status.

use hyper::StatusCode;

use crate::openai::{ErrorBody, ErrorDetail};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
    /// What went wrong.
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400 about parameter `param` (if any).
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404: the named model is not served here.
    pub fn unknown_model(requested: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            message: format!(
                "the model `{requested}` does not exist; this server serves `{served}`"
            ),
            retry_after: None,
        }
    }

    /// 404: no such route.
    pub fn not_found(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            message: format!("no route for {method} {path}"),
            retry_after: None,
        }
    }

    /// 405: the route exists with another method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
            message: format!("{path} does not accept {method}; use {allowed}"),
            retry_after: None,
        }
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            message: format!("the request body is larger than the limit of {limit} bytes"),
            retry_after: None,
        }
    }

    /// 408: the client did not send its whole body in time (a slow or stalled client).
    pub fn timeout(limit: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
            message: format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            ),
            retry_after: None,
        }
    }

    /// 429: too many waiting requests.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            message: message.into(),
            retry_after: Some(1),
        }
    }

    /// 503: shutting down or the engine is not working.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
            message: message.into(),
            retry_after: Some(5),
        }
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}
