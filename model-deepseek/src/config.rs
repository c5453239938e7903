//! Model configuration: the fields of a DeepSeek-V3-family `config.json` the forward pass needs,
//! parsed with the format's defaults and validated.
//!
//! Three layouts are accepted:
//! - `DeepseekV3ForCausalLM` at the top level (DeepSeek-V3/R1, Kimi-K2);
//! - the Kimi-K2.5 wrapper `KimiK25ForConditionalGeneration`, whose language model config is
//!   `text_config` (itself a DeepSeek-V3 config); `quantization_config` may sit at either level.
//!
//! Defaults are those of the reference `DeepseekV3Config` (the checkpoint's own
//! `configuration_deepseek.py`); every value present in the file wins. Published copies of
//! these configs disagree on rope and epsilon fields, so nothing here is hard-coded per model.

use moe_kernels::reference::{MlaDims, Rope, RoutingParams, YarnParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// The only language-model architecture this crate runs.
pub const DEEPSEEK_V3_ARCHITECTURE: &str = "DeepseekV3ForCausalLM";
/// The Kimi-K2.5 multimodal wrapper whose `text_config` is a DeepSeek-V3 config.
pub const KIMI_K25_ARCHITECTURE: &str = "KimiK25ForConditionalGeneration";

/// Why a `config.json` cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The text is not JSON, or a field has the wrong JSON type.
    #[error("config.json: {0}")]
    Json(#[from] serde_json::Error),
    /// `architectures` names something other than DeepSeek-V3 or the Kimi-K2.5 wrapper.
    #[error(
        "unsupported architecture {found:?} (supported: {DEEPSEEK_V3_ARCHITECTURE}, {KIMI_K25_ARCHITECTURE})"
    )]
    UnsupportedArchitecture {
        /// The `architectures` list as found (empty when the field is missing).
        found: Vec<String>,
    },
    /// The Kimi-K2.5 wrapper has no `text_config` object.
    #[error("{KIMI_K25_ARCHITECTURE} config has no `text_config` object")]
    MissingTextConfig,
    /// A field holds a value the format allows but this implementation does not run.
    #[error("config field `{field}` = {value}: unsupported (supported: {supported})")]
    Unsupported {
        /// The config field.
        field: &'static str,
        /// The value found.
        value: String,
        /// What is supported instead.
        supported: &'static str,
    },
    /// A field holds an impossible value.
    #[error("config field `{field}` = {value}: {reason}")]
    Invalid {
        /// The config field.
        field: &'static str,
        /// The value found.
        value: String,
        /// Why it is impossible.
        reason: String,
    },
    /// The wrapper and its `text_config` both carry a `quantization_config`, and they differ.
    #[error("`quantization_config` differs between the top level and `text_config`")]
    ConflictingQuantization,
}

/// How the checkpoint's tensors are laid out, which decides the weight-name prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `model.layers.N…`, `model.embed_tokens`, `lm_head` at the top level.
    DeepseekV3,
    /// Kimi-K2.5: language-model weights under `language_model.` (either
    /// `language_model.model.layers.N…` or `language_model.layers.N…`), plus vision weights the
    /// text path skips.
    KimiK25,
}

/// A parsed and validated `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointConfig {
    /// The language model.
    pub model: ModelConfig,
    /// Which published layout the checkpoint follows.
    pub layout: Layout,
    /// The raw `quantization_config` object (from either level for Kimi-K2.5), for
    /// `quant-quark` to parse; `None` for an unquantized checkpoint.
    pub quantization: Option<Value>,
}

/// Expert scoring function of the MoE router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ScoringFunc {
    /// `sigmoid`: independent per-expert scores (DeepSeek-V3).
    Sigmoid,
}

/// Expert selection method of the MoE router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TopkMethod {
    /// `noaux_tc`: correction bias for selection only, group-limited top-k.
    NoauxTc,
}

/// YaRN rotary-embedding scaling (`rope_scaling` with `type`/`rope_type` = `yarn`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct YarnScaling {
    /// Context extension factor (`factor`).
    pub factor: f64,
    /// Pre-extension context length (`original_max_position_embeddings`, default 4096).
    pub original_max_position_embeddings: usize,
    /// Rotations above which a dimension is extrapolated (`beta_fast`, default 32).
    pub beta_fast: f64,
    /// Rotations below which a dimension is interpolated (`beta_slow`, default 1).
    pub beta_slow: f64,
    /// `mscale` (default 1): numerator of the cos/sin magnitude correction.
    pub mscale: f64,
    /// `mscale_all_dim` (default 0): denominator of the cos/sin magnitude correction, and the
    /// softmax scale is multiplied by `yarn_mscale(factor, mscale_all_dim)²` when non-zero.
    pub mscale_all_dim: f64,
}

impl YarnScaling {
    /// The YaRN magnitude correction `0.1·m·ln(factor) + 1` (1 when `factor <= 1`).
    pub fn mscale_for(&self, m: f64) -> f64 {
        if self.factor <= 1.0 {
            1.0
        } else {
            0.1 * m * self.factor.ln() + 1.0
        }
    }

    /// The factor the rotary cos/sin tables are multiplied by:
    /// `mscale_for(mscale) / mscale_for(mscale_all_dim)` (1 for DeepSeek-V3, where both are 1).
    pub fn cos_sin_scale(&self) -> f64 {
        self.mscale_for(self.mscale) / self.mscale_for(self.mscale_all_dim)
    }
}

/// Every field of the language model the forward pass and the loader need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// `model_type` as written (`deepseek_v3`, `kimi_k2`, …), informational.
    pub model_type: Option<String>,
    /// Vocabulary size: rows of the embedding and of `lm_head`.
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Intermediate width of the dense MLP layers.
    pub intermediate_size: usize,
    /// Intermediate width of one expert (routed or shared slot).
    pub moe_intermediate_size: usize,
    /// Decoder layers run by the forward pass.
    pub num_hidden_layers: usize,
    /// Multi-token-prediction layers after the decoder layers (their weights are not run).
    pub num_nextn_predict_layers: usize,
    /// Attention heads (MLA: every head reads the same latent cache).
    pub num_attention_heads: usize,
    /// Rank of the query LoRA (`q_a_proj`/`q_b_proj`); `None`: a single `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed key/value latent (the KV cache width per token, with the rope key).
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without rotary embedding.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dimensions with rotary embedding (one rope key shared by all heads).
    pub qk_rope_head_dim: usize,
    /// Per-head value dimension.
    pub v_head_dim: usize,
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Shared experts per MoE layer (their MLP is `n_shared_experts × moe_intermediate_size` wide).
    pub n_shared_experts: usize,
    /// Routed experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Expert groups for group-limited routing.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Factor applied once to the routed-expert sum.
    pub routed_scaling_factor: f32,
    /// Router scoring function.
    pub scoring_func: ScoringFunc,
    /// Router selection method.
    pub topk_method: TopkMethod,
    /// Whether routed weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
    /// Layers below this index use the dense MLP.
    pub first_k_dense_replace: usize,
    /// From `first_k_dense_replace` on, every `moe_layer_freq`-th layer is MoE.
    pub moe_layer_freq: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base.
    pub rope_theta: f64,
    /// YaRN scaling, if any.
    pub rope_scaling: Option<YarnScaling>,
    /// Longest context (prompt + generated tokens) a sequence may reach.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (`eos_token_id` may be one id or a list).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Query/key head dimension: `qk_nope_head_dim + qk_rope_head_dim`.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// The attention's dimensions as the MLA kernels take them.
    pub fn mla_dims(&self) -> MlaDims {
        MlaDims {
            heads: self.num_attention_heads,
            qk_nope: self.qk_nope_head_dim,
            qk_rope: self.qk_rope_head_dim,
            v: self.v_head_dim,
            kv_lora: self.kv_lora_rank,
        }
    }

    /// The MoE router's parameters as the routing kernels take them, with `shared_slots`
    /// shared experts fused into the routed set (0 where they run as a separate pass).
    pub fn routing_params(&self, shared_slots: usize) -> RoutingParams {
        RoutingParams {
            n_group: self.n_group,
            topk_group: self.topk_group,
            top_k: self.num_experts_per_tok,
            norm_topk_prob: self.norm_topk_prob,
            routed_scaling_factor: self.routed_scaling_factor,
            shared_slots,
        }
    }

    /// Whether decoder layer `layer` has a MoE block (else the dense MLP).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.n_routed_experts > 0
            && layer >= self.first_k_dense_replace
            && layer.is_multiple_of(self.moe_layer_freq)
    }

    /// Routed experts per group.
    pub fn experts_per_group(&self) -> usize {
        self.n_routed_experts / self.n_group
    }

    /// Attention softmax scale: `qk_head_dim^-½`, times `mscale(factor, mscale_all_dim)²` under
    /// YaRN when `mscale_all_dim` is non-zero (as the reference attention does).
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        let scale = match &self.rope_scaling {
            Some(yarn) if yarn.mscale_all_dim != 0.0 => {
                let m = yarn.mscale_for(yarn.mscale_all_dim);
                base * m * m
            }
            _ => base,
        };
        scale as f32
    }

    /// The rotary embedding of the `qk_rope_head_dim` part, YaRN-corrected when configured.
    pub fn rope(&self) -> Rope {
        let yarn = self.rope_scaling.as_ref().map(|y| YarnParams {
            factor: y.factor,
            original_max_position_embeddings: y.original_max_position_embeddings as f64,
            beta_fast: y.beta_fast,
            beta_slow: y.beta_slow,
            cos_sin_scale: y.cos_sin_scale(),
        });
        Rope::new(self.qk_rope_head_dim, self.rope_theta, yarn.as_ref())
    }

    /// Parse a DeepSeek-V3 text config object (no wrapper) and validate it.
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        let raw = RawTextConfig::deserialize(value)?;
        let config = raw.into_config()?;
        if let Some(yarn) = &config.rope_scaling {
            let ratio = config.max_position_embeddings as f64
                / yarn.original_max_position_embeddings as f64;
            if (ratio - yarn.factor).abs() > 1e-9 * yarn.factor {
                // Recent transformers take yarn's factor from this ratio when both fields are
                // present; the checkpoint's own modeling code (and we) use `factor`.
                tracing::warn!(
                    factor = yarn.factor,
                    ratio,
                    "rope_scaling.factor differs from max_position_embeddings / \
                     original_max_position_embeddings; using factor"
                );
            }
        }
        Ok(config)
    }

    /// Check the config for impossible values; every error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // `n_group` is checked even without MoE layers: `experts_per_group` divides by it.
        let positive: [(&'static str, usize); 12] = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("moe_layer_freq", self.moe_layer_freq),
            ("n_group", self.n_group),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        if self.q_lora_rank == Some(0) {
            return Err(invalid("q_lora_rank", 0, "must be at least 1 (or null)"));
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(invalid(
                "qk_rope_head_dim",
                self.qk_rope_head_dim,
                "must be even (rotary pairs)",
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(invalid(
                "vocab_size",
                self.vocab_size,
                "token ids must fit in u32",
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(invalid("rms_norm_eps", self.rms_norm_eps, "must be > 0"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(invalid("rope_theta", self.rope_theta, "must be > 1"));
        }
        if let Some(yarn) = &self.rope_scaling {
            validate_yarn(yarn)?;
        }
        for id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if *id as usize >= self.vocab_size {
                return Err(invalid(
                    "bos_token_id/eos_token_id",
                    id,
                    format!("outside the vocabulary of {}", self.vocab_size),
                ));
            }
        }
        if self.first_k_dense_replace < self.num_hidden_layers && self.n_routed_experts > 0 {
            self.validate_moe()?;
        }
        Ok(())
    }

    fn validate_moe(&self) -> Result<(), ConfigError> {
        if self.moe_intermediate_size == 0 {
            return Err(invalid("moe_intermediate_size", 0, "must be at least 1"));
        }
        let k = self.num_experts_per_tok;
        if k == 0 || k > self.n_routed_experts {
            return Err(invalid(
                "num_experts_per_tok",
                k,
                format!(
                    "must be in 1..={} (n_routed_experts)",
                    self.n_routed_experts
                ),
            ));
        }
        if self.n_group == 0 || !self.n_routed_experts.is_multiple_of(self.n_group) {
            return Err(invalid(
                "n_group",
                self.n_group,
                format!("must divide n_routed_experts = {}", self.n_routed_experts),
            ));
        }
        if self.experts_per_group() < 2 {
            return Err(invalid(
                "n_group",
                self.n_group,
                "groups must hold at least 2 experts (group score = sum of the top 2)",
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(invalid(
                "topk_group",
                self.topk_group,
                format!("must be in 1..={} (n_group)", self.n_group),
            ));
        }
        if k > self.topk_group * self.experts_per_group() {
            return Err(invalid(
                "num_experts_per_tok",
                k,
                format!(
                    "more than the {} experts in topk_group = {} groups",
                    self.topk_group * self.experts_per_group(),
                    self.topk_group
                ),
            ));
        }
        let rsf = self.routed_scaling_factor;
        if !(rsf.is_finite() && rsf > 0.0) {
            return Err(invalid("routed_scaling_factor", rsf, "must be > 0"));
        }
        Ok(())
    }
}

fn validate_yarn(yarn: &YarnScaling) -> Result<(), ConfigError> {
    if !(yarn.factor.is_finite() && yarn.factor > 0.0) {
        return Err(invalid("rope_scaling.factor", yarn.factor, "must be > 0"));
    }
    if yarn.original_max_position_embeddings == 0 {
        return Err(invalid(
            "rope_scaling.original_max_position_embeddings",
            0,
            "must be at least 1",
        ));
    }
    if !(yarn.beta_fast.is_finite() && yarn.beta_slow.is_finite() && yarn.beta_slow > 0.0) {
        return Err(invalid(
            "rope_scaling.beta_slow",
            yarn.beta_slow,
            "beta_fast and beta_slow must be finite, beta_slow > 0",
        ));
    }
    if yarn.beta_fast < yarn.beta_slow {
        return Err(invalid(
            "rope_scaling.beta_fast",
            yarn.beta_fast,
            format!("must be >= beta_slow = {}", yarn.beta_slow),
        ));
    }
    if !(yarn.mscale.is_finite() && yarn.mscale_all_dim.is_finite()) {
        return Err(invalid(
            "rope_scaling.mscale",
            yarn.mscale,
            "mscale and mscale_all_dim must be finite",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Parse `config.json` text: a DeepSeek-V3 / Kimi-K2 config or the Kimi-K2.5 wrapper.
pub fn parse_config(text: &str) -> Result<CheckpointConfig, ConfigError> {
    let root: Value = serde_json::from_str(text)?;
    let architectures = architectures_of(&root)?;
    match architectures.first().map(String::as_str) {
        Some(DEEPSEEK_V3_ARCHITECTURE) => Ok(CheckpointConfig {
            model: ModelConfig::from_value(&root)?,
            layout: Layout::DeepseekV3,
            quantization: quantization_of(&root),
        }),
        Some(KIMI_K25_ARCHITECTURE) => {
            let text = root.get("text_config").filter(|v| v.is_object());
            let text = text.ok_or(ConfigError::MissingTextConfig)?;
            let inner = architectures_of(text)?;
            if !inner.is_empty() && inner[0] != DEEPSEEK_V3_ARCHITECTURE {
                return Err(ConfigError::UnsupportedArchitecture { found: inner });
            }
            let quantization = match (quantization_of(&root), quantization_of(text)) {
                (Some(outer), Some(inner)) if outer != inner => {
                    return Err(ConfigError::ConflictingQuantization);
                }
                (outer, inner) => outer.or(inner),
            };
            Ok(CheckpointConfig {
                model: ModelConfig::from_value(text)?,
                layout: Layout::KimiK25,
                quantization,
            })
        }
        _ => Err(ConfigError::UnsupportedArchitecture {
            found: architectures,
        }),
    }
}

fn architectures_of(value: &Value) -> Result<Vec<String>, ConfigError> {
    match value.get("architectures") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(list) => Ok(Vec::<String>::deserialize(list)?),
    }
}

fn quantization_of(value: &Value) -> Option<Value> {
    value
        .get("quantization_config")
        .filter(|q| !q.is_null())
        .cloned()
}

/// `eos_token_id`: one id or a list of ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_scaling` as written; `type` (old) or `rope_type` (new transformers) names the kind.
#[derive(Deserialize)]
struct RawRopeScaling {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
}

impl RawRopeScaling {
    fn into_yarn(self) -> Result<Option<YarnScaling>, ConfigError> {
        let kind = self.rope_type.or(self.kind).unwrap_or_default();
        match kind.as_str() {
            "default" => Ok(None),
            "yarn" => Ok(Some(YarnScaling {
                factor: self.factor.ok_or_else(|| {
                    invalid("rope_scaling.factor", "missing", "yarn needs a factor")
                })?,
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .unwrap_or(4096),
                beta_fast: self.beta_fast.unwrap_or(32.0),
                beta_slow: self.beta_slow.unwrap_or(1.0),
                mscale: self.mscale.unwrap_or(1.0),
                mscale_all_dim: self.mscale_all_dim.unwrap_or(0.0),
            })),
            other => Err(ConfigError::Unsupported {
                field: "rope_scaling.type",
                value: format!("{other:?}"),
                supported: "yarn",
            }),
        }
    }
}

/// The text config as written, with the reference `DeepseekV3Config` defaults.
#[derive(Deserialize)]
struct RawTextConfig {
    model_type: Option<String>,
    #[serde(default = "defaults::vocab_size")]
    vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::moe_intermediate_size")]
    moe_intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    num_hidden_layers: usize,
    #[serde(default)]
    num_nextn_predict_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::q_lora_rank")]
    q_lora_rank: Option<usize>,
    #[serde(default = "defaults::kv_lora_rank")]
    kv_lora_rank: usize,
    #[serde(default = "defaults::qk_nope_head_dim")]
    qk_nope_head_dim: usize,
    #[serde(default = "defaults::qk_rope_head_dim")]
    qk_rope_head_dim: usize,
    #[serde(default = "defaults::v_head_dim")]
    v_head_dim: usize,
    #[serde(default = "defaults::n_routed_experts")]
    n_routed_experts: Option<usize>,
    #[serde(default = "defaults::n_shared_experts")]
    n_shared_experts: Option<usize>,
    #[serde(default = "defaults::num_experts_per_tok")]
    num_experts_per_tok: Option<usize>,
    #[serde(default = "defaults::n_group")]
    n_group: Option<usize>,
    #[serde(default = "defaults::topk_group")]
    topk_group: Option<usize>,
    #[serde(default = "defaults::routed_scaling_factor")]
    routed_scaling_factor: f32,
    #[serde(default = "defaults::scoring_func")]
    scoring_func: String,
    #[serde(default = "defaults::topk_method")]
    topk_method: String,
    #[serde(default = "defaults::norm_topk_prob")]
    norm_topk_prob: bool,
    #[serde(default = "defaults::first_k_dense_replace")]
    first_k_dense_replace: usize,
    #[serde(default = "defaults::moe_layer_freq")]
    moe_layer_freq: usize,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "defaults::rms_norm_eps")]
    rms_norm_eps: f32,
    #[serde(default = "defaults::rope_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RawRopeScaling>,
    #[serde(default = "defaults::rope_interleave")]
    rope_interleave: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "defaults::max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "defaults::bos_token_id")]
    bos_token_id: Option<u32>,
    #[serde(default = "defaults::eos_token_id")]
    eos_token_id: Option<TokenIds>,
}

impl RawTextConfig {
    fn into_config(self) -> Result<ModelConfig, ConfigError> {
        let scoring_func = match self.scoring_func.as_str() {
            "sigmoid" => ScoringFunc::Sigmoid,
            other => return Err(unsupported("scoring_func", other, "sigmoid")),
        };
        let topk_method = match self.topk_method.as_str() {
            "noaux_tc" => TopkMethod::NoauxTc,
            other => return Err(unsupported("topk_method", other, "noaux_tc")),
        };
        if self.hidden_act != "silu" {
            return Err(unsupported("hidden_act", &self.hidden_act, "silu"));
        }
        if !self.rope_interleave {
            return Err(unsupported(
                "rope_interleave",
                "false",
                "true (GPT-J interleaved pairs)",
            ));
        }
        if self.attention_bias {
            return Err(unsupported("attention_bias", "true", "false"));
        }
        let rope_scaling = match self.rope_scaling {
            Some(raw) => raw.into_yarn()?,
            None => None,
        };
        let config = ModelConfig {
            model_type: self.model_type,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            moe_intermediate_size: self.moe_intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_nextn_predict_layers: self.num_nextn_predict_layers,
            num_attention_heads: self.num_attention_heads,
            q_lora_rank: self.q_lora_rank,
            kv_lora_rank: self.kv_lora_rank,
            qk_nope_head_dim: self.qk_nope_head_dim,
            qk_rope_head_dim: self.qk_rope_head_dim,
            v_head_dim: self.v_head_dim,
            n_routed_experts: self.n_routed_experts.unwrap_or(0),
            n_shared_experts: self.n_shared_experts.unwrap_or(0),
            num_experts_per_tok: self.num_experts_per_tok.unwrap_or(0),
            n_group: self.n_group.unwrap_or(1),
            topk_group: self.topk_group.unwrap_or(1),
            routed_scaling_factor: self.routed_scaling_factor,
            scoring_func,
            topk_method,
            norm_topk_prob: self.norm_topk_prob,
            first_k_dense_replace: self.first_k_dense_replace,
            moe_layer_freq: self.moe_layer_freq,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => Vec::new(),
                Some(TokenIds::One(id)) => vec![id],
                Some(TokenIds::Many(ids)) => ids,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

fn unsupported(field: &'static str, value: &str, supported: &'static str) -> ConfigError {
    ConfigError::Unsupported {
        field,
        value: format!("{value:?}"),
        supported,
    }
}

/// The reference `DeepseekV3Config` defaults (DeepSeek-V3's `configuration_deepseek.py`).
mod defaults {
    pub fn vocab_size() -> usize {
        129280
    }
    pub fn hidden_size() -> usize {
        7168
    }
    pub fn intermediate_size() -> usize {
        18432
    }
    pub fn moe_intermediate_size() -> usize {
        2048
    }
    pub fn num_hidden_layers() -> usize {
        61
    }
    pub fn num_attention_heads() -> usize {
        128
    }
    pub fn q_lora_rank() -> Option<usize> {
        Some(1536)
    }
    pub fn kv_lora_rank() -> usize {
        512
    }
    pub fn qk_nope_head_dim() -> usize {
        128
    }
    pub fn qk_rope_head_dim() -> usize {
        64
    }
    pub fn v_head_dim() -> usize {
        128
    }
    pub fn n_routed_experts() -> Option<usize> {
        Some(256)
    }
    pub fn n_shared_experts() -> Option<usize> {
        Some(1)
    }
    pub fn num_experts_per_tok() -> Option<usize> {
        Some(8)
    }
    pub fn n_group() -> Option<usize> {
        Some(8)
    }
    pub fn topk_group() -> Option<usize> {
        Some(4)
    }
    pub fn routed_scaling_factor() -> f32 {
        2.5
    }
    pub fn scoring_func() -> String {
        "sigmoid".into()
    }
    pub fn topk_method() -> String {
        "noaux_tc".into()
    }
    pub fn norm_topk_prob() -> bool {
        true
    }
    pub fn first_k_dense_replace() -> usize {
        3
    }
    pub fn moe_layer_freq() -> usize {
        1
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn rms_norm_eps() -> f32 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn rope_interleave() -> bool {
        true
    }
    pub fn max_position_embeddings() -> usize {
        4096
    }
    pub fn bos_token_id() -> Option<u32> {
        Some(0)
    }
    pub fn eos_token_id() -> Option<super::TokenIds> {
        Some(super::TokenIds::One(1))
    }
}
