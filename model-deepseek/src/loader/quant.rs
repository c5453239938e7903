//! The checkpoint's quantization config, resolved per module (through `quant-quark`) into the
//! storage formats the loader reads, and the expert formats the fusion policy compares.
//!
//! Modules are asked about by canonical name (`model.layers.N.…`, `lm_head`); the name mapper
//! built from the checkpoint's [`Prefix`] rewrites the config's literal names the same way, so
//! an exclude entry written `language_model.model.layers.0.self_attn.q_a_proj` or
//! `language_model.lm_head` covers the canonical module.

use quant_quark::{
    FusedModules, LayerScheme, NameMapper, NameRule, QuarkConfig, ScaleRule, SchemeResolver,
    SharedExperts,
};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::fusion::LayerFormats;

use super::error::LoadError;
use super::names::Prefix;

/// How one linear layer is stored and run: the subset of Quark schemes the model implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum LinearFormat {
    /// Unquantized (bf16, f16 or f32 in the checkpoint; f32 in memory).
    Bf16,
    /// Quark MXFP4 weight (`weight` U8 `[out, in/2]` + `weight_scale` U8 `[out, in/32]`).
    Mxfp4 {
        /// The input spec's scale rule when activations are quantized dynamically (W4A4);
        /// `None` for weight-only MXFP4.
        input: Option<ScaleRule>,
    },
}

impl LinearFormat {
    /// The format in words, for reports and fusion reasons.
    pub fn describe(self) -> String {
        match self {
            Self::Bf16 => "unquantized".to_owned(),
            Self::Mxfp4 { input: None } => "MXFP4 weight-only".to_owned(),
            Self::Mxfp4 { input: Some(rule) } => format!(
                "MXFP4 W4A4 ({} scale rule)",
                match rule {
                    ScaleRule::Even => "even",
                    ScaleRule::Ocp => "OCP floor",
                }
            ),
        }
    }

    fn from_scheme(module: &str, scheme: LayerScheme) -> Result<Self, LoadError> {
        match scheme {
            LayerScheme::Unquantized => Ok(Self::Bf16),
            LayerScheme::Mxfp4 { activations } => Ok(Self::Mxfp4 { input: activations }),
            LayerScheme::Fp8 { .. } => Err(LoadError::Quantization(format!(
                "{module}: unsupported quantization: FP8 W8A8 ({scheme:?}) is not implemented; \
                 only MXFP4 and unquantized layers are served"
            ))),
        }
    }
}

/// The quantization config of a checkpoint, ready to answer per-module questions.
#[derive(Debug)]
pub struct QuantPlan {
    resolver: Option<SchemeResolver>,
}

fn quark_err(e: quant_quark::QuarkError) -> LoadError {
    LoadError::Quantization(e.to_string())
}

/// Checkpoint → canonical name rules for a prefix scheme (literal exclude entries and
/// `layer_quant_config` patterns go through them).
fn mapper(prefix: Prefix) -> Result<NameMapper, LoadError> {
    let rules = match prefix {
        Prefix::DeepseekV3 => Vec::new(),
        Prefix::KimiNested => vec![
            NameRule::prefix("language_model.model.", "model."),
            NameRule::prefix("language_model.", ""),
        ],
        Prefix::KimiFlat => vec![
            NameRule::prefix("language_model.lm_head", "lm_head"),
            NameRule::prefix("language_model.", "model."),
        ],
    };
    NameMapper::new(rules).map_err(quark_err)
}

impl QuantPlan {
    /// Parses `quantization_config` (absent: an unquantized checkpoint). Any method other than
    /// Quark is an "unsupported quantization" error naming it.
    pub fn new(quantization: Option<&Value>, prefix: Prefix) -> Result<Self, LoadError> {
        let Some(q) = quantization else {
            return Ok(Self { resolver: None });
        };
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .unwrap_or("<missing>");
        if method != "quark" {
            return Err(LoadError::Quantization(format!(
                "unsupported quantization: quant_method {method:?} (only AMD Quark MXFP4 \
                 checkpoints and unquantized ones are served)"
            )));
        }
        let config = QuarkConfig::from_value(q).map_err(quark_err)?;
        // Our own, per-instance table: the module the GPU path may fuse resolves shard by shard.
        let fused = FusedModules::new(&[(
            "fused_qkv_a_proj_with_mqa",
            &["q_a_proj", "kv_a_proj_with_mqa"],
        )]);
        let resolver = SchemeResolver::new(config, fused, &mapper(prefix)?).map_err(quark_err)?;
        Ok(Self {
            resolver: Some(resolver),
        })
    }

    /// The format of the linear layer `module` (canonical name, no `.weight`).
    pub fn linear_format(&self, module: &str) -> Result<LinearFormat, LoadError> {
        match &self.resolver {
            None => Ok(LinearFormat::Bf16),
            Some(r) => LinearFormat::from_scheme(module, r.scheme_for(module).map_err(quark_err)?),
        }
    }

    /// Checks what must agree inside one decoder layer: the shards of the fusable query/key
    /// projection, and all routed experts (one format per MoE layer).
    pub fn check_layer(&self, c: &ModelConfig, layer: usize) -> Result<(), LoadError> {
        let Some(r) = &self.resolver else {
            return Ok(());
        };
        let prefix = format!("model.layers.{layer}");
        if c.q_lora_rank.is_some() {
            r.resolve_module(
                &format!("{prefix}.self_attn.fused_qkv_a_proj_with_mqa"),
                quant_quark::LINEAR,
            )
            .map_err(quark_err)?;
        }
        if c.is_moe_layer(layer) {
            r.routed_experts_scheme(&prefix, c.n_routed_experts)
                .map_err(quark_err)?;
        }
        Ok(())
    }

    /// The expert formats of MoE layer `layer` for the fusion policy.
    pub fn layer_formats(&self, c: &ModelConfig, layer: usize) -> Result<LayerFormats, LoadError> {
        let prefix = format!("model.layers.{layer}");
        let routed = self.linear_format(&format!("{prefix}.mlp.experts.0.down_proj"))?;
        let shared_down = self.linear_format(&format!("{prefix}.mlp.shared_experts.down_proj"))?;
        let compatible = match &self.resolver {
            None => Ok(()),
            Some(r) => match r.shared_experts_compatible(&prefix).map_err(quark_err)? {
                SharedExperts::Compatible => Ok(()),
                SharedExperts::Incompatible(why) => Err(why.to_string()),
            },
        };
        Ok(LayerFormats {
            layer,
            routed: routed.describe(),
            compatible: if c.n_shared_experts == 0 {
                Ok(())
            } else {
                compatible
            },
            intermediate_group: matches!(shared_down, LinearFormat::Mxfp4 { .. })
                .then_some(quant_quark::mxfp4::BLOCK),
        })
    }

    /// The quantization in words.
    pub fn describe(&self) -> String {
        match &self.resolver {
            None => "none (unquantized checkpoint)".to_owned(),
            Some(_) => "AMD Quark (per-layer schemes below)".to_owned(),
        }
    }
}
