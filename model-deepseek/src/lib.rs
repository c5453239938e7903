//! DeepSeek-V3-family models: configs, the shared-expert fusion policy, the strict safetensors
//! loader, the forward pass and the KV cache.
//!
//! The CPU forward pass ([`Model::forward`]) is built from `moe_kernels::reference` ops and is
//! the oracle for the GPU path.

mod attention;
pub mod config;
mod feed_forward;
pub mod fusion;
pub mod gpu;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod synthetic;
pub mod tiny;
pub mod weights;

pub use config::{CheckpointConfig, ConfigError, Layout, ModelConfig, parse_config};
pub use kv_cache::{KvCache, SeqId};
pub use model::{ForwardError, ForwardOptions, Model, ModelError, RoutingMargins, SequenceChunk};
pub use moe_kernels::reference::{ActivationMode, RoutingMargin};
pub use weights::ModelWeights;
