//! DeepSeek-V3-family models: configs, the shared-expert fusion policy, the strict safetensors
//! loader, the forward pass and the KV cache.

pub mod fusion;
pub mod loader;
pub mod tiny;
