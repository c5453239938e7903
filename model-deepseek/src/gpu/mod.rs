//! The model on a GPU from `runtime-rocm`: memory planning, device weights, the latent KV
//! cache on the device, and the forward pass built from `moe_kernels::gpu` launchers. The CPU
//! [`crate::Model`] is the oracle it is tested against.

pub mod plan;

pub use plan::{KvBudget, MemoryPlan, PlanError};
