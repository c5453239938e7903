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

use crate::ActivationMode;
use crate::config::{CheckpointConfig, Layout, ModelConfig, parse_config};
use crate::fusion::{self, FusionMode, FusionPlan, LayerFormats, MoeFacts};
use crate::model::{ForwardOptions, Model};

pub use checkpoint::Checkpoint;
pub use error::{HeaderError, LoadError, TensorProblem};
pub use header::Dtype;
pub use ledger::{Accounting, Expected, Skipped};
pub use names::Prefix;
pub use quant::{LinearFormat, QuantPlan};
pub use report::{LayerReport, LoadReport};

/// Options of a load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// How shared-expert fusion is decided.
    pub fusion: FusionMode,
    /// Whether W4A4 layers quantize their input activations as the checkpoint says
    /// (`Quantized`) or keep them unquantized (`Unquantized`: weight-only MXFP4).
    pub activations: ActivationMode,
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
    let checkpoint = Checkpoint::open(dir)?;
    let prefix = Prefix::detect(config.layout, checkpoint.tensors()).map_err(LoadError::Config)?;
    let quant = QuantPlan::new(config.quantization.as_ref(), prefix)?;
    let model = &config.model;
    let mut specs = catalog::globals(model);
    for layer in 0..model.num_hidden_layers {
        quant.check_layer(model, layer)?;
        specs.extend(catalog::layer(model, layer));
    }
    let mut expected = Vec::with_capacity(specs.len());
    for spec in specs {
        let format = match spec.role {
            catalog::Role::Linear => quant.linear_format(&spec.name)?,
            _ => LinearFormat::Bf16,
        };
        let name = prefix.checkpoint_name(&spec.name);
        if format != LinearFormat::Bf16 && !spec.shape[1].is_multiple_of(quant_quark::mxfp4::BLOCK)
        {
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
    let fusion = decide_fusion(model, &raw_config, config.layout, &quant, options.fusion)?;
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
    mode: FusionMode,
) -> Result<FusionPlan, LoadError> {
    // The parsed config fills a default rsf; fusion needs to know the checkpoint states one.
    let rsf = text_config(raw, layout)
        .get("routed_scaling_factor")
        .and_then(serde_json::Value::as_f64);
    let facts = MoeFacts {
        n_routed_experts: model.n_routed_experts,
        n_shared_experts: model.n_shared_experts,
        moe_intermediate_size: model.moe_intermediate_size,
        norm_topk_prob: model.norm_topk_prob,
        routed_scaling_factor: rsf,
    };
    let layers = (0..model.num_hidden_layers)
        .filter(|&l| model.is_moe_layer(l))
        .map(|layer| quant.layer_formats(model, layer))
        .collect::<Result<Vec<LayerFormats>, LoadError>>()?;
    let plan = fusion::decide(mode, &facts, &layers).map_err(|e| LoadError::Fusion(e.0))?;
    tracing::info!(mode = %plan.mode, fused = plan.model.fused, "shared-expert fusion: {}", plan.model.reason);
    Ok(plan)
}

/// Decides fusion from the text of a `config.json` alone, without a checkpoint: what
/// [`inspect`] would decide. A Kimi-K2.5 wrapper is taken to use the nested
/// `language_model.model.` spelling (which only matters for literal exclude entries).
pub fn fusion_for_config(config_json: &str, mode: FusionMode) -> Result<FusionPlan, LoadError> {
    let config = parse_config(config_json).map_err(|e| LoadError::Config(e.to_string()))?;
    let raw: serde_json::Value =
        serde_json::from_str(config_json).map_err(|e| LoadError::Config(e.to_string()))?;
    let prefix = match config.layout {
        Layout::DeepseekV3 => Prefix::DeepseekV3,
        Layout::KimiK25 => Prefix::KimiNested,
    };
    let quant = QuantPlan::new(config.quantization.as_ref(), prefix)?;
    for layer in 0..config.model.num_hidden_layers {
        quant.check_layer(&config.model, layer)?;
    }
    decide_fusion(&config.model, &raw, config.layout, &quant, mode)
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
        activations: options.activations,
    };
    let model = Model::new(plan.config.model, weights, forward)
        .map_err(|e| LoadError::Config(e.to_string()))?;
    Ok(LoadedModel { model, report })
}
