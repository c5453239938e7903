//! Typed errors of the loader.

use std::path::PathBuf;

/// A safetensors header that does not describe its file honestly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct HeaderError {
    /// The file whose header is wrong.
    pub file: PathBuf,
    /// What is wrong, naming the tensor where there is one.
    pub problem: String,
}

/// A disagreement between the checkpoint and what the config says it must hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TensorProblem {
    /// A tensor the model needs is absent.
    #[error("missing tensor {name}: expected {expected}")]
    Missing {
        /// Checkpoint name.
        name: String,
        /// The dtype and shape the model needs.
        expected: String,
    },
    /// A tensor no rule uses or skips.
    #[error("unexpected tensor {name} ({dtype} {shape:?}): {expected}")]
    Unexpected {
        /// Checkpoint name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What the loader expected instead (or why nothing matches).
        expected: String,
    },
    /// A tensor with the wrong dtype or shape.
    #[error("tensor {name} is {found}, expected {expected}")]
    Mismatch {
        /// Checkpoint name.
        name: String,
        /// The dtype and shape in the checkpoint.
        found: String,
        /// The dtype and shape the model needs.
        expected: String,
    },
    /// A tensor whose values cannot be used (e.g. a NaN scale).
    #[error("tensor {name}: {problem}")]
    BadValue {
        /// Checkpoint name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no safetensors weights we know how to find.
    #[error(
        "{}: no model.safetensors or model.safetensors.index.json found",
        dir.display()
    )]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A malformed safetensors header.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A malformed or inconsistent `model.safetensors.index.json`.
    #[error("{}: {problem}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The same tensor name appears in two files.
    #[error("tensor {name} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor.
        name: String,
        /// The file it was first found in.
        first: PathBuf,
        /// The file it was found in again.
        second: PathBuf,
    },
    /// `config.json` is unreadable, or names something we cannot serve.
    #[error("config: {0}")]
    Config(String),
    /// The quantization config cannot be honoured.
    #[error("quantization: {0}")]
    Quantization(String),
    /// Fusion was forced on (`--fusion on`) but a numerical check failed.
    #[error("shared-expert fusion forced on, but {0}")]
    Fusion(String),
    /// The checkpoint disagrees with the config; every problem found is listed.
    #[error("{} problem(s) in the checkpoint:\n  {}", problems.len(), list(problems))]
    Tensors {
        /// Every problem found, in checkpoint order.
        problems: Vec<TensorProblem>,
    },
}

fn list(problems: &[TensorProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}
