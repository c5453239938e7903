//! Fused modules: one module of the model that is several layers of the checkpoint.
//!
//! A model that fuses `q_a_proj` and `kv_a_proj_with_mqa` into `fused_qkv_a_proj_with_mqa`
//! must still resolve each part's scheme from the names Quark saw. The table is a value owned
//! by whoever builds a resolver — never shared mutable state (SGLang keeps it in a class-level
//! dict that leaks between model instances).

use serde::Serialize;

/// Fused module name (the last name component) → the shard names it replaces, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FusedModules {
    entries: Vec<(String, Vec<String>)>,
}

impl FusedModules {
    /// A table from `(fused, shards)` pairs, e.g.
    /// `[("gate_up_proj", &["gate_proj", "up_proj"])]`.
    pub fn new(entries: &[(&str, &[&str])]) -> Self {
        Self {
            entries: entries
                .iter()
                .map(|(fused, shards)| {
                    (
                        (*fused).to_owned(),
                        shards.iter().map(|s| (*s).to_owned()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// The full shard names of `layer` if its last component is a fused module, e.g.
    /// `model.layers.0.mlp.gate_up_proj` → `[….mlp.gate_proj, ….mlp.up_proj]`.
    pub fn shards(&self, layer: &str) -> Option<Vec<String>> {
        let (parent, last) = match layer.rsplit_once('.') {
            Some((parent, last)) => (Some(parent), last),
            None => (None, layer),
        };
        let (_, shards) = self.entries.iter().find(|(fused, _)| fused == last)?;
        Some(
            shards
                .iter()
                .map(|shard| match parent {
                    Some(parent) => format!("{parent}.{shard}"),
                    None => shard.clone(),
                })
                .collect(),
        )
    }
}
