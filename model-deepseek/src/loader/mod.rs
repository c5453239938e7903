//! The strict safetensors loader: memory-maps a checkpoint, validates every header, checks every
//! tensor against what the config says the model needs, decides shared-expert fusion, and fills
//! the model's weights.
//!
//! Three stages, each usable alone: [`plan`] (config, quantization, fusion decisions, the
//! expected tensors, and the accounting of the checkpoint against them: headers and scale bytes
//! only), [`inspect`] (the plan as a report, problems listed rather than raised) and [`load`]
//! (the plan, then the weights).

pub mod catalog;
pub mod checkpoint;
pub mod error;
pub mod header;
pub mod ledger;
mod materialize;
pub mod names;
pub mod quant;
mod report;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{CheckpointConfig, Layout, ModelConfig, parse_config};
use crate::fusion::{self, FusionMode, FusionPlan, LayerFormats, MoeFacts};
use crate::model::{ForwardOptions, Model};
use moe_kernels::reference::ActivationMode;

pub use checkpoint::Checkpoint;
pub use error::{HeaderError, LoadError, TensorProblem};
pub use header::Dtype;
pub use ledger::{Accounting, Expected, Skipped};
pub use names::Prefix;
pub use quant::{LinearFormat, QuantPlan};
pub use report::{LayerReport, LoadReport};

/// How W4A4 layers treat their input activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// As the checkpoint's input spec says: dynamic MXFP4 per 32 with its scale rule.
    #[default]
    Quantized,
    /// Unquantized (f32 on CPU; `bf16` on the command line): weight-only MXFP4.
    Unquantized,
}

/// Options of a load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// How shared-expert fusion is decided.
    pub fusion: FusionMode,
    /// How W4A4 layers treat their input activations.
    pub activations: Activations,
}

/// Load progress, reported once per decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Steps done.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// A loaded model, ready to run, and the report of how it was loaded.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model (config, weights, forward options).
    pub model: Model,
    /// Schemes, fusion decisions, skipped tensors.
    pub report: LoadReport,
}

/// Everything decided before any weight is read.
#[derive(Debug)]
pub struct Plan {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The parsed config.
    pub config: CheckpointConfig,
    /// The raw `config.json`, for reporting what it names.
    pub raw_config: serde_json::Value,
    /// The memory-mapped checkpoint.
    pub checkpoint: Checkpoint,
    /// The name prefix scheme the checkpoint uses.
    pub prefix: Prefix,
    /// The quantization config, resolved per module.
    pub quant: QuantPlan,
    /// Every weight the model needs.
    pub expected: Vec<Expected>,
    /// Fusion decisions.
    pub fusion: FusionPlan,
    /// The checkpoint checked against `expected`.
    pub accounting: Accounting,
}

fn read_config(dir: &Path) -> Result<(CheckpointConfig, serde_json::Value), LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoadError::Config(format!("config.json: {e}")))?;
    let config = parse_config(&text).map_err(|e| LoadError::Config(e.to_string()))?;
    Ok((config, raw))
}

/// The text config object: `text_config` for the Kimi-K2.5 wrapper, else the root.
fn text_config(raw: &serde_json::Value, layout: Layout) -> &serde_json::Value {
    match layout {
        Layout::KimiK25 => raw.get("text_config").unwrap_or(raw),
        Layout::DeepseekV3 => raw,
    }
}

/// Decides everything about loading `dir` without reading weights: the config, each module's
/// format, fusion, and the accounting of the checkpoint's tensors.
pub fn plan(dir: &Path, options: &LoadOptions) -> Result<Plan, LoadError> {
    let (config, raw_config) = read_config(dir)?;
    let quant = QuantPlan::new(config.quantization.as_ref(), config.layout)?;
    let checkpoint = Checkpoint::open(dir)?;
    let prefix = Prefix::detect(config.layout, checkpoint.tensors()).map_err(LoadError::Config)?;
    let model = &config.model;
    let mut expected = Vec::new();
    let mut specs = catalog::globals(model);
    for layer in 0..model.num_hidden_layers {
        specs.extend(catalog::layer(model, layer));
    }
    for spec in specs {
        let name = prefix.checkpoint_name(&spec.name);
        let format = match spec.role {
            catalog::Role::Linear => quant.linear_format(&name)?,
            _ => LinearFormat::Bf16,
        };
        if format != LinearFormat::Bf16 && spec.shape[1] % 32 != 0 {
            return Err(LoadError::Quantization(format!(
                "{name}: MXFP4 needs input features in multiples of 32, the config gives {}",
                spec.shape[1]
            )));
        }
        expected.push(Expected {
            canonical: spec.name,
            name,
            role: spec.role,
            shape: spec.shape,
            format,
        });
    }
    let fusion = decide_fusion(
        model,
        &raw_config,
        config.layout,
        &quant,
        prefix,
        options.fusion,
    )?;
    let accounting = ledger::account(&checkpoint, &expected, model, config.layout, prefix);
    Ok(Plan {
        dir: dir.to_path_buf(),
        config,
        raw_config,
        checkpoint,
        prefix,
        quant,
        expected,
        fusion,
        accounting,
    })
}

fn decide_fusion(
    model: &ModelConfig,
    raw: &serde_json::Value,
    layout: Layout,
    quant: &QuantPlan,
    prefix: Prefix,
    mode: FusionMode,
) -> Result<FusionPlan, LoadError> {
    // The parsed config fills a default rsf; fusion needs to know the checkpoint states one.
    let rsf_present = text_config(raw, layout)
        .get("routed_scaling_factor")
        .is_some_and(serde_json::Value::is_number);
    let facts = MoeFacts {
        n_routed_experts: model.n_routed_experts,
        n_shared_experts: model.n_shared_experts,
        moe_intermediate_size: model.moe_intermediate_size,
        norm_topk_prob: model.norm_topk_prob,
        routed_scaling_factor: rsf_present.then_some(f64::from(model.routed_scaling_factor)),
    };
    let layers = (0..model.num_hidden_layers)
        .filter(|&l| model.is_moe_layer(l))
        .map(|layer| {
            let m = format!("model.layers.{layer}.mlp.");
            let module = |canonical: String| prefix.checkpoint_name(&canonical);
            let routed: Vec<String> = ["gate_proj", "up_proj", "down_proj"]
                .iter()
                .flat_map(|p| (0..model.n_routed_experts).map(move |e| format!("experts.{e}.{p}")))
                .map(|s| module(format!("{m}{s}")))
                .collect();
            let shared: Vec<String> = ["gate_proj", "up_proj", "down_proj"]
                .iter()
                .map(|p| module(format!("{m}shared_experts.{p}")))
                .collect();
            quant.layer_formats(layer, &routed, &shared)
        })
        .collect::<Result<Vec<LayerFormats>, LoadError>>()?;
    let plan = fusion::decide(mode, &facts, &layers).map_err(|e| LoadError::Fusion(e.0))?;
    tracing::info!(mode = %plan.mode, fused = plan.model.fused, "shared-expert fusion: {}", plan.model.reason);
    Ok(plan)
}

/// Checks `dir` without loading weights, listing every problem found in the report.
pub fn inspect(dir: &Path, options: &LoadOptions) -> Result<LoadReport, LoadError> {
    let plan = plan(dir, options)?;
    Ok(LoadReport::new(&plan, options))
}

/// Loads `dir` for the forward pass.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<LoadedModel, LoadError> {
    load_with_progress(dir, options, &mut |_| {})
}

/// Loads `dir`, calling `progress` as layers are read (a server draws a bar with it).
pub fn load_with_progress(
    dir: &Path,
    options: &LoadOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<LoadedModel, LoadError> {
    let plan = plan(dir, options)?;
    if !plan.accounting.problems.is_empty() {
        return Err(LoadError::Tensors {
            problems: plan.accounting.problems.clone(),
        });
    }
    let report = LoadReport::new(&plan, options);
    let weights = materialize::Builder::new(
        &plan.checkpoint,
        &plan.expected,
        &plan.config.model,
        &plan.fusion,
    )
    .build(progress)?;
    tracing::info!(
        dir = %dir.display(),
        tensors = plan.accounting.used,
        bytes = plan.checkpoint.data_bytes(),
        "checkpoint loaded"
    );
    let forward = ForwardOptions {
        activations: match options.activations {
            Activations::Quantized => ActivationMode::Quantized,
            Activations::Unquantized => ActivationMode::Unquantized,
        },
    };
    let model = Model::new(plan.config.model, weights, forward)
        .map_err(|e| LoadError::Config(e.to_string()))?;
    Ok(LoadedModel { model, report })
}
