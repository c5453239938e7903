//! Per-layer scheme resolution: exclusion, then `layer_quant_config`, then
//! `layer_type_quant_config`, then `global_quant_config`.

use std::fmt;

use serde::Serialize;

use crate::config::{LayerSpec, QuarkConfig};
use crate::error::QuarkError;
use crate::exclude::ExcludeList;
use crate::fnmatch::Glob;
use crate::fused::FusedModules;
use crate::names::NameMapper;
use crate::scheme::{LayerScheme, recognise};

/// The module type Quark records for every linear layer of these models (`torch.nn.Linear`),
/// the key [`SchemeResolver::resolve`] looks up in `layer_type_quant_config`.
pub const LINEAR: &str = "Linear";

/// The MLP projections of an expert, in checkpoint order.
const EXPERT_PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Where a layer's scheme came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SpecSource {
    /// An `exclude` entry (as listed after mapping and expansion) matched the layer.
    Excluded {
        /// The entry.
        entry: String,
    },
    /// A `layer_quant_config` pattern matched.
    LayerPattern {
        /// The pattern as written in the config.
        pattern: String,
    },
    /// The layer's module type is a `layer_type_quant_config` key.
    LayerType {
        /// The module type.
        module_type: String,
    },
    /// `global_quant_config`.
    Global,
    /// Nothing applies (no global spec): the layer is not quantized.
    NoSpec,
    /// A fused module: each shard's own source, in shard order.
    Fused {
        /// `(shard name, its source)`.
        shards: Vec<(String, SpecSource)>,
    },
}

/// A layer's scheme and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// How the layer is stored and computed.
    pub scheme: LayerScheme,
    /// Which part of the config decided it.
    pub source: SpecSource,
}

/// Whether a MoE layer's shared expert can run as one more routed-expert slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SharedExperts {
    /// Every shared projection has the routed experts' scheme.
    Compatible,
    /// They differ; the reason names the first projection that does.
    Incompatible(SharedExpertsMismatch),
}

/// Why a shared expert does not have the routed experts' scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SharedExpertsMismatch {
    /// An exclude entry keeps the shared projection unquantized while routed experts are not.
    Excluded {
        /// The shared projection.
        layer: String,
        /// The exclude entry that matched it.
        entry: String,
        /// The routed experts' scheme.
        routed: LayerScheme,
    },
    /// No spec applies to the shared projection (no matching pattern, no global spec).
    NoSpec {
        /// The shared projection.
        layer: String,
        /// The routed experts' scheme.
        routed: LayerScheme,
    },
    /// Both are specified, differently.
    DifferentScheme {
        /// The shared projection.
        layer: String,
        /// Its scheme.
        shared: LayerScheme,
        /// The routed experts' scheme.
        routed: LayerScheme,
    },
}

impl fmt::Display for SharedExpertsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Excluded {
                layer,
                entry,
                routed,
            } => write!(
                f,
                "{layer} is excluded from quantization by {entry:?} while routed experts are {routed:?}"
            ),
            Self::NoSpec { layer, routed } => write!(
                f,
                "{layer} has no quantization spec while routed experts are {routed:?}"
            ),
            Self::DifferentScheme {
                layer,
                shared,
                routed,
            } => write!(
                f,
                "{layer} is {shared:?} while routed experts are {routed:?}"
            ),
        }
    }
}

/// Answers "how is this layer stored?" for one model instance.
///
/// Layer names are the model's names, i.e. the output of the [`NameMapper`]. The mapper is
/// applied to the literal `exclude` entries and to the `layer_quant_config` patterns (SGLang
/// maps only the exclude list, so a wrapper's patterns silently stop matching there); `re:`
/// entries are matched as written.
#[derive(Debug, Clone)]
pub struct SchemeResolver {
    exclude: ExcludeList,
    /// `(mapped pattern, pattern as written, spec)`.
    layer_patterns: Vec<(Glob, String, LayerSpec)>,
    layer_types: Vec<(String, LayerSpec)>,
    global: Option<LayerSpec>,
    fused: FusedModules,
}

impl SchemeResolver {
    /// Builds a resolver. A quantized KV cache (`export.kv_cache_group` or
    /// `kv_cache_quant_config` non-empty) is an error: nothing downstream implements it.
    pub fn new(
        config: QuarkConfig,
        fused: FusedModules,
        mapper: &NameMapper,
    ) -> Result<Self, QuarkError> {
        if !config.export.kv_cache_group.is_empty() {
            return Err(QuarkError::UnsupportedKvCache {
                field: "export.kv_cache_group",
            });
        }
        if !config.kv_cache_quant_config.is_empty() {
            return Err(QuarkError::UnsupportedKvCache {
                field: "kv_cache_quant_config",
            });
        }
        Ok(Self {
            exclude: config.exclude.expanded(mapper),
            layer_patterns: config
                .layer_quant_config
                .into_iter()
                .map(|(pattern, spec)| (Glob::new(&mapper.map(&pattern)), pattern, spec))
                .collect(),
            layer_types: config.layer_type_quant_config,
            global: config.global_quant_config,
            fused,
        })
    }

    /// The exclude list after mapping and expansion.
    pub fn exclude(&self) -> &ExcludeList {
        &self.exclude
    }

    /// The scheme of a linear layer, e.g. `model.layers.3.mlp.experts.7.up_proj`.
    pub fn scheme_for(&self, layer: &str) -> Result<LayerScheme, QuarkError> {
        Ok(self.resolve(layer)?.scheme)
    }

    /// The scheme of a linear layer and where it came from.
    pub fn resolve(&self, layer: &str) -> Result<Resolution, QuarkError> {
        self.resolve_module(layer, LINEAR)
    }

    /// The scheme of a layer of the given module type (the `layer_type_quant_config` key).
    ///
    /// A fused module resolves shard by shard; shards with different schemes are an error.
    pub fn resolve_module(&self, layer: &str, module_type: &str) -> Result<Resolution, QuarkError> {
        let Some(shards) = self.fused.shards(layer) else {
            return self.resolve_one(layer, module_type);
        };
        let mut resolved: Vec<(String, Resolution)> = Vec::with_capacity(shards.len());
        for shard in shards {
            let resolution = self.resolve_one(&shard, module_type)?;
            if let Some((first, first_resolution)) = resolved.first()
                && first_resolution.scheme != resolution.scheme
            {
                return Err(QuarkError::FusedShardsDisagree {
                    layer: layer.to_owned(),
                    first: first.clone(),
                    first_scheme: first_resolution.scheme,
                    other: shard,
                    other_scheme: resolution.scheme,
                });
            }
            resolved.push((shard, resolution));
        }
        let scheme = resolved
            .first()
            .map_or(LayerScheme::Unquantized, |(_, r)| r.scheme);
        Ok(Resolution {
            scheme,
            source: SpecSource::Fused {
                shards: resolved.into_iter().map(|(s, r)| (s, r.source)).collect(),
            },
        })
    }

    fn resolve_one(&self, layer: &str, module_type: &str) -> Result<Resolution, QuarkError> {
        if let Some(entry) = self.exclude.matching(layer) {
            return Ok(Resolution {
                scheme: LayerScheme::Unquantized,
                source: SpecSource::Excluded {
                    entry: entry.to_owned(),
                },
            });
        }
        let (spec, source, field) = if let Some((_, pattern, spec)) = self
            .layer_patterns
            .iter()
            .find(|(glob, _, _)| glob.matches(layer))
        {
            (
                spec,
                SpecSource::LayerPattern {
                    pattern: pattern.clone(),
                },
                format!("layer_quant_config[{pattern:?}]"),
            )
        } else if let Some((_, spec)) = self.layer_types.iter().find(|(t, _)| t == module_type) {
            (
                spec,
                SpecSource::LayerType {
                    module_type: module_type.to_owned(),
                },
                format!("layer_type_quant_config[{module_type:?}]"),
            )
        } else if let Some(spec) = &self.global {
            (spec, SpecSource::Global, "global_quant_config".to_owned())
        } else {
            return Ok(Resolution {
                scheme: LayerScheme::Unquantized,
                source: SpecSource::NoSpec,
            });
        };
        let scheme = recognise(spec).map_err(|reason| QuarkError::UnsupportedScheme {
            layer: layer.to_owned(),
            source_field: field,
            reason,
            spec: serde_json::to_string(spec).unwrap_or_else(|e| format!("<unprintable: {e}>")),
        })?;
        Ok(Resolution { scheme, source })
    }

    /// The one scheme of every routed expert projection
    /// `{layer_prefix}.mlp.experts.{0..n_routed}.{gate,up,down}_proj`: the fused MoE kernels
    /// take one format per layer, so experts or projections that differ are an error naming
    /// the first pair that does.
    pub fn routed_experts_scheme(
        &self,
        layer_prefix: &str,
        n_routed: usize,
    ) -> Result<LayerScheme, QuarkError> {
        let mut first: Option<(String, LayerScheme)> = None;
        for expert in 0..n_routed {
            for projection in EXPERT_PROJECTIONS {
                let name = format!("{layer_prefix}.mlp.experts.{expert}.{projection}");
                let scheme = self.scheme_for(&name)?;
                match &first {
                    None => first = Some((name, scheme)),
                    Some((first_name, first_scheme)) if *first_scheme != scheme => {
                        return Err(QuarkError::ExpertsDisagree {
                            first: first_name.clone(),
                            first_scheme: *first_scheme,
                            other: name,
                            other_scheme: scheme,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        first
            .map(|(_, scheme)| scheme)
            .ok_or(QuarkError::NoRoutedExperts {
                layer: layer_prefix.to_owned(),
            })
    }

    /// Whether the shared expert of the MoE block of decoder layer `layer_prefix` (e.g.
    /// `model.layers.3`) has exactly the routed experts' scheme, projection by projection:
    /// `{layer_prefix}.mlp.shared_experts.{p}` against `{layer_prefix}.mlp.experts.0.{p}` for
    /// `p` in `gate_proj`, `up_proj`, `down_proj`. Whether the routed experts agree among
    /// themselves is [`Self::routed_experts_scheme`]'s question.
    pub fn shared_experts_compatible(
        &self,
        layer_prefix: &str,
    ) -> Result<SharedExperts, QuarkError> {
        for projection in EXPERT_PROJECTIONS {
            let shared_name = format!("{layer_prefix}.mlp.shared_experts.{projection}");
            let shared = self.resolve(&shared_name)?;
            let routed = self
                .resolve(&format!("{layer_prefix}.mlp.experts.0.{projection}"))?
                .scheme;
            if shared.scheme == routed {
                continue;
            }
            let mismatch = match shared.source {
                SpecSource::Excluded { entry } => SharedExpertsMismatch::Excluded {
                    layer: shared_name,
                    entry,
                    routed,
                },
                SpecSource::NoSpec => SharedExpertsMismatch::NoSpec {
                    layer: shared_name,
                    routed,
                },
                _ => SharedExpertsMismatch::DifferentScheme {
                    layer: shared_name,
                    shared: shared.scheme,
                    routed,
                },
            };
            return Ok(SharedExperts::Incompatible(mismatch));
        }
        Ok(SharedExperts::Compatible)
    }
}
