//! Checkpoint tensor names: the prefix each published layout puts on the canonical DeepSeek-V3
//! names, and the named rules by which tensors the text model does not run are skipped.

use std::collections::BTreeMap;

use crate::config::{Layout, ModelConfig};

use super::checkpoint::TensorInfo;

/// The name prefix scheme of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefix {
    /// DeepSeek-V3: `model.layers.N…`, `model.embed_tokens`, `lm_head`.
    DeepseekV3,
    /// Kimi-K2.5: `language_model.model.layers.N…`, `language_model.lm_head`.
    KimiNested,
    /// Kimi-K2.5, flat: `language_model.layers.N…`, `language_model.embed_tokens`,
    /// `language_model.lm_head` (every canonical `model.` dropped).
    KimiFlat,
}

impl Prefix {
    /// Picks the prefix scheme from the config's layout and the checkpoint's own names. A Kimi
    /// checkpoint that mixes both spellings is rejected: its names would be ambiguous.
    pub fn detect(layout: Layout, tensors: &BTreeMap<String, TensorInfo>) -> Result<Self, String> {
        match layout {
            Layout::DeepseekV3 => Ok(Self::DeepseekV3),
            Layout::KimiK25 => {
                let nested = tensors
                    .keys()
                    .any(|n| n.starts_with("language_model.model."));
                let flat = tensors.keys().any(|n| {
                    n.starts_with("language_model.")
                        && !n.starts_with("language_model.model.")
                        && n != "language_model.lm_head.weight"
                        && n != "language_model.lm_head.weight_scale"
                });
                match (nested, flat) {
                    (true, true) => Err(
                        "the checkpoint mixes language_model.model.* and language_model.* names"
                            .to_owned(),
                    ),
                    (false, true) => Ok(Self::KimiFlat),
                    _ => Ok(Self::KimiNested),
                }
            }
        }
    }

    /// The checkpoint's spelling of a canonical name.
    pub fn checkpoint_name(self, canonical: &str) -> String {
        match self {
            Self::DeepseekV3 => canonical.to_owned(),
            Self::KimiNested => format!("language_model.{canonical}"),
            Self::KimiFlat => match canonical.strip_prefix("model.") {
                Some(rest) => format!("language_model.{rest}"),
                None => format!("language_model.{canonical}"),
            },
        }
    }

    /// The canonical name of a checkpoint name, if it is a language-model name.
    pub fn canonical_name(self, name: &str) -> Option<String> {
        match self {
            Self::DeepseekV3 => Some(name.to_owned()),
            Self::KimiNested => name.strip_prefix("language_model.").map(str::to_owned),
            Self::KimiFlat => {
                let rest = name.strip_prefix("language_model.")?;
                Some(if rest.starts_with("lm_head") {
                    rest.to_owned()
                } else {
                    format!("model.{rest}")
                })
            }
        }
    }
}

/// The named rule that skips a checkpoint tensor the text model does not run, if any.
pub fn skip_rule(
    c: &ModelConfig,
    layout: Layout,
    canonical: Option<&str>,
    name: &str,
) -> Option<String> {
    if layout == Layout::KimiK25 {
        for prefix in ["vision_tower.", "mm_projector."] {
            if name.starts_with(prefix) {
                return Some(format!("{prefix}* (Kimi-K2.5 vision path; text only)"));
            }
        }
    }
    let rest = canonical?.strip_prefix("model.layers.")?;
    let layer: usize = rest.split('.').next()?.parse().ok()?;
    let first = c.num_hidden_layers;
    (layer >= first && layer < first + c.num_nextn_predict_layers)
        .then(|| format!("model.layers.{layer}.* (multi-token-prediction layer; not run)"))
}
