//! Turning request bodies into validated generation parameters; every rejection is a 400
//! (or 404 for an unknown model) naming the parameter at fault.

use serde::de::DeserializeOwned;

use crate::chat_template::TemplateMessage;
use crate::error::ApiError;
use crate::openai::{
    ChatCompletionRequest, CompletionRequest, MessageContent, Prompt, SamplingFields, Stop,
};

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP_STRINGS: usize = 4;
/// Most completions per prompt.
pub const MAX_N: u32 = 16;
/// `max_tokens` of `/v1/completions` when the request does not say (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// What a generation request asks for, once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    /// Tokens to generate at most; `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    /// 0 = greedy.
    pub temperature: f32,
    /// In (0, 1].
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    /// The seed of choice 0 (choice i uses seed + i); `None`: a random one.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Completions per prompt.
    pub n: usize,
    /// Server-sent events.
    pub stream: bool,
    /// A final usage chunk in the stream.
    pub include_usage: bool,
}

/// Parses a JSON body into `T`; malformed JSON, wrong types and missing fields are 400s that
/// name the parameter.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent's path; its name is in the message.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let param = match (path.as_str(), missing) {
            (".", Some(field)) => Some(field.to_string()),
            (".", None) => None,
            (parent, Some(field)) => Some(format!("{parent}.{field}")),
            (parent, None) => Some(parent.to_string()),
        };
        ApiError::invalid(param.as_deref(), message)
    })
}

/// Validates a chat request against the served model id.
pub fn chat(
    request: ChatCompletionRequest,
    served_model: &str,
) -> Result<(Vec<TemplateMessage>, GenerationSpec), ApiError> {
    check_model(&request.model, served_model)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must hold at least one message",
        ));
    }
    let sampling = request.sampling();
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.into_iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}].role")),
                format!(
                    "unknown role `{}`; expected system, developer, user or assistant",
                    m.role
                ),
            ));
        }
        let content = match m.content {
            MessageContent::Text(text) => text,
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for (j, part) in parts.into_iter().enumerate() {
                    if part.kind != "text" {
                        return Err(ApiError::invalid(
                            Some(&format!("messages[{i}].content[{j}].type")),
                            format!(
                                "content parts of type `{}` are not supported; only `text`",
                                part.kind
                            ),
                        ));
                    }
                    text.push_str(&part.text);
                }
                text
            }
        };
        messages.push(TemplateMessage {
            role: m.role,
            content,
        });
    }
    let max_tokens = match (request.max_completion_tokens, request.max_tokens) {
        (Some(n), _) => Some(positive(n, "max_completion_tokens")?),
        (None, Some(n)) => Some(positive(n, "max_tokens")?),
        (None, None) => None,
    };
    let spec = spec(&sampling, max_tokens)?;
    Ok((messages, spec))
}

/// Validates a completion request against the served model id.
pub fn completion(
    request: CompletionRequest,
    served_model: &str,
) -> Result<(Vec<String>, GenerationSpec), ApiError> {
    check_model(&request.model, served_model)?;
    let sampling = request.sampling();
    let prompts = match request.prompt {
        Prompt::One(p) => vec![p],
        Prompt::Many(ps) => ps,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt"),
            "`prompt` must not be an empty list",
        ));
    }
    let max_tokens = request
        .max_tokens
        .map(|n| positive(n, "max_tokens"))
        .transpose()?;
    let spec = spec(&sampling, max_tokens)?;
    Ok((prompts, spec))
}

fn check_model(requested: &str, served: &str) -> Result<(), ApiError> {
    if requested == served {
        Ok(())
    } else {
        Err(ApiError::unknown_model(requested, served))
    }
}

fn positive(n: u32, param: &str) -> Result<usize, ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(
            Some(param),
            format!("`{param}` must be at least 1"),
        ));
    }
    Ok(n as usize)
}

fn spec(f: &SamplingFields, max_tokens: Option<usize>) -> Result<GenerationSpec, ApiError> {
    let temperature = f.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = f.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        k => {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("`top_k` must be positive, or 0 or -1 to turn it off; got {k}"),
            ));
        }
    };
    let n = f.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("`n` must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let stop = match &f.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            Some("stop"),
            "stop strings must not be empty",
        ));
    }
    match &f.logprobs {
        None | Some(serde_json::Value::Null | serde_json::Value::Bool(false)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                Some("logprobs"),
                "`logprobs` is not supported by this server yet",
            ));
        }
    }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            Some("stream_options"),
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    Ok(GenerationSpec {
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed: f.seed,
        stop,
        n: n as usize,
        stream,
        include_usage: f.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_error(body: &str) -> ApiError {
        let req: Result<ChatCompletionRequest, _> = parse_json(body.as_bytes());
        match req {
            Err(e) => e,
            Ok(r) => chat(r, "m").unwrap_err(),
        }
    }

    /// One table: body → (status, param) of the error.
    #[test]
    fn bad_chat_requests_name_the_parameter() {
        let cases: &[(&str, u16, Option<&str>)] = &[
            ("{", 400, None),
            ("[1]", 400, None),
            (r#"{"messages":[]}"#, 400, Some("model")),
            (r#"{"model":"m"}"#, 400, Some("messages")),
            (r#"{"model":"m","messages":[]}"#, 400, Some("messages")),
            (
                r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#,
                404,
                Some("model"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
                400,
                Some("temperature"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":-0.5}"#,
                400,
                Some("temperature"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":0}"#,
                400,
                Some("top_p"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":1.5}"#,
                400,
                Some("top_p"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
                400,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#,
                400,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":0}"#,
                400,
                Some("n"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"top_k":-2}"#,
                400,
                Some("top_k"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#,
                400,
                Some("stop"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"bogus":1}"#,
                400,
                Some("bogus"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#,
                400,
                Some("messages[0].role"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                400,
                Some("messages[0].content"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
                400,
                Some("stream_options"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#,
                400,
                Some("logprobs"),
            ),
        ];
        for &(body, status, param) in cases {
            let e = chat_error(body);
            assert_eq!(e.status.as_u16(), status, "{body}: {e:?}");
            assert_eq!(e.param.as_deref(), param, "{body}: {e:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_400() {
        let e = parse_json::<ChatCompletionRequest>(b"{\"model\":\"\xff\"}").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.message.contains("UTF-8"), "{}", e.message);
    }

    #[test]
    fn a_good_request_keeps_its_values() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                      "max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":4,"seed":3,"stop":"x","n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
        let (messages, spec) = chat(parse_json(body.as_bytes()).unwrap(), "m").unwrap();
        assert_eq!(messages[1].content, "ab");
        assert_eq!(
            spec,
            GenerationSpec {
                max_tokens: Some(7),
                temperature: 0.5,
                top_p: 0.9,
                top_k: 4,
                seed: Some(3),
                stop: vec!["x".into()],
                n: 2,
                stream: true,
                include_usage: true,
            }
        );
    }
}
