//! Tiny synthetic checkpoints: real expert counts, tiny dimensions, random weights from a seed,
//! written in the published DeepSeek-V3 and Kimi-K2.5 layouts with a byte-level tokenizer.

pub mod tokenizer;
