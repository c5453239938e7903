//! The one error type of config parsing and scheme resolution.

use crate::scheme::LayerScheme;

/// Why a Quark config could not be parsed or a layer's scheme could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum QuarkError {
    /// The text is not JSON.
    #[error("quantization_config is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `quant_method` names another quantizer.
    #[error("quantization_config.quant_method is {found:?}, expected \"quark\"")]
    NotQuark {
        /// The method found.
        found: String,
    },
    /// A required field is absent (or null).
    #[error("{path} is missing")]
    MissingField {
        /// Where, e.g. `export` or `layer_quant_config["*.q_a_proj"].weight.dtype`.
        path: String,
    },
    /// A field has the wrong JSON type.
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        /// Where the field is.
        path: String,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A `re:` exclude entry is not a valid regex.
    #[error("exclude entry {entry:?} is not a valid regex: {source}")]
    BadExcludeRegex {
        /// The entry as written, `re:` included.
        entry: String,
        /// The compiler's complaint.
        #[source]
        source: regex::Error,
    },
    /// The KV cache is quantized, which nothing downstream implements.
    #[error("{field} is not empty: a quantized KV cache is not supported")]
    UnsupportedKvCache {
        /// `export.kv_cache_group` or `kv_cache_quant_config`.
        field: &'static str,
    },
    /// A layer's spec is not one of the schemes we implement.
    #[error(
        "layer {layer}: unsupported quantization scheme from {source_field}: {reason}; spec: {spec}"
    )]
    UnsupportedScheme {
        /// The layer asked about.
        layer: String,
        /// Where its spec came from, e.g. `layer_quant_config["*.q_a_proj"]`.
        source_field: String,
        /// What about the spec is unsupported.
        reason: String,
        /// The spec, as compact JSON.
        spec: String,
    },
    /// The shards of a fused module resolve to different schemes.
    #[error(
        "fused layer {layer}: shard {first} is {first_scheme:?} but shard {other} is {other_scheme:?}; \
         a fused module needs one scheme"
    )]
    FusedShardsDisagree {
        /// The fused layer asked about.
        layer: String,
        /// The first shard's name.
        first: String,
        /// The first shard's scheme.
        first_scheme: LayerScheme,
        /// The first shard that disagrees with it.
        other: String,
        /// That shard's scheme.
        other_scheme: LayerScheme,
    },
    /// Two routed expert projections of one MoE layer resolve to different schemes.
    #[error(
        "{first} is {first_scheme:?} but {other} is {other_scheme:?}; \
         the routed experts of a MoE layer need one scheme"
    )]
    ExpertsDisagree {
        /// The first projection resolved.
        first: String,
        /// Its scheme.
        first_scheme: LayerScheme,
        /// The first projection that differs from it.
        other: String,
        /// That projection's scheme.
        other_scheme: LayerScheme,
    },
    /// A MoE layer was asked about with zero routed experts.
    #[error("{layer}: a MoE layer needs at least one routed expert")]
    NoRoutedExperts {
        /// The decoder layer prefix.
        layer: String,
    },
    /// A name-mapper substring rule with an empty pattern, which would match everywhere.
    #[error("name-mapper rule {index} rewrites the empty substring")]
    EmptySubstringRule {
        /// Position of the rule.
        index: usize,
    },
}
