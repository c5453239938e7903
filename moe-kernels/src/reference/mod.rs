//! The CPU reference of every op: f32 arithmetic, flat row-major slices, rayon over rows or
//! output columns. This is the oracle every GPU kernel is checked against, and the CPU
//! backend of the forward pass.
//!
//! Conventions shared by all ops:
//! - activations are row-major `[rows, features]` slices; `rows` is the number of tokens;
//! - a linear layer's weight is `[out, in]` and computes `y = x · Wᵀ` (no bias);
//! - every output element is computed by the same sequence of f32 operations whatever the
//!   number of rows or the thread count, so a token's result does not depend on which other
//!   tokens share its batch (the forward pass's batching tests rely on this);
//! - shapes are checked with `assert!`: these are internal entry points whose callers
//!   (the forward pass, kernel tests) have validated user input already.

mod attention;
mod linear;
mod mlp;
mod moe;
mod mxfp4;
mod norm;
mod rope;
mod routing;
mod sampling;

pub use attention::{MlaCache, MlaDims, mla_attention};
pub use linear::{ActivationMode, Linear, Matrix, linear, matmul};
pub use mlp::{MlpWeights, mlp, silu_mul};
pub use moe::moe_forward;
pub use mxfp4::{
    ActivationQuant, Mxfp4Error, Mxfp4Matrix, ScaleRule, fake_quantize_rows, mxfp4_linear,
};
pub use norm::rmsnorm;
pub use rope::{Rope, YarnParams};
pub use routing::{ExpertRoute, RoutingMargin, RoutingParams, route_noaux_tc, routing_margin};
pub use sampling::{SamplingRule, sample_token};
