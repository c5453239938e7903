//! Kernels: the source convention, run-time compilation with a disk cache, offline checks,
//! and launching.

pub(crate) mod cache;
pub(crate) mod compile;
pub(crate) mod launch;
pub(crate) mod nvrtc;
pub(crate) mod prelude;
pub(crate) mod resources;
pub(crate) mod source;
