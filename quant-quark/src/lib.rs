//! AMD Quark `quantization_config`: per-layer scheme resolution, exclude matching, weight-name
//! mapping, fused-module tables and the MXFP4 / E8M0 codec. Knows nothing of devices or models.

pub mod mxfp4;

pub use mxfp4::{CodecError, ScaleRule};
