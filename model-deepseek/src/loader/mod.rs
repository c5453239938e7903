//! The strict safetensors loader: memory-maps a checkpoint, validates every header, checks every
//! tensor against what the config says the model needs, and fills the model's weights.

pub mod checkpoint;
pub mod error;
pub mod header;

pub use checkpoint::Checkpoint;
pub use error::{HeaderError, LoadError, TensorProblem};
pub use header::Dtype;
