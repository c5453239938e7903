//! The `mxserve` server: OpenAI-compatible HTTP API, tokenizer and chat template, scheduler
//! with continuous batching, metrics.

pub mod backend;
pub mod chat_template;
pub mod client;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod generate;
pub mod launch;
pub mod metrics;
pub mod model_backend;
pub mod openai;
pub mod routes;
pub mod sampling;
pub mod sequence;
pub mod server;
pub mod stop;
pub mod tokenizer;
pub mod validate;
