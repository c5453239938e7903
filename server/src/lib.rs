//! The `mxserve` server: OpenAI-compatible HTTP API, tokenizer and chat template, scheduler
//! with continuous batching, metrics.
