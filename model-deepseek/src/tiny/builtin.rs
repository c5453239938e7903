//! The built-in model: a tiny checkpoint generated once into the user's cache directory, served
//! by `mxserve serve` / `cargo xtask serve` when no model is named.

use std::path::{Path, PathBuf};

use super::{TinyError, TinySpec, io_err, write_tiny_checkpoint};

/// Seed of the built-in model's weights.
pub const BUILTIN_SEED: u64 = 20_261_127;

/// Bumped whenever the generator's output changes, so a stale cached copy is never served.
const GENERATOR_VERSION: u32 = 1;

/// The built-in model's spec: DeepSeek-V3 layout, 256 experts, MXFP4 shared expert.
pub fn builtin_spec() -> TinySpec {
    TinySpec {
        seed: BUILTIN_SEED,
        ..TinySpec::default()
    }
}

/// Where the built-in model lives: `$XDG_CACHE_HOME/mxserve/builtin-v<N>-<crate version>`, or
/// `~/.cache/mxserve/…` when `XDG_CACHE_HOME` is unset.
pub fn builtin_model_dir() -> Result<PathBuf, TinyError> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or(TinyError::NoCacheDir)?;
    Ok(cache.join("mxserve").join(format!(
        "builtin-v{GENERATOR_VERSION}-{}",
        env!("CARGO_PKG_VERSION")
    )))
}

/// Makes sure the built-in model exists in the cache and returns its directory.
pub fn ensure_builtin_model() -> Result<PathBuf, TinyError> {
    let dir = builtin_model_dir()?;
    ensure_tiny_checkpoint(&dir, &builtin_spec())?;
    Ok(dir)
}

/// Writes `spec` to `dir` unless `dir` already exists. The checkpoint is written to a sibling
/// temporary directory and renamed into place, so a reader never sees half a checkpoint and two
/// processes racing both end up with one complete copy.
pub fn ensure_tiny_checkpoint(dir: &Path, spec: &TinySpec) -> Result<(), TinyError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let file_name = dir
        .file_name()
        .map_or_else(|| "tiny".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{file_name}.tmp-{}-{stamp}", std::process::id()));
    let written = write_tiny_checkpoint(&tmp, spec);
    let result = written.and_then(|()| match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process finished first: its copy is identical (same spec, same seed).
        Err(_) if dir.is_dir() => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    });
    if tmp.exists() {
        // Best effort: a leftover temporary directory is harmless, the error that matters is
        // the one returned above.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
