//! Putting a server together from a checkpoint directory: tokenizer, model, engine thread,
//! shared state. Used by `mxserve serve`, the tests and the load benchmark.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::gpu::{GpuModel, GpuModelError, GpuOptions, KvBudget, MemoryPlan};
use model_deepseek::loader::{self, LoadOptions, Progress};
use runtime_rocm::Device;

use crate::engine::{self, EngineLimits};
use crate::gpu_backend::GpuBackend;
use crate::metrics::Metrics;
use crate::model_backend::ModelBackend;
use crate::openai::{LayerFusion, ModelCard};
use crate::routes::AppState;
use crate::tokenizer::{TextCodec, TokenizerLoadError};

/// Everything that decides how a model is served.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The checkpoint directory.
    pub model_dir: PathBuf,
    /// The id clients name in `model`; default: the directory's name.
    pub model_id: Option<String>,
    /// Shared-expert fusion.
    pub fusion: FusionMode,
    /// Scheduling limits.
    pub limits: EngineLimits,
    /// KV-cache capacity in tokens; default: `max_running` full contexts.
    pub kv_capacity_tokens: Option<usize>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

/// Why a server could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The tokenizer files are missing or bad.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerLoadError),
    /// The checkpoint did not load.
    #[error("loading {dir}: {source}")]
    Load {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The loader's error.
        source: loader::LoadError,
    },
    /// A limit is zero or inconsistent.
    #[error("{0}")]
    Limits(String),
    /// The engine thread could not start.
    #[error("starting the engine thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The model cannot be placed on, or run on, the GPU.
    #[error("placing the model on {device}: {source}")]
    Gpu {
        /// The device, as `cuda:N` or `rocm:N`.
        device: String,
        /// What went wrong.
        source: GpuModelError,
    },
}

/// A ready server: its state and its engine thread.
#[derive(Debug)]
pub struct Launched {
    /// The state the HTTP layer serves from.
    pub state: Arc<AppState>,
    /// The engine thread; it ends after shutdown once no sequence is left.
    pub engine_thread: JoinHandle<()>,
    /// The device the model runs on, e.g. `cpu` or `cuda:0 (NVIDIA H100 80GB HBM3)`.
    pub device: String,
}

/// Loads the model in `options.model_dir` and starts its engine on the CPU; `progress` is
/// called as layers load.
pub fn launch(
    options: &LaunchOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Launched, LaunchError> {
    launch_on(options, &Device::cpu(), progress)
}

/// As [`launch`], with the model on `device`: the CPU reference forward pass, or a GPU. On a
/// GPU the model's memory is planned from the checkpoint before any weight is read, and a
/// model that does not fit is refused with the numbers.
pub fn launch_on(
    options: &LaunchOptions,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Launched, LaunchError> {
    let dir = &options.model_dir;
    let mut limits = options.limits;
    if limits.max_batch_tokens == 0 || limits.max_running == 0 {
        return Err(LaunchError::Limits(
            "max batch tokens and max running sequences must be at least 1".into(),
        ));
    }
    let codec = Arc::new(TextCodec::load(dir)?);
    let load_options = LoadOptions {
        fusion: options.fusion,
        activations: ActivationMode::Quantized,
    };
    let gpu_error = |source: GpuModelError| LaunchError::Gpu {
        device: device.id().to_string(),
        source,
    };
    let gpu_kv = if device.is_cpu() {
        None
    } else {
        let budget = plan_gpu(options, &load_options, device)?;
        // One slab per running sequence: never run more sequences than there are slabs.
        limits.max_running = limits.max_running.min(budget.sequences);
        Some(budget)
    };
    let loaded = loader::load_with_progress(dir, &load_options, progress).map_err(|source| {
        LaunchError::Load {
            dir: dir.clone(),
            source,
        }
    })?;
    let fusion = loaded
        .report
        .fusion
        .layers
        .iter()
        .map(|l| LayerFusion {
            layer: l.layer,
            fused: l.decision.fused,
            reason: l.decision.reason.clone(),
        })
        .collect();
    let model = loaded.model;
    let metrics = Arc::new(Metrics::default());
    let tokenizer = Arc::new(codec.tokenizer().clone());
    let eos = codec.eos_token_ids().to_vec();
    let (engine, engine_thread) = match gpu_kv {
        None => {
            let kv_capacity = options
                .kv_capacity_tokens
                .unwrap_or(limits.max_running * model.config().max_position_embeddings);
            if kv_capacity == 0 {
                return Err(LaunchError::Limits(
                    "the KV-cache capacity must be at least 1 token".into(),
                ));
            }
            tracing::info!(
                kv_capacity_tokens = kv_capacity,
                kv_max_bytes = kv_capacity * ModelBackend::kv_bytes_per_token(&model),
                "KV cache (memory is taken as sequences grow)"
            );
            let backend = ModelBackend::new(model, kv_capacity);
            engine::spawn(backend, tokenizer, eos, limits, metrics.clone())?
        }
        Some(kv) => {
            let options = GpuOptions {
                kv,
                max_batch_tokens: limits.max_batch_tokens,
            };
            let gpu = GpuModel::new(device, &model, options).map_err(gpu_error)?;
            // The host copy of the weights is no longer needed once they are on the device.
            drop(model);
            tracing::info!(
                device_bytes = gpu.plan().total(),
                "model resident on {}",
                device.id()
            );
            let backend = GpuBackend::new(gpu).map_err(gpu_error)?;
            engine::spawn(backend, tokenizer, eos, limits, metrics.clone())?
        }
    };
    let context_length = engine.context_length();
    let model = ModelCard {
        id: options
            .model_id
            .clone()
            .unwrap_or_else(|| default_model_id(dir)),
        object: "model",
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        owned_by: "mxserve",
        context_length,
        shared_expert_fusion: fusion,
    };
    Ok(Launched {
        state: Arc::new(AppState {
            engine,
            codec,
            metrics,
            model,
            max_body_bytes: options.max_body_bytes,
        }),
        engine_thread,
        device: describe(device),
    })
}

/// The GPU KV budget for `options` (one slab of the model's context per sequence, as many
/// slabs as `max_running`, or as `kv_capacity_tokens` holds), checked against the device's
/// free memory from the checkpoint's load plan.
fn plan_gpu(
    options: &LaunchOptions,
    load_options: &LoadOptions,
    device: &Device,
) -> Result<KvBudget, LaunchError> {
    let dir = &options.model_dir;
    let plan = loader::plan(dir, load_options).map_err(|source| LaunchError::Load {
        dir: dir.clone(),
        source,
    })?;
    let context = plan.config.model.max_position_embeddings;
    let sequences = match options.kv_capacity_tokens {
        Some(tokens) => tokens / context.max(1),
        None => options.limits.max_running,
    };
    if sequences == 0 {
        return Err(LaunchError::Limits(format!(
            "on a GPU the KV cache holds one full context ({context} tokens) per sequence: \
             the KV-cache capacity must be at least {context} tokens"
        )));
    }
    let kv = KvBudget {
        sequences,
        tokens_per_sequence: context,
    };
    let gpu_error = |source: GpuModelError| LaunchError::Gpu {
        device: device.id().to_string(),
        source,
    };
    let (free, _) = device
        .memory_info()
        .map_err(|e| gpu_error(GpuModelError::from(e)))?;
    let memory = MemoryPlan::for_checkpoint(&plan, kv, options.limits.max_batch_tokens)
        .map_err(|e| gpu_error(e.into()))?;
    memory
        .check_fits(&device.id().to_string(), free)
        .map_err(|e| gpu_error(e.into()))?;
    tracing::info!(
        sequences,
        tokens_per_sequence = context,
        needed_bytes = memory.total(),
        free_bytes = free,
        "GPU KV cache: one slab per sequence"
    );
    Ok(kv)
}

/// `cpu`, or the GPU's id and name.
fn describe(device: &Device) -> String {
    if device.is_cpu() {
        "cpu".into()
    } else {
        format!("{} ({})", device.id(), device.info().name)
    }
}

/// The directory's last component, which is what `--model DIR` users will expect to type.
fn default_model_id(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_deepseek::tiny::builtin::{builtin_spec, ensure_tiny_checkpoint};

    fn options(dir: &Path, kv_capacity_tokens: Option<usize>) -> LaunchOptions {
        LaunchOptions {
            model_dir: dir.to_path_buf(),
            model_id: None,
            fusion: FusionMode::Auto,
            limits: EngineLimits {
                max_batch_tokens: 64,
                max_running: 4,
                max_waiting: 4,
            },
            kv_capacity_tokens,
            max_body_bytes: 1 << 20,
        }
    }

    /// The GPU cache is one full-context slab per sequence: a capacity below one context is
    /// refused by name before any weight is read or any device memory is asked for.
    #[test]
    fn gpu_kv_capacity_below_one_context_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny");
        ensure_tiny_checkpoint(&dir, &builtin_spec()).unwrap();
        let load = LoadOptions {
            fusion: FusionMode::Auto,
            activations: ActivationMode::Quantized,
        };
        let context = loader::plan(&dir, &load)
            .unwrap()
            .config
            .model
            .max_position_embeddings;
        let err = plan_gpu(&options(&dir, Some(context - 1)), &load, &Device::cpu())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("at least {context} tokens")),
            "unexpected error: {err}"
        );
    }
}
