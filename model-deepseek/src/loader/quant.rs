//! The checkpoint's quantization config, resolved per module into the storage formats the
//! loader reads, and the expert formats the fusion policy compares.

use quant_quark::ScaleRule;
use serde_json::Value;

use crate::config::Layout;
use crate::fusion::LayerFormats;

use super::error::LoadError;

/// How one linear layer is stored and run.
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
            Self::Bf16 => "bf16 (unquantized)".to_owned(),
            Self::Mxfp4 { input: None } => "MXFP4 weight-only (fp4 group 32, e8m0)".to_owned(),
            Self::Mxfp4 { input: Some(rule) } => format!(
                "MXFP4 W4A4 (fp4 group 32, e8m0; dynamic activations, {} scale rule)",
                match rule {
                    ScaleRule::Even => "even",
                    ScaleRule::Ocp => "OCP floor",
                }
            ),
        }
    }
}

/// The quantization config of a checkpoint, ready to answer per-module questions.
#[derive(Debug)]
pub struct QuantPlan {
    quark: Option<quark::Resolver>,
}

impl QuantPlan {
    /// Parses `quantization_config` (absent: an unquantized checkpoint). Any method other than
    /// Quark is an "unsupported quantization" error naming it.
    pub fn new(quantization: Option<&Value>, layout: Layout) -> Result<Self, LoadError> {
        let Some(q) = quantization else {
            return Ok(Self { quark: None });
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
        Ok(Self {
            quark: Some(quark::Resolver::new(q, layout)?),
        })
    }

    /// The format of the linear layer stored as `module` (checkpoint spelling, no `.weight`).
    pub fn linear_format(&self, module: &str) -> Result<LinearFormat, LoadError> {
        match &self.quark {
            None => Ok(LinearFormat::Bf16),
            Some(r) => r.linear_format(module),
        }
    }

    /// The expert formats of one MoE layer for the fusion policy: all routed experts must share
    /// one format per projection, and the shared expert's must equal it.
    pub fn layer_formats(
        &self,
        layer: usize,
        routed: &[String],
        shared: &[String],
    ) -> Result<LayerFormats, LoadError> {
        let formats = |names: &[String]| -> Result<Vec<LinearFormat>, LoadError> {
            names.iter().map(|n| self.linear_format(n)).collect()
        };
        let routed_f = formats(routed)?;
        let shared_f = formats(shared)?;
        let first = routed_f.first().copied().unwrap_or(LinearFormat::Bf16);
        let compatible =
            if let Some((i, f)) = routed_f.iter().enumerate().find(|(_, f)| **f != first) {
                Err(format!(
                    "routed experts mix formats ({} is {}, {} is {})",
                    routed[0],
                    first.describe(),
                    routed[i],
                    f.describe()
                ))
            } else if let Some((i, f)) = shared_f.iter().enumerate().find(|(_, f)| **f != first) {
                Err(format!("{} is {}", shared[i], f.describe()))
            } else {
                Ok(())
            };
        Ok(LayerFormats {
            layer,
            routed: first.describe(),
            compatible,
            intermediate_group: shared_f
                .last()
                .and_then(|f| matches!(f, LinearFormat::Mxfp4 { .. }).then_some(32)),
        })
    }

    /// The quantization in words.
    pub fn describe(&self) -> String {
        match &self.quark {
            None => "none (unquantized checkpoint)".to_owned(),
            Some(r) => r.describe(),
        }
    }
}

mod quark {
    //! Resolution of Quark specs per module.
    use super::*;

    #[derive(Debug)]
    pub(super) struct Resolver {
        global: LinearFormat,
        exclude: Vec<String>,
    }

    impl Resolver {
        pub(super) fn new(q: &Value, _layout: Layout) -> Result<Self, LoadError> {
            let global = q.get("global_quant_config");
            let fp4 = |v: Option<&Value>| {
                v.and_then(|w| w.get("dtype")).and_then(Value::as_str) == Some("fp4")
            };
            let global = match global {
                Some(g) if fp4(g.get("weight")) => LinearFormat::Mxfp4 {
                    input: fp4(g.get("input_tensors")).then_some(ScaleRule::Even),
                },
                _ => LinearFormat::Bf16,
            };
            let exclude = q
                .get("exclude")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Self { global, exclude })
        }

        pub(super) fn linear_format(&self, module: &str) -> Result<LinearFormat, LoadError> {
            let excluded = self.exclude.iter().any(|e| match e.strip_prefix("re:") {
                Some(p) => regex_lite_match(p, module),
                None => e == module,
            });
            Ok(if excluded {
                LinearFormat::Bf16
            } else {
                self.global
            })
        }

        pub(super) fn describe(&self) -> String {
            format!("quark; global {}", self.global.describe())
        }
    }

    fn regex_lite_match(p: &str, m: &str) -> bool {
        regex::Regex::new(&format!("^(?:{p})")).is_ok_and(|r| r.is_match(m))
    }
}
