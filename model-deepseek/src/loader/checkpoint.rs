//! A checkpoint directory's safetensors files, memory-mapped, with every header validated.
//!
//! One file (`model.safetensors`) or several named by `model.safetensors.index.json`. The index
//! must agree with the shards exactly: every tensor it names is in the shard it names, and every
//! tensor in a shard is in the index.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{HeaderError, LoadError};
use super::header::{self, Dtype, HeaderEntry};

/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where a tensor lives and what it is.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    file: usize,
    range: std::ops::Range<usize>,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// The tensors of a checkpoint directory, ready to be read without copying.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Opens `dir`, memory-maps its safetensors files and validates every header.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index_path.is_file() {
            Self::open_sharded(dir, &index_path)
        } else if single.is_file() {
            let mut ckpt = Self {
                shards: Vec::new(),
                tensors: BTreeMap::new(),
            };
            ckpt.add_shard(&single)?;
            Ok(ckpt)
        } else {
            Err(LoadError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self, LoadError> {
        let index_err = |problem: String| LoadError::Index {
            path: index_path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(index_path).map_err(|source| LoadError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| index_err(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| index_err("no weight_map object".to_owned()))?;
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| index_err(format!("weight_map entry {tensor} is not a string")))?;
            // A shard name is a plain file name; anything else could reach outside the directory.
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(index_err(format!(
                    "weight_map entry {tensor} names {shard:?}, not a file in the directory"
                )));
            }
            by_shard.entry(shard).or_default().push(tensor);
        }
        let mut ckpt = Self {
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for (shard, names) in &by_shard {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(index_err(format!(
                    "shard {shard} (holding {}) does not exist",
                    names[0]
                )));
            }
            let file_idx = ckpt.add_shard(&path)?;
            for name in names {
                match ckpt.tensors.get(*name) {
                    Some(info) if info.file == file_idx => {}
                    _ => {
                        return Err(index_err(format!(
                            "weight_map puts {name} in {shard}, which does not hold it"
                        )));
                    }
                }
            }
        }
        for (name, info) in &ckpt.tensors {
            if !map.contains_key(name) {
                return Err(index_err(format!(
                    "tensor {name} in {} is missing from weight_map",
                    ckpt.shards[info.file].path.display()
                )));
            }
        }
        Ok(ckpt)
    }

    fn add_shard(&mut self, path: &Path) -> Result<usize, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let file_len = usize::try_from(len).map_err(|_| HeaderError {
            file: path.to_path_buf(),
            problem: format!("file of {len} bytes does not fit in memory"),
        })?;
        // SAFETY: the map is read-only and lives as long as the Checkpoint. Memory-mapping is
        // only unsound if another process truncates or rewrites the file while we hold the map;
        // checkpoints are immutable inputs, as every safetensors loader assumes.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let entries = header::parse(path, &map, file_len)?;
        let idx = self.shards.len();
        for HeaderEntry {
            name,
            dtype,
            shape,
            range,
        } in entries
        {
            if let Some(prev) = self.tensors.get(&name) {
                return Err(LoadError::DuplicateTensor {
                    name,
                    first: self.shards[prev.file].path.clone(),
                    second: path.to_path_buf(),
                });
            }
            self.tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape,
                    file: idx,
                    range,
                },
            );
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(idx)
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The raw little-endian bytes of a tensor (bounds were checked when the header was read).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.shards[info.file].map[info.range.clone()]
    }

    /// Total size of the tensor data in bytes.
    pub fn data_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.range.len()).sum()
    }
}
