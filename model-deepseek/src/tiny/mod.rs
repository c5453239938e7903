//! Tiny synthetic checkpoints: real expert counts, tiny dimensions, random weights from a seed,
//! written in the published DeepSeek-V3 and Kimi-K2.5 layouts with a byte-level tokenizer.
//!
//! The generator writes `config.json` first, parses it with the same code the loader uses, and
//! writes exactly the loader's catalog of weights, quantized wherever the written Quark config
//! says so (with Quark's "even" scale rule, as Quark exports do). Weights are scaled so every
//! layer keeps unit-sized activations and the logits are well spread (no NaN, no saturation).

pub mod builtin;
pub mod config;
pub mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};

pub use builtin::{BUILTIN_SEED, builtin_model_dir, ensure_builtin_model};

/// Published checkpoint layouts a tiny checkpoint can follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TinyLayout {
    /// DeepSeek-V3/R1: `model.layers.N…`, one safetensors file, an MTP layer, literal excludes.
    #[default]
    DeepseekV3,
    /// Kimi-K2.5 wrapper: `language_model.model.layers.N…`, vision tensors, sharded with an
    /// index, regex excludes.
    KimiK25,
    /// Kimi-K2.5 with the flat `language_model.layers.N…` spelling.
    KimiK25Flat,
}

impl std::str::FromStr for TinyLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deepseek" => Ok(Self::DeepseekV3),
            "kimi-k25" => Ok(Self::KimiK25),
            "kimi-k25-flat" => Ok(Self::KimiK25Flat),
            other => Err(format!(
                "layout {other:?} is not one of deepseek, kimi-k25, kimi-k25-flat"
            )),
        }
    }
}

/// How the shared experts are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SharedExperts {
    /// MXFP4, like the routed experts (fusable).
    #[default]
    Quantized,
    /// bf16 next to MXFP4 routed experts, as amd/Kimi-K2.5-MXFP4 shipped before revision
    /// 94d8c1bd (not fusable).
    Bf16,
}

impl std::str::FromStr for SharedExperts {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quantized" => Ok(Self::Quantized),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "shared-expert format {other:?} is not one of quantized, bf16"
            )),
        }
    }
}

/// What tiny checkpoint to write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TinySpec {
    /// Name layout and file arrangement.
    pub layout: TinyLayout,
    /// Storage of the shared experts.
    pub shared_experts: SharedExperts,
    /// Routed experts per MoE layer (256 as DeepSeek-V3, 384 as Kimi).
    pub n_routed_experts: usize,
    /// Shared experts per MoE layer (1 in every published DeepSeek-V3/Kimi model; 2 as in
    /// DeepSeek-V2, whose shared MLP is twice as wide).
    pub n_shared_experts: usize,
    /// Seed of every random value.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            layout: TinyLayout::DeepseekV3,
            shared_experts: SharedExperts::Quantized,
            n_routed_experts: 256,
            n_shared_experts: 1,
            seed: 0,
        }
    }
}

/// Why a tiny checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The spec cannot be built (e.g. an expert count the routing groups do not divide).
    #[error("tiny checkpoint spec: {0}")]
    Spec(String),
    /// No cache directory to keep the built-in model in.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TinyError + '_ {
    move |source| TinyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a tiny checkpoint (config, weights, tokenizer) into `dir`, creating it if needed.
pub fn write_tiny_checkpoint(dir: &Path, spec: &TinySpec) -> Result<(), TinyError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let config = config::config_json(spec);
    write_json(&dir.join("config.json"), &config)?;
    weights::write_weights(dir, spec, &config)?;
    write_json(&dir.join("tokenizer.json"), &tokenizer::tokenizer_json())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer::tokenizer_config_json(),
    )?;
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TinyError> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    std::fs::write(path, text).map_err(io_err(path))
}
