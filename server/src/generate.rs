//! `/v1/chat/completions` and `/v1/completions`: validate, tokenize off the reactor, submit
//! the choices to the engine, and answer with one JSON body or a stream of server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::SubmitError;
use crate::error::ApiError;
use crate::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta,
    Completion, CompletionChoice, Usage,
};
use crate::routes::{AppState, ResponseBody, json_response};
use crate::sampling::SamplingParams;
use crate::sequence::{FinishReason, SequenceEvent, SequenceRequest};
use crate::tokenizer::EncodeError;
use crate::validate::{self, DEFAULT_COMPLETION_MAX_TOKENS, GenerationSpec};

/// The content type of streamed responses.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Frames buffered between a stream's task and the connection.
const STREAM_BUFFER: usize = 64;

/// Which endpoint a generation came through; it decides the wire shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn endpoint(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    /// The parameter that holds the prompt, for errors about its length.
    fn prompt_param(self) -> &'static str {
        match self {
            Api::Chat => "messages",
            Api::Completions => "prompt",
        }
    }
}

/// Handles `POST /v1/chat/completions`.
pub async fn chat(
    state: &Arc<AppState>,
    body: &[u8],
    started: Instant,
) -> Result<Response<ResponseBody>, ApiError> {
    let (messages, spec) = validate::chat(validate::parse_json(body)?, &state.model.id)?;
    let codec = state.codec.clone();
    let prompt = tokio::task::spawn_blocking(move || codec.encode_chat(&messages))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| encode_error(e, Api::Chat))?;
    generate(state, Api::Chat, vec![prompt], spec, started).await
}

/// Handles `POST /v1/completions`.
pub async fn completions(
    state: &Arc<AppState>,
    body: &[u8],
    started: Instant,
) -> Result<Response<ResponseBody>, ApiError> {
    let (prompts, spec) = validate::completion(validate::parse_json(body)?, &state.model.id)?;
    let codec = state.codec.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        prompts
            .iter()
            .map(|p| codec.encode_prompt(p))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
    .map_err(|e| encode_error(e, Api::Completions))?;
    generate(state, Api::Completions, encoded, spec, started).await
}

fn encode_error(e: EncodeError, api: Api) -> ApiError {
    ApiError::invalid(Some(api.prompt_param()), e.to_string())
}

/// Checks lengths, submits every choice, and answers.
async fn generate(
    state: &Arc<AppState>,
    api: Api,
    prompts: Vec<Vec<u32>>,
    spec: GenerationSpec,
    started: Instant,
) -> Result<Response<ResponseBody>, ApiError> {
    let context = state.engine.context_length();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let base_seed = spec.seed.unwrap_or_else(|| rand::rng().random());
    let mut requests = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let param = api.prompt_param();
        if prompt.is_empty() {
            return Err(ApiError::invalid(
                Some(param),
                format!("`{param}` encodes to no tokens"),
            ));
        }
        if prompt.len() >= context {
            return Err(ApiError::invalid(
                Some(param),
                format!(
                    "`{param}` is {} tokens; the model's context is {context} tokens",
                    prompt.len()
                ),
            ));
        }
        let room = context - prompt.len();
        let max_tokens = match (spec.max_tokens, api) {
            (Some(n), _) if n > room => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!(
                        "`max_tokens` is {n} but the prompt is {} tokens and the context is {context}: at most {room} can be generated",
                        prompt.len()
                    ),
                ));
            }
            (Some(n), _) => n,
            (None, Api::Chat) => room,
            (None, Api::Completions) => DEFAULT_COMPLETION_MAX_TOKENS.min(room),
        };
        for c in 0..spec.n {
            let choice = p * spec.n + c;
            requests.push(SequenceRequest {
                prompt: prompt.clone(),
                max_tokens,
                sampling: SamplingParams {
                    temperature: spec.temperature,
                    top_k: spec.top_k,
                    top_p: spec.top_p,
                    seed: base_seed.wrapping_add(choice as u64),
                },
                stop: spec.stop.clone(),
                choice,
                events: events_tx.clone(),
                arrived: started,
            });
        }
    }
    drop(events_tx);
    let choices = requests.len();
    state.engine.submit(requests).map_err(|e| match e {
        SubmitError::QueueFull { .. } => ApiError::busy(e.to_string()),
        SubmitError::TooLarge { .. } => ApiError::invalid(Some("max_tokens"), e.to_string()),
        SubmitError::TokenOutOfVocab { .. } => {
            ApiError::invalid(Some(api.prompt_param()), e.to_string())
        }
        SubmitError::ShuttingDown => ApiError::unavailable(e.to_string()),
    })?;
    let reply = Reply {
        api,
        id: response_id(api),
        created: unix_now(),
        model: state.model.id.clone(),
        prompt_tokens: prompts.iter().map(Vec::len).sum::<usize>(),
        choices,
    };
    if spec.stream {
        Ok(reply.stream(state.clone(), events_rx, spec.include_usage, started))
    } else {
        let response = reply.collect(events_rx).await;
        state.metrics.request_duration.observe(started.elapsed());
        response
    }
}

/// What every chunk or body of one response shares.
struct Reply {
    api: Api,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    choices: usize,
}

impl Reply {
    /// Waits for every choice and builds one JSON body.
    async fn collect(
        self,
        mut events: mpsc::UnboundedReceiver<(usize, SequenceEvent)>,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let mut texts = vec![String::new(); self.choices];
        let mut finish: Vec<Option<FinishReason>> = vec![None; self.choices];
        let mut completion_tokens = 0;
        while finish.iter().any(Option::is_none) {
            match events.recv().await {
                Some((i, SequenceEvent::Text(t))) => texts[i].push_str(&t),
                Some((
                    i,
                    SequenceEvent::Finished {
                        reason,
                        completion_tokens: n,
                        ..
                    },
                )) => {
                    finish[i] = Some(reason);
                    completion_tokens += n;
                }
                Some((_, SequenceEvent::Failed(message))) => {
                    return Err(ApiError::internal(message));
                }
                None => {
                    return Err(ApiError::internal(
                        "the engine stopped before the completion finished",
                    ));
                }
            }
        }
        let usage = self.usage(completion_tokens);
        let finish = finish.into_iter().flatten();
        Ok(match self.api {
            Api::Chat => json_response(
                StatusCode::OK,
                &ChatCompletion {
                    id: self.id,
                    object: "chat.completion",
                    created: self.created,
                    model: self.model,
                    choices: texts
                        .into_iter()
                        .zip(finish)
                        .enumerate()
                        .map(|(index, (content, finish_reason))| ChatChoice {
                            index,
                            message: AssistantMessage {
                                role: "assistant",
                                content,
                            },
                            logprobs: None,
                            finish_reason,
                        })
                        .collect(),
                    usage,
                },
            ),
            Api::Completions => json_response(
                StatusCode::OK,
                &Completion {
                    id: self.id,
                    object: "text_completion",
                    created: self.created,
                    model: self.model,
                    choices: texts
                        .into_iter()
                        .zip(finish)
                        .enumerate()
                        .map(|(index, (text, finish_reason))| CompletionChoice {
                            text,
                            index,
                            logprobs: None,
                            finish_reason: Some(finish_reason),
                        })
                        .collect(),
                    usage: Some(Some(usage)),
                },
            ),
        })
    }

    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }

    /// Answers with server-sent events fed by a task; when the client goes away the task
    /// ends and drops the event receiver, which cancels the sequences at the next step.
    fn stream(
        self,
        state: Arc<AppState>,
        mut events: mpsc::UnboundedReceiver<(usize, SequenceEvent)>,
        include_usage: bool,
        started: Instant,
    ) -> Response<ResponseBody> {
        let (frames, frames_rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        let endpoint = self.api.endpoint();
        tokio::spawn(async move {
            let mut finished = vec![false; self.choices];
            let mut completion_tokens = 0;
            if self.api == Api::Chat {
                for index in 0..self.choices {
                    let delta = ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    };
                    if frames
                        .send(self.chat_chunk(index, delta, None, include_usage))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            while finished.iter().any(|f| !f) {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = frames.closed() => {
                        tracing::debug!(id = %self.id, "client went away mid-stream");
                        state.metrics.count_request(endpoint, 499);
                        return;
                    }
                };
                let frame = match event {
                    Some((i, SequenceEvent::Text(text))) => {
                        self.text_chunk(i, text, None, include_usage)
                    }
                    Some((
                        i,
                        SequenceEvent::Finished {
                            reason,
                            completion_tokens: n,
                            ..
                        },
                    )) => {
                        finished[i] = true;
                        completion_tokens += n;
                        self.text_chunk(i, String::new(), Some(reason), include_usage)
                    }
                    Some((_, SequenceEvent::Failed(message))) => {
                        let _ = frames
                            .send(event_frame(&ApiError::internal(message).body()))
                            .await;
                        break;
                    }
                    None => {
                        let error =
                            ApiError::internal("the engine stopped before the completion finished");
                        let _ = frames.send(event_frame(&error.body())).await;
                        break;
                    }
                };
                if frames.send(frame).await.is_err() {
                    state.metrics.count_request(endpoint, 499);
                    return;
                }
            }
            if include_usage && finished.iter().all(|f| *f) {
                let usage = Some(Some(self.usage(completion_tokens)));
                let frame = match self.api {
                    Api::Chat => event_frame(&ChatCompletionChunk {
                        id: self.id.clone(),
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage,
                    }),
                    Api::Completions => event_frame(&Completion {
                        id: self.id.clone(),
                        object: "text_completion",
                        created: self.created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage,
                    }),
                };
                let _ = frames.send(frame).await;
            }
            let _ = frames.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            state.metrics.count_request(endpoint, 200);
            state.metrics.request_duration.observe(started.elapsed());
        });
        let stream = futures_util::stream::unfold(frames_rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    /// A chunk with new text (or, with `finish`, a choice's last chunk).
    fn text_chunk(
        &self,
        index: usize,
        text: String,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> Bytes {
        match self.api {
            Api::Chat => {
                let delta = ChatDelta {
                    role: None,
                    content: (!text.is_empty() || finish.is_none()).then_some(text),
                };
                self.chat_chunk(index, delta, finish, include_usage)
            }
            Api::Completions => event_frame(&Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    text,
                    index,
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: include_usage.then_some(None),
            }),
        }
    }

    fn chat_chunk(
        &self,
        index: usize,
        delta: ChatDelta,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> Bytes {
        event_frame(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: include_usage.then_some(None),
        })
    }
}

/// One server-sent event carrying `value` as JSON.
fn event_frame<T: Serialize>(value: &T) -> Bytes {
    let json = serde_json::to_string(value).expect("wire types always serialize");
    Bytes::from(format!("data: {json}\n\n"))
}

fn response_id(api: Api) -> String {
    let prefix = match api {
        Api::Chat => "chatcmpl",
        Api::Completions => "cmpl",
    };
    format!("{prefix}-{:032x}", rand::rng().random::<u128>())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
