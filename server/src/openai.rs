//! OpenAI wire types: the JSON shapes of requests and responses, nothing else. Only the
//! server crate knows them.

use serde::{Deserialize, Serialize};

use crate::sequence::FinishReason;

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a final chunk with the usage of the whole request.
    #[serde(default)]
    pub include_usage: bool,
}

/// Declares a request body struct with its own fields plus the sampling and streaming fields
/// both generation endpoints share, and `sampling()` to take those out as [`SamplingFields`].
/// (A macro rather than `#[serde(flatten)]`: flatten loses the path of a bad field and does
/// not work with `deny_unknown_fields`.)
macro_rules! generation_request {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Softmax temperature, 0 to 2; 0 is greedy.
            pub temperature: Option<f32>,
            /// Nucleus sampling mass, in (0, 1].
            pub top_p: Option<f32>,
            /// Keep only the k most likely tokens; 0 or -1 turn it off (vLLM's extension).
            pub top_k: Option<i64>,
            /// Seed of the sampler; equal seeds give equal completions.
            pub seed: Option<u64>,
            /// Stop strings.
            pub stop: Option<Stop>,
            /// Completions per prompt.
            pub n: Option<u32>,
            /// Stream the answer as server-sent events.
            pub stream: Option<bool>,
            /// Streaming options.
            pub stream_options: Option<StreamOptions>,
            /// Log-probabilities of the chosen tokens (not supported yet: absent, null or false).
            pub logprobs: Option<serde_json::Value>,
            /// An end-user id; accepted and ignored.
            pub user: Option<String>,
        }

        impl $name {
            /// The shared sampling and streaming fields.
            pub fn sampling(&self) -> SamplingFields {
                SamplingFields {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    n: self.n,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    logprobs: self.logprobs.clone(),
                }
            }
        }
    };
}

/// The sampling and streaming fields both generation endpoints share (documented on the
/// request types).
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<serde_json::Value>,
}

generation_request! {
    /// The body of `POST /v1/chat/completions`.
    pub struct ChatCompletionRequest {
        /// The model id (see `/v1/models`).
        pub model: String,
        /// The conversation so far.
        pub messages: Vec<ChatMessage>,
        /// Most tokens to generate (legacy name).
        pub max_tokens: Option<u32>,
        /// Most tokens to generate.
        pub max_completion_tokens: Option<u32>,
    }
}

generation_request! {
    /// The body of `POST /v1/completions`.
    pub struct CompletionRequest {
        /// The model id.
        pub model: String,
        /// One prompt or several.
        pub prompt: Prompt,
        /// Most tokens to generate (default 16, as OpenAI's).
        pub max_tokens: Option<u32>,
    }
}

/// One message of a chat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text, as a string or a list of text parts.
    pub content: MessageContent,
    /// An optional participant name; accepted and ignored.
    pub name: Option<String>,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of text parts")]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

/// `prompt`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// Several prompts, each completed `n` times.
    Many(Vec<String>),
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated over all choices.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

/// A whole chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One choice of a chat completion.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    /// Its index.
    pub index: usize,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Always null (log-probabilities are not supported yet).
    pub logprobs: Option<()>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// The generated message.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk {
    /// Same for every chunk of a response.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// Deltas (empty in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Null except in the final usage chunk, present only with `include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// One choice's delta.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    /// The choice's index.
    pub index: usize,
    /// What is new.
    pub delta: ChatDelta,
    /// Always null.
    pub logprobs: Option<()>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// New content of a streamed message.
#[derive(Debug, Serialize, Default)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk of a choice only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A whole (legacy) text completion; also the shape of its streamed chunks.
#[derive(Debug, Serialize)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
    /// One per prompt and `n`.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (streamed chunks: only the final one, with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// One choice of a text completion.
#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    /// The text (streamed: what is new).
    pub text: String,
    /// Its index (`prompt index × n + choice`).
    pub index: usize,
    /// Always null.
    pub logprobs: Option<()>,
    /// Why it ended (streamed: only in the choice's last chunk).
    pub finish_reason: Option<FinishReason>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The one model served.
    pub data: Vec<ModelCard>,
}

/// The served model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The id requests must name.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds when the server started.
    pub created: u64,
    /// Always `mxserve`.
    pub owned_by: &'static str,
    /// Longest prompt + completion, in tokens.
    pub context_length: usize,
    /// The shared-expert fusion decision of each MoE layer.
    pub shared_expert_fusion: Vec<LayerFusion>,
}

/// The shared-expert fusion decision of one MoE layer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LayerFusion {
    /// The layer index.
    pub layer: usize,
    /// Whether the shared expert runs as one more expert slot of the fused MoE.
    pub fused: bool,
    /// Why (always given).
    pub reason: String,
}

/// An OpenAI-style error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields of an error.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code, when there is one.
    pub code: Option<&'static str>,
}
