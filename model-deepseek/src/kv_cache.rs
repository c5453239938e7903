//! The KV cache in MLA latent form: per sequence and layer, the normalised compressed
//! key/value latent (`kv_lora_rank` values a token) and the rotated rope key
//! (`qk_rope_head_dim` values a token). Capacity is counted in tokens over all sequences.

use crate::config::ModelConfig;
use moe_kernels::reference::MlaCache;
use std::collections::HashMap;

/// A sequence's identity in the cache, chosen by the caller (the server's request id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

/// One layer of one sequence.
#[derive(Debug, Default)]
struct LayerCache {
    /// `[len, kv_lora_rank]`.
    latent: Vec<f32>,
    /// `[len, qk_rope_head_dim]`.
    rope_key: Vec<f32>,
}

#[derive(Debug)]
struct SequenceCache {
    /// Tokens committed (present in every layer).
    len: usize,
    layers: Vec<LayerCache>,
}

/// The latent KV cache of every live sequence.
#[derive(Debug)]
pub struct KvCache {
    layers: usize,
    kv_lora_rank: usize,
    rope_dim: usize,
    capacity_tokens: usize,
    used_tokens: usize,
    sequences: HashMap<SeqId, SequenceCache>,
}

impl KvCache {
    /// An empty cache for `config`'s model holding at most `capacity_tokens` tokens over all
    /// sequences. Memory is taken as sequences grow, at most
    /// `capacity_tokens × bytes_per_token(config)`.
    pub fn new(config: &ModelConfig, capacity_tokens: usize) -> Self {
        Self {
            layers: config.num_hidden_layers,
            kv_lora_rank: config.kv_lora_rank,
            rope_dim: config.qk_rope_head_dim,
            capacity_tokens,
            used_tokens: 0,
            sequences: HashMap::new(),
        }
    }

    /// Bytes one cached token takes for `config`'s model (all layers, f32).
    pub fn bytes_per_token(config: &ModelConfig) -> usize {
        config.num_hidden_layers
            * (config.kv_lora_rank + config.qk_rope_head_dim)
            * std::mem::size_of::<f32>()
    }

    /// Most tokens the cache holds.
    pub fn capacity_tokens(&self) -> usize {
        self.capacity_tokens
    }

    /// Tokens held over all sequences.
    pub fn used_tokens(&self) -> usize {
        self.used_tokens
    }

    /// Tokens that can still be appended.
    pub fn free_tokens(&self) -> usize {
        self.capacity_tokens - self.used_tokens
    }

    /// Tokens cached for `seq` (0 for a sequence the cache does not hold).
    pub fn seq_len(&self, seq: SeqId) -> usize {
        self.sequences.get(&seq).map_or(0, |s| s.len)
    }

    /// Whether the cache holds `seq`.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.sequences.contains_key(&seq)
    }

    /// Number of sequences held.
    pub fn num_sequences(&self) -> usize {
        self.sequences.len()
    }

    /// Drop `seq` and return its tokens to the pool; `false` when it was not held.
    pub fn free(&mut self, seq: SeqId) -> bool {
        match self.sequences.remove(&seq) {
            Some(s) => {
                self.used_tokens -= s.len;
                true
            }
            None => false,
        }
    }

    /// Whether this cache was made for a model with these dimensions.
    pub(crate) fn matches(&self, config: &ModelConfig) -> bool {
        self.layers == config.num_hidden_layers
            && self.kv_lora_rank == config.kv_lora_rank
            && self.rope_dim == config.qk_rope_head_dim
    }

    /// Append rows to `seq`'s `layer` (creating the sequence if new). The rows become visible
    /// to [`Self::layer`] at once; the token count changes only at [`Self::commit`].
    pub(crate) fn append(&mut self, seq: SeqId, layer: usize, latent: &[f32], rope_key: &[f32]) {
        let layers = self.layers;
        let entry = self.sequences.entry(seq).or_insert_with(|| SequenceCache {
            len: 0,
            layers: (0..layers).map(|_| LayerCache::default()).collect(),
        });
        let l = &mut entry.layers[layer];
        l.latent.extend_from_slice(latent);
        l.rope_key.extend_from_slice(rope_key);
    }

    /// `seq`'s cache at `layer`, including rows appended but not yet committed.
    pub(crate) fn layer(&self, seq: SeqId, layer: usize) -> MlaCache<'_> {
        let l = &self.sequences[&seq].layers[layer];
        MlaCache {
            latent: &l.latent,
            rope_key: &l.rope_key,
        }
    }

    /// Count `tokens` appended to every layer of `seq`.
    pub(crate) fn commit(&mut self, seq: SeqId, tokens: usize) {
        let s = self
            .sequences
            .get_mut(&seq)
            .expect("commit after append to every layer");
        s.len += tokens;
        debug_assert!(
            s.layers
                .iter()
                .all(|l| l.latent.len() == s.len * self.kv_lora_rank)
        );
        self.used_tokens += tokens;
    }
}
