//! The `mxserve` server: OpenAI-compatible HTTP API, tokenizer and chat template, scheduler
//! with continuous batching, metrics.

pub mod backend;
pub mod chat_template;
pub mod detokenizer;
pub mod engine;
pub mod metrics;
pub mod openai;
pub mod sampling;
pub mod sequence;
pub mod stop;
pub mod tokenizer;
pub mod error;
pub mod validate;
pub mod generate;
pub mod routes;
pub mod model_backend;
pub mod server;
pub mod client;
pub mod launch;
