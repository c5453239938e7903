//! Putting a server together from a checkpoint directory: tokenizer, model, engine thread,
//! shared state. Used by `mxserve serve`, the tests and the load benchmark.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::gpu::{
    GpuModel, GpuModelError, GpuOptions, KV_BLOCK_TOKENS, KvBudget, MemoryPlan, context_length,
};
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
    /// KV-cache capacity in tokens; default: `max_running` full contexts (on a GPU: at most
    /// what the device's free memory holds; see [`gpu_kv_budget`]).
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
    let limits = options.limits;
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
        Some(plan_gpu(options, &load_options, device)?)
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
                graphs: true,
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

/// The GPU KV budget for `options`, checked against the device's free memory from the
/// checkpoint's load plan (before any weight is read); see [`gpu_kv_budget`].
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
    let config = &plan.config.model;
    let context = context_length(config);
    let gpu_error = |source: GpuModelError| LaunchError::Gpu {
        device: device.id().to_string(),
        source,
    };
    let (free, _) = device
        .memory_info()
        .map_err(|e| gpu_error(GpuModelError::from(e)))?;
    let batch = options.limits.max_batch_tokens;
    let one_block = MemoryPlan::for_checkpoint(&plan, KvBudget { blocks: 1 }, batch)
        .map_err(|e| gpu_error(e.into()))?;
    let kv = gpu_kv_budget(
        options.kv_capacity_tokens,
        options.limits.max_running,
        context,
        one_block.kv_blocks_fitting(config, free),
    )?;
    let memory = MemoryPlan::for_checkpoint(&plan, kv, batch).map_err(|e| gpu_error(e.into()))?;
    memory
        .check_fits(&device.id().to_string(), free)
        .map_err(|e| gpu_error(e.into()))?;
    tracing::info!(
        kv_capacity_tokens = kv.tokens(),
        kv_blocks = kv.blocks,
        kv_block_tokens = KV_BLOCK_TOKENS,
        kv_cache_bytes = memory.kv_cache,
        context_length = context,
        needed_bytes = memory.total(),
        free_bytes = free,
        "GPU KV cache: a pool of blocks shared by all sequences"
    );
    Ok(kv)
}

/// The GPU KV cache is a pool of blocks of [`KV_BLOCK_TOKENS`] tokens that sequences take as
/// they grow. Its size: `requested` tokens rounded up to whole blocks when given; otherwise
/// `max_running` full contexts, or fewer when the device's free memory holds only
/// `fitting_blocks`. Either way it must hold one full `context`, so every request the API
/// accepts (prompt plus completion up to the context) fits on its own: a requested capacity
/// below that is refused here, a default below it is set to one context, which the memory
/// check then refuses with the numbers.
fn gpu_kv_budget(
    requested: Option<usize>,
    max_running: usize,
    context: usize,
    fitting_blocks: usize,
) -> Result<KvBudget, LaunchError> {
    let one_context = KvBudget::for_tokens(context);
    match requested {
        Some(tokens) if tokens < context => Err(LaunchError::Limits(format!(
            "the GPU KV cache must hold one full context: the KV-cache capacity must be at \
             least {context} tokens, not {tokens}"
        ))),
        Some(tokens) => Ok(KvBudget::for_tokens(tokens)),
        None => {
            let wanted = KvBudget::for_tokens(max_running.saturating_mul(context));
            Ok(KvBudget {
                blocks: wanted.blocks.min(fitting_blocks).max(one_context.blocks),
            })
        }
    }
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

    /// The GPU pool must hold one full context: a capacity below one context is refused by
    /// name before any weight is read or any device memory is asked for.
    #[test]
    fn gpu_kv_capacity_below_one_context_is_refused() {
        let context = 2560;
        let err = gpu_kv_budget(Some(context - 1), 4, context, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("at least {context} tokens")),
            "unexpected error: {err}"
        );
        // One context exactly is enough; capacities round up to whole blocks.
        let kv = gpu_kv_budget(Some(context + 1), 4, context, 0).unwrap();
        assert_eq!(kv.tokens(), (context + 1).next_multiple_of(KV_BLOCK_TOKENS));
        assert!(gpu_kv_budget(Some(context), 4, context, 0).is_ok());
    }

    /// By default the pool is `max_running` contexts, or what the device holds if less, and
    /// never below one context (the memory check refuses that with the numbers).
    #[test]
    fn the_default_gpu_pool_is_capped_by_memory_and_floored_at_one_context() {
        let context: usize = 2560;
        let per_context = context.div_ceil(KV_BLOCK_TOKENS);
        let plenty = gpu_kv_budget(None, 4, context, 1 << 20).unwrap();
        assert_eq!(plenty.blocks, 4 * per_context);
        let tight = gpu_kv_budget(None, 4, context, 2 * per_context + 7).unwrap();
        assert_eq!(tight.blocks, 2 * per_context + 7);
        let starved = gpu_kv_budget(None, 4, context, 3).unwrap();
        assert_eq!(starved.blocks, per_context);
    }
}
