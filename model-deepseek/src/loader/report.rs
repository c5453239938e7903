//! The load report: what `mxserve inspect` prints and the server shows at `/v1/models`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::fusion::FusionPlan;

use super::catalog::Role;
use super::error::TensorProblem;
use super::ledger::Skipped;
use super::names::Prefix;
use super::{ActivationMode, LoadOptions, Plan};

/// The formats of one decoder layer's modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerReport {
    /// Decoder layer index.
    pub layer: usize,
    /// `dense` or `moe`.
    pub kind: &'static str,
    /// Module (relative to the layer, expert indices as `*`) → its format; a module group whose
    /// members differ lists each distinct format.
    pub schemes: BTreeMap<String, String>,
}

/// Everything a user needs to trust a checkpoint before serving it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadReport {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// `architectures[0]` of `config.json` (and of `text_config` for a wrapper).
    pub architecture: String,
    /// The tensor-name prefix scheme found.
    pub layout: Prefix,
    /// The quantization method, or `none`.
    pub quantization: String,
    /// How W4A4 activations are treated in this load: `quantized` or `unquantized`.
    pub activations: &'static str,
    /// Decoder layers run, MoE layers among them, routed and shared experts.
    pub shape: ModelShape,
    /// Per-layer module formats.
    pub layers: Vec<LayerReport>,
    /// Fusion decisions with reasons.
    pub fusion: FusionPlan,
    /// Tensors used by the model.
    pub tensors_used: usize,
    /// Tensors skipped, by rule.
    pub skipped: Vec<Skipped>,
    /// Every problem found; a checkpoint with problems cannot be served.
    pub problems: Vec<TensorProblem>,
    /// Bytes of tensor data in the checkpoint.
    pub checkpoint_bytes: usize,
}

/// The model's size in the terms the fusion policy uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: usize,
    /// MoE layers among them.
    pub moe_layers: usize,
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Shared experts per MoE layer.
    pub n_shared_experts: usize,
    /// Routed experts per token.
    pub experts_per_token: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
}

fn architecture(raw: &serde_json::Value) -> String {
    let first = |v: &serde_json::Value| {
        v.get("architectures")
            .and_then(|a| a.get(0))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    match raw.get("text_config") {
        Some(text) => format!("{} (text_config: {})", first(raw), first(text)),
        None => first(raw),
    }
}

/// Collapses `experts.17.gate_proj` to `experts.*.gate_proj`.
fn group_key(relative: &str) -> String {
    relative
        .split('.')
        .map(|part| {
            if part.chars().all(|c| c.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl LoadReport {
    /// The report of a plan.
    pub fn new(plan: &Plan, options: &LoadOptions) -> Self {
        let c = &plan.config.model;
        let mut layers: Vec<LayerReport> = (0..c.num_hidden_layers)
            .map(|layer| LayerReport {
                layer,
                kind: if c.is_moe_layer(layer) {
                    "moe"
                } else {
                    "dense"
                },
                schemes: BTreeMap::new(),
            })
            .collect();
        let mut groups: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
        for e in plan.expected.iter().filter(|e| e.role == Role::Linear) {
            let Some(rest) = e.canonical.strip_prefix("model.layers.") else {
                continue;
            };
            let Some((layer, relative)) = rest.split_once('.') else {
                continue;
            };
            let Ok(layer) = layer.parse::<usize>() else {
                continue;
            };
            let formats = groups.entry((layer, group_key(relative))).or_default();
            let f = e.format.describe();
            if !formats.contains(&f) {
                formats.push(f);
            }
        }
        for ((layer, key), formats) in groups {
            if let Some(report) = layers.get_mut(layer) {
                report.schemes.insert(key, formats.join(" | "));
            }
        }
        Self {
            dir: plan.dir.clone(),
            architecture: architecture(&plan.raw_config),
            layout: plan.prefix,
            quantization: plan.quant.describe(),
            activations: match options.activations {
                ActivationMode::Quantized => "quantized",
                ActivationMode::Unquantized => "unquantized",
            },
            shape: ModelShape {
                layers: c.num_hidden_layers,
                moe_layers: (0..c.num_hidden_layers)
                    .filter(|&l| c.is_moe_layer(l))
                    .count(),
                n_routed_experts: c.n_routed_experts,
                n_shared_experts: c.n_shared_experts,
                experts_per_token: c.num_experts_per_tok,
                vocab_size: c.vocab_size,
                hidden_size: c.hidden_size,
            },
            layers,
            fusion: plan.fusion.clone(),
            tensors_used: plan.accounting.used,
            skipped: plan.accounting.skipped.clone(),
            problems: plan.accounting.problems.clone(),
            checkpoint_bytes: plan.checkpoint.data_bytes(),
        }
    }

    /// Whether the checkpoint can be served as it is.
    pub fn servable(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "checkpoint   {}", self.dir.display());
        let _ = writeln!(w, "architecture {}", self.architecture);
        let _ = writeln!(w, "layout       {:?}", self.layout);
        let _ = writeln!(w, "quantization {}", self.quantization);
        let _ = writeln!(w, "activations  {}", self.activations);
        let m = &self.shape;
        let _ = writeln!(
            w,
            "model        {} layers ({} MoE), {} routed + {} shared experts, top-{}, hidden {}, vocab {}",
            m.layers,
            m.moe_layers,
            m.n_routed_experts,
            m.n_shared_experts,
            m.experts_per_token,
            m.hidden_size,
            m.vocab_size
        );
        let _ = writeln!(
            w,
            "tensors      {} used, {} bytes of data",
            self.tensors_used, self.checkpoint_bytes
        );
        let _ = writeln!(w, "\nlayer schemes:");
        // Runs of layers with identical schemes print once (a 61-layer model has two runs).
        for run in self
            .layers
            .chunk_by(|a, b| a.kind == b.kind && a.schemes == b.schemes)
        {
            let (first, last) = (run[0].layer, run[run.len() - 1].layer);
            let span = if first == last {
                format!("layer {first}")
            } else {
                format!("layers {first}-{last}")
            };
            let _ = writeln!(w, "  {span} ({}):", run[0].kind);
            for (module, format) in &run[0].schemes {
                let _ = writeln!(w, "    {module:<32} {format}");
            }
        }
        let _ = writeln!(w, "\nshared-expert fusion (--fusion {}):", self.fusion.mode);
        let _ = writeln!(
            w,
            "  model: {} — {}",
            if self.fusion.model.fused { "on" } else { "off" },
            self.fusion.model.reason
        );
        for l in &self.fusion.layers {
            let _ = writeln!(
                w,
                "  layer {}: {} — {}",
                l.layer,
                if l.decision.fused { "on" } else { "off" },
                l.decision.reason
            );
        }
        let _ = writeln!(w, "\nskipped tensors:");
        if self.skipped.is_empty() {
            let _ = writeln!(w, "  none");
        }
        for sk in &self.skipped {
            let _ = writeln!(
                w,
                "  {} tensors ({} bytes): {}",
                sk.tensors, sk.bytes, sk.rule
            );
        }
        let _ = writeln!(w, "\nproblems:");
        if self.problems.is_empty() {
            let _ = writeln!(w, "  none: the checkpoint can be served");
        }
        for p in &self.problems {
            let _ = writeln!(w, "  {p}");
        }
        s
    }
}
