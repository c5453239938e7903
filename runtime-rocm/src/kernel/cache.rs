//! On-disk cache of compiled kernels, keyed by (arch, compiler version, source, defines and
//! every other compiler option). Entries carry a checksum; an entry that fails it is treated
//! as missing and overwritten, never as an error.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variable overriding the cache directory.
pub const CACHE_DIR_ENV: &str = "MXSERVE_KERNEL_CACHE";

const MAGIC: &[u8; 8] = b"MXKCACH1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// A directory of compiled code objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    dir: PathBuf,
}

/// The identity of one compilation: a SHA-256 over everything that changes the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Hashes each part with its length, so part boundaries cannot shift.
    pub(crate) fn new<'a>(parts: impl IntoIterator<Item = &'a str>) -> CacheKey {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        CacheKey(hasher.finalize().into())
    }

    /// First 8 bytes in hex, for temporary names.
    pub(crate) fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn file_name(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}.bin")
    }
}

impl KernelCache {
    /// A cache in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// `$MXSERVE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/mxserve/kernels`, else
    /// `$HOME/.cache/mxserve/kernels`; `None` when none of them is set.
    pub fn from_env() -> Option<KernelCache> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var(CACHE_DIR_ENV)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("mxserve/kernels")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/mxserve/kernels")))
            .map(KernelCache::at)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The cached code for `key`, if present and intact.
    pub fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let path = self.path(key);
        let bytes = fs::read(&path).ok()?;
        let intact = bytes.len() >= HEADER_LEN
            && &bytes[..MAGIC.len()] == MAGIC
            && bytes[MAGIC.len()..HEADER_LEN] == Sha256::digest(&bytes[HEADER_LEN..])[..];
        if intact {
            Some(bytes[HEADER_LEN..].to_vec())
        } else {
            tracing::warn!(
                "kernel cache entry {} is corrupted; recompiling",
                path.display()
            );
            None
        }
    }

    /// Stores `code` under `key`. Written to a temporary file and renamed, so concurrent
    /// readers never see half an entry. Failure is logged, not returned: the cache is an
    /// optimisation.
    pub fn put(&self, key: &CacheKey, code: &[u8]) {
        if let Err(err) = self.try_put(key, code) {
            tracing::warn!(
                "cannot write kernel cache entry in {}: {err}",
                self.dir.display()
            );
        }
    }

    fn try_put(&self, key: &CacheKey, code: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(code))?;
        file.write_all(code)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_part_and_its_boundaries() {
        let base = CacheKey::new(["sm_90a", "NVRTC 13.0", "src"]);
        assert_eq!(base, CacheKey::new(["sm_90a", "NVRTC 13.0", "src"]));
        assert_ne!(base, CacheKey::new(["sm_90", "NVRTC 13.0", "src"]));
        assert_ne!(base, CacheKey::new(["sm_90a", "NVRTC 13.1", "src"]));
        assert_ne!(CacheKey::new(["ab", "c"]), CacheKey::new(["a", "bc"]));
    }

    #[test]
    fn round_trips_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::at(dir.path().join("nested"));
        let key = CacheKey::new(["k"]);
        assert_eq!(cache.get(&key), None);
        let code: Vec<u8> = (0..=255u8).cycle().take(4099).collect();
        cache.put(&key, &code);
        assert_eq!(cache.get(&key), Some(code.clone()));

        // Flip one payload byte: the checksum no longer matches.
        let path = cache.path(&key);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.get(&key), None);

        // Truncated below the header.
        fs::write(&path, b"MXK").unwrap();
        assert_eq!(cache.get(&key), None);

        // Overwriting repairs the entry.
        cache.put(&key, &code);
        assert_eq!(cache.get(&key), Some(code));
    }
}
