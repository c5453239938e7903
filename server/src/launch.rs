//! Putting a server together from a checkpoint directory: tokenizer, model, engine thread,
//! shared state. Used by `mxserve serve`, the tests and the load benchmark.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadOptions, Progress};

use crate::engine::{self, EngineLimits};
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
}

/// A ready server: its state and its engine thread.
#[derive(Debug)]
pub struct Launched {
    /// The state the HTTP layer serves from.
    pub state: Arc<AppState>,
    /// The engine thread; it ends after shutdown once no sequence is left.
    pub engine_thread: JoinHandle<()>,
}

/// Loads the model in `options.model_dir` and starts its engine; `progress` is called as
/// layers load.
pub fn launch(
    options: &LaunchOptions,
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
    let context_length = model.config().max_position_embeddings;
    let kv_capacity = options
        .kv_capacity_tokens
        .unwrap_or(limits.max_running * context_length);
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
    let metrics = Arc::new(Metrics::default());
    let tokenizer = Arc::new(codec.tokenizer().clone());
    let eos = codec.eos_token_ids().to_vec();
    let (engine, engine_thread) = engine::spawn(
        ModelBackend::new(model, kv_capacity),
        tokenizer,
        eos,
        limits,
        metrics.clone(),
    )?;
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
    })
}

/// The directory's last component, which is what `--model DIR` users will expect to type.
fn default_model_id(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
