//! AMD Quark `quantization_config`: per-layer scheme resolution, exclude matching, weight-name
//! mapping, fused-module tables and the MXFP4 / E8M0 codec. Knows nothing of devices, tensors
//! or models: layer names in, schemes out; bytes in, numbers out.
//!
//! The loader's call sequence:
//!
//! ```
//! use quant_quark::{
//!     FusedModules, LayerScheme, NameMapper, NameRule, QuarkConfig, ScaleRule, SchemeResolver,
//!     SharedExperts,
//! };
//!
//! let config = QuarkConfig::from_json_str(r#"{
//!     "quant_method": "quark",
//!     "export": {"kv_cache_group": [], "pack_method": "reorder"},
//!     "global_quant_config": {
//!         "weight": {"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "ch_axis": -1,
//!                    "scale_format": "e8m0", "scale_calculation_mode": "even",
//!                    "round_method": "half_even", "is_dynamic": false},
//!         "input_tensors": {"dtype": "fp4", "qscheme": "per_group", "group_size": 32,
//!                           "ch_axis": -1, "scale_format": "e8m0",
//!                           "scale_calculation_mode": "even", "round_method": "half_even",
//!                           "is_dynamic": true}
//!     },
//!     "exclude": ["lm_head", "re:.*self_attn.*"]
//! }"#)?;
//! // The model owns its fused-module table and its checkpoint → model name rules.
//! let fused = FusedModules::new(&[
//!     ("fused_qkv_a_proj_with_mqa", &["q_a_proj", "kv_a_proj_with_mqa"]),
//!     ("gate_up_proj", &["gate_proj", "up_proj"]),
//! ]);
//! let mapper = NameMapper::new(vec![NameRule::prefix("language_model.model.", "model.")])?;
//! let resolver = SchemeResolver::new(config, fused, &mapper)?;
//!
//! let expert = resolver.scheme_for(&mapper.map("language_model.model.layers.3.mlp.experts.0.up_proj"))?;
//! assert_eq!(expert, LayerScheme::Mxfp4 { activations: Some(ScaleRule::Even) });
//! assert_eq!(resolver.scheme_for("model.layers.3.self_attn.fused_qkv_a_proj_with_mqa")?, LayerScheme::Unquantized);
//! // One format for all routed experts of a MoE layer (an error if they differ) …
//! assert_eq!(resolver.routed_experts_scheme("model.layers.3", 256)?, expert);
//! // … and whether the shared expert may join them as one more slot.
//! match resolver.shared_experts_compatible("model.layers.3")? {
//!     SharedExperts::Compatible => {}
//!     SharedExperts::Incompatible(reason) => panic!("not fusable: {reason}"),
//! }
//! # Ok::<(), quant_quark::QuarkError>(())
//! ```
//!
//! Weights of an [`LayerScheme::Mxfp4`] layer decode with [`mxfp4::dequantize_f32`] /
//! [`mxfp4::dequantize_bf16`]; W4A4 activations go through [`mxfp4::fake_quantize`] with the
//! layer's [`ScaleRule`].

mod config;
mod error;
mod exclude;
mod fnmatch;
mod fused;
pub mod mxfp4;
mod names;
mod resolver;
mod scheme;

pub use config::{ExportConfig, LayerSpec, QuantizerSpec, QuarkConfig};
pub use error::QuarkError;
pub use exclude::ExcludeList;
pub use fused::FusedModules;
pub use mxfp4::{CodecError, ScaleRule};
pub use names::{NameMapper, NameRule};
pub use resolver::{
    LINEAR, Resolution, SchemeResolver, SharedExperts, SharedExpertsMismatch, SpecSource,
};
pub use scheme::{Fp8Activations, Fp8Weight, LayerScheme};
