//! The forward pass on the GPU: the same graph as [`crate::Model`]'s, one launch per op, with
//! the residual stream in f32, the MoE layer included (`moe_kernels::gpu` with f32 input and
//! output), so W4A4 quantizes the same f32 values as the CPU model.
//!
//! Every call's inputs (token ids, cache rows, block tables, positions, rotary cos/sin, the
//! rows to take logits of, sampling requests) go to buffers allocated once for the largest
//! call, by copies queued on the model's stream, and its outputs (logits, sampled tokens) stay
//! in buffers of the same kind; no call allocates. So the launches of a call read and write
//! the same addresses every time, and a decode step (one new token per chunk) can be captured
//! once as a graph ([`runtime_rocm::Graph`]) and replayed with one launch: the copies run
//! before the replay, outside the graph (from pageable host memory, which both vendors read
//! before the copy call returns, so nothing on the host has to outlive the call; a copy node
//! in the graph would need a host staging buffer at a fixed address instead). Prefill runs
//! the same launches directly.

use super::GpuModelError;
use super::blocks::{BlockError, KV_BLOCK_TOKENS};
use super::cache::GpuKvCache;
use super::plan::{KvBudget, MemoryPlan, activation_widths};
use super::weights::{AttentionInput, DeviceFfn, DeviceMlp, DeviceMoe, DeviceWeights};
use crate::config::ModelConfig;
use crate::kv_cache::SeqId;
use crate::model::{ForwardError, ForwardOptions, Model, SequenceChunk};
use crate::sampling::{Picked, SampledChunk, check_picks};
use moe_kernels::gpu::model_ops::{MLA_MAX_KEYS, MlaWorkspace, ModelOps, PagedKeys, QueryRope};
use moe_kernels::gpu::{
    MoeKernels, MoeWorkspace, REQUEST_WIDTH, RESULT_WIDTH, RowPick, SamplingKernel,
    SharedExpertMode,
};
use moe_kernels::reference::{ActivationMode, MlaDims, Rope};
use runtime_rocm::{Device, DeviceBuffer, Graph, Stream};
use std::collections::HashSet;
use std::sync::Arc;

/// How a [`GpuModel`] is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// The KV cache [`GpuModel::new_cache`] allocates.
    pub kv: KvBudget,
    /// Most tokens (over all chunks) one forward call may take; so also the largest decode
    /// batch (one token per sequence).
    pub max_batch_tokens: usize,
    /// Replay decode steps from captured graphs (see the module doc) instead of launching
    /// every op; on unless a benchmark compares the two. Prefill always launches each op.
    pub graphs: bool,
}

/// Captured decode graphs kept at once; the least recently used is dropped beyond this. A
/// server sees one key per decode batch size and attention bucket it runs (a handful of
/// buckets per batch size as contexts grow), times two for a benchmark switching fusion.
const GRAPH_CACHE_ENTRIES: usize = 32;

/// f32 activation buffers for `max_batch_tokens` tokens.
#[derive(Debug)]
struct Activations {
    x: DeviceBuffer<f32>,
    normed: DeviceBuffer<f32>,
    delta: DeviceBuffer<f32>,
    q_a: DeviceBuffer<f32>,
    q_a_normed: DeviceBuffer<f32>,
    q: DeviceBuffer<f32>,
    kv_a: DeviceBuffer<f32>,
    attn: DeviceBuffer<f32>,
    quant: DeviceBuffer<f32>,
    gate: DeviceBuffer<f32>,
    up: DeviceBuffer<f32>,
    act: DeviceBuffer<f32>,
    router: DeviceBuffer<f32>,
}

impl Activations {
    fn new(device: &Device, c: &ModelConfig, t: usize) -> Result<Self, GpuModelError> {
        let widths = activation_widths(c);
        let mut buffers = widths
            .iter()
            .map(|(_, w)| device.alloc_zeroed::<f32>(t * w))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let mut next = || buffers.next().expect("one buffer per activation width");
        Ok(Self {
            x: next(),
            normed: next(),
            delta: next(),
            q_a: next(),
            q_a_normed: next(),
            q: next(),
            kv_a: next(),
            attn: next(),
            quant: next(),
            gate: next(),
            up: next(),
            act: next(),
            router: next(),
        })
    }
}

/// The longest sequence a [`GpuModel`] of `config` runs: the model's
/// `max_position_embeddings`, or fewer where that exceeds the keys the attention kernels
/// index ([`MLA_MAX_KEYS`]; they split long contexts over blocks, so no device limit such as
/// shared memory bounds it). The KV cache budget bounds what the server admits separately.
pub fn context_length(config: &ModelConfig) -> usize {
    config.max_position_embeddings.min(MLA_MAX_KEYS)
}

/// The inputs and outputs of a forward call on the device, sized for the largest call
/// (`max_batch_tokens` tokens, as many chunks at most) and filled in place per call: captured
/// graphs hold these addresses.
#[derive(Debug)]
struct CallBuffers {
    /// Token ids.
    ids: DeviceBuffer<i32>,
    /// Cache row of each token (through its sequence's block table).
    rows: DeviceBuffer<i32>,
    /// The block tables of the call's sequences, one after another: at most every block of
    /// the KV budget, since no two sequences share a block.
    tables: DeviceBuffer<i32>,
    /// Where each token's sequence's block table starts in `tables`.
    table_offsets: DeviceBuffer<i32>,
    /// Each token's position.
    pos: DeviceBuffer<i32>,
    /// Rotary cos/sin of each token's position, `qk_rope_head_dim / 2` values a token.
    cos: DeviceBuffer<f32>,
    sin: DeviceBuffer<f32>,
    /// The last token of each chunk (the rows the head reads).
    last: DeviceBuffer<i32>,
    /// `[chunks, vocab]` logits of the last tokens.
    logits: DeviceBuffer<f32>,
    /// Sampling requests of [`SamplingKernel::launch`], one per chunk.
    requests: DeviceBuffer<f64>,
    /// Its workspace, [`SamplingKernel::scan_len`] values per chunk.
    scans: DeviceBuffer<u64>,
    /// Its results, one per chunk.
    results: DeviceBuffer<i32>,
}

impl CallBuffers {
    fn new(
        device: &Device,
        c: &ModelConfig,
        max_tokens: usize,
        kv: KvBudget,
    ) -> Result<Self, GpuModelError> {
        let t = max_tokens;
        let half = c.qk_rope_head_dim / 2;
        Ok(Self {
            ids: device.alloc_zeroed(t)?,
            rows: device.alloc_zeroed(t)?,
            tables: device.alloc_zeroed(kv.blocks.max(1))?,
            table_offsets: device.alloc_zeroed(t)?,
            pos: device.alloc_zeroed(t)?,
            cos: device.alloc_zeroed(t * half)?,
            sin: device.alloc_zeroed(t * half)?,
            last: device.alloc_zeroed(t)?,
            logits: device.alloc_zeroed(t * c.vocab_size)?,
            requests: device.alloc_zeroed(t * REQUEST_WIDTH)?,
            scans: device.alloc_zeroed(t * SamplingKernel::scan_len(c.vocab_size))?,
            results: device.alloc_zeroed(t * RESULT_WIDTH)?,
        })
    }
}

/// The sizes of one forward call's launches (its inputs are in [`CallBuffers`]).
#[derive(Debug, Clone, Copy)]
struct Call {
    tokens: usize,
    chunks: usize,
    /// At least the most keys any token of the call attends to (its position + 1): it sizes
    /// the attention kernel's shared memory.
    max_keys: usize,
    /// Whether the call ends with the sampling launch.
    sampled: bool,
}

/// What a captured decode step bakes into its launches: grid sizes and scalar arguments
/// (tokens = chunks, the attention bucket, whether sampling is in it, the MoE modes) and the
/// cache arrays it reads and writes. Everything else comes from [`CallBuffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GraphKey {
    /// [`GpuKvCache`]'s id.
    cache: u64,
    tokens: usize,
    /// The attention's `max_keys`: [`key_bucket`] of the step's longest sequence.
    keys: usize,
    sampled: bool,
    /// The last [`GpuModel::set_shared_expert_fusion`] (None: the modes as loaded).
    fusion: Option<bool>,
}

/// Captured decode steps, least recently used first.
#[derive(Debug, Default)]
struct GraphCache {
    entries: Vec<(GraphKey, Graph)>,
    /// Graphs captured so far (evicted ones included).
    captures: usize,
}

impl GraphCache {
    /// Removes and returns the graph of `key`, if cached; [`Self::put`] puts it back.
    fn take(&mut self, key: &GraphKey) -> Option<Graph> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Caches `graph` as the most recently used, dropping the least recently used beyond
    /// [`GRAPH_CACHE_ENTRIES`].
    fn put(&mut self, key: GraphKey, graph: Graph) {
        self.entries.push((key, graph));
        if self.entries.len() > GRAPH_CACHE_ENTRIES {
            self.entries.remove(0);
        }
    }
}

/// A [`Model`] resident on one GPU.
#[derive(Debug)]
pub struct GpuModel {
    device: Device,
    /// Shared so a capture can run on it while `&mut self` records the launches.
    stream: Arc<Stream>,
    config: ModelConfig,
    options: ForwardOptions,
    gpu_options: GpuOptions,
    plan: MemoryPlan,
    ops: ModelOps,
    moe: Option<(MoeKernels, MoeWorkspace)>,
    weights: DeviceWeights,
    rope: Rope,
    dims: MlaDims,
    acts: Activations,
    /// The attention's absorbed queries and key-split partials.
    attention: MlaWorkspace,
    /// See [`context_length`].
    context: usize,
    sampling: SamplingKernel,
    buffers: CallBuffers,
    graphs: GraphCache,
    /// See [`GraphKey::fusion`].
    fusion: Option<bool>,
}

impl GpuModel {
    /// Plans the model's memory on `device`, refuses (before allocating anything) when it
    /// does not fit the device's free memory, then compiles the kernels and uploads the
    /// weights. The KV cache of `options.kv` is counted here and allocated by
    /// [`Self::new_cache`].
    pub fn new(device: &Device, model: &Model, options: GpuOptions) -> Result<Self, GpuModelError> {
        if device.is_cpu() {
            return Err(GpuModelError::NotAGpu);
        }
        let config = model.config().clone();
        let plan = MemoryPlan::new(
            &config,
            model.weights(),
            options.kv,
            options.max_batch_tokens,
        )?;
        let (free, _) = device.memory_info()?;
        plan.check_fits(&device.id().to_string(), free)?;
        tracing::info!(
            "GPU model on {}: weights {} MiB, KV cache {} MiB ({} tokens in blocks of {}), \
             workspace {} MiB",
            device.id(),
            plan.weights >> 20,
            plan.kv_cache >> 20,
            options.kv.tokens(),
            KV_BLOCK_TOKENS,
            plan.workspace >> 20
        );
        let mode = model.options().activations;
        let weights = DeviceWeights::upload(device, &config, model.weights(), mode)?;
        Self::assemble(device, config, model.options(), options, plan, weights)
    }

    /// Compiles the kernels and allocates the workspace around weights already on `device`
    /// (placed by `plan`, which has been checked to fit).
    pub(crate) fn assemble(
        device: &Device,
        config: ModelConfig,
        forward: ForwardOptions,
        options: GpuOptions,
        plan: MemoryPlan,
        weights: DeviceWeights,
    ) -> Result<Self, GpuModelError> {
        let moe = match weights.layers.iter().find_map(|l| match &l.ffn {
            DeviceFfn::Moe(m) => Some(m),
            DeviceFfn::Dense(_) => None,
        }) {
            Some(m) => {
                let kernels =
                    MoeKernels::compile(device, config.hidden_size, config.moe_intermediate_size)?;
                let ws = MoeWorkspace::new(
                    device,
                    m.experts.shape(),
                    m.params.top_k,
                    options.max_batch_tokens,
                )?;
                Some((kernels, ws))
            }
            None => None,
        };
        let dims = config.mla_dims();
        Ok(Self {
            device: device.clone(),
            stream: Arc::new(device.create_stream()?),
            ops: ModelOps::compile(device)?,
            sampling: SamplingKernel::compile(device)?,
            acts: Activations::new(device, &config, options.max_batch_tokens)?,
            attention: MlaWorkspace::new(device, &dims, options.max_batch_tokens)?,
            buffers: CallBuffers::new(device, &config, options.max_batch_tokens, options.kv)?,
            graphs: GraphCache::default(),
            fusion: None,
            rope: config.rope(),
            context: context_length(&config),
            config,
            options: forward,
            gpu_options: options,
            plan,
            moe,
            weights,
            dims,
        })
    }

    /// Runs every MoE layer whose shared expert is stacked with the routed experts (it has
    /// their format) either fused, as one more slot of the routed pass, or as a separate pass
    /// of the same kernels. The two are the same computation; this exists to measure one
    /// against the other on the same weights. Returns how many layers it switched.
    pub fn set_shared_expert_fusion(&mut self, fused: bool) -> usize {
        self.fusion = Some(fused);
        let mut switched = 0;
        for layer in &mut self.weights.layers {
            if let DeviceFfn::Moe(m) = &mut layer.ffn {
                let n_shared = m.experts.shape().n_shared;
                if m.shared_mlp.is_none() && n_shared > 0 {
                    m.mode = if fused {
                        SharedExpertMode::Fused
                    } else {
                        SharedExpertMode::Separate
                    };
                    m.params.shared_slots = if fused { n_shared } else { 0 };
                    switched += 1;
                }
            }
        }
        switched
    }

    /// Turns graph replay of decode steps on or off (see [`GpuOptions::graphs`]); the graphs
    /// captured so far are kept.
    pub fn set_graphs(&mut self, on: bool) {
        self.gpu_options.graphs = on;
    }

    /// Decode graphs captured since the model was made (each is replayed until evicted).
    pub fn graph_captures(&self) -> usize {
        self.graphs.captures
    }

    /// Bytes of every weight buffer on the device (what [`MemoryPlan::weights`] predicts).
    pub fn weight_bytes_allocated(&self) -> u64 {
        self.weights.device_bytes()
    }

    /// The memory plan the model was placed with.
    pub fn plan(&self) -> MemoryPlan {
        self.plan
    }

    /// The longest sequence this model runs here (see [`context_length`]).
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Allocates the KV cache of the planned budget.
    pub fn new_cache(&self) -> Result<GpuKvCache, GpuModelError> {
        Ok(GpuKvCache::new(
            &self.device,
            &self.config,
            self.gpu_options.kv,
        )?)
    }

    /// As [`Model::forward`]: append each chunk's tokens to its sequence's cache and return,
    /// per chunk, the logits of its last token. Refused calls leave the cache unchanged.
    pub fn forward(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut GpuKvCache,
    ) -> Result<Vec<Vec<f32>>, GpuModelError> {
        self.run(chunks, None, cache)?;
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let vocab = self.config.vocab_size;
        self.stream.synchronize()?;
        let mut host = vec![0f32; chunks.len() * vocab];
        self.buffers.logits.copy_prefix_to_host(&mut host)?;
        let mut out = Vec::with_capacity(chunks.len());
        for (chunk, row) in chunks.iter().zip(host.chunks_exact(vocab)) {
            if !row.iter().all(|v| v.is_finite()) {
                return Err(ForwardError::NonFiniteLogits { seq: chunk.seq }.into());
            }
            out.push(row.to_vec());
        }
        Ok(out)
    }

    /// As [`crate::Model::forward_sampled`]: appends each chunk's tokens, then picks the next
    /// token of every chunk that asks on the device, so only tokens come back to the host
    /// (and the logits row of a pick that asks for it). Every row is checked for non-finite
    /// logits on the device. Refused calls leave the cache unchanged.
    pub fn forward_sampled(
        &mut self,
        chunks: &[SampledChunk<'_>],
        cache: &mut GpuKvCache,
    ) -> Result<Vec<Option<Picked>>, GpuModelError> {
        check_picks(chunks)?;
        let vocab = self.config.vocab_size;
        let picks: Vec<RowPick> = chunks
            .iter()
            .map(|c| match c.pick {
                Some(p) => RowPick::Sample {
                    rule: p.rule,
                    u: p.u,
                },
                None => RowPick::Skip,
            })
            .collect();
        let requests = SamplingKernel::encode_requests(&picks, vocab)?;
        let plain: Vec<SequenceChunk<'_>> = chunks.iter().map(|c| c.chunk).collect();
        self.run(&plain, Some(&requests), cache)?;
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        // The sampling ran at the end of the call (inside a replayed graph or not); only its
        // results are read back, after the stream is done.
        self.stream.synchronize()?;
        let mut results = vec![0i32; chunks.len() * RESULT_WIDTH];
        self.buffers.results.copy_prefix_to_host(&mut results)?;
        let sampled = SamplingKernel::decode_results(&results);
        if let Some((c, _)) = chunks.iter().zip(&sampled).find(|(_, s)| s.non_finite) {
            return Err(ForwardError::NonFiniteLogits { seq: c.chunk.seq }.into());
        }
        // Logits rows only for the picks that want them, gathered into one copy.
        let wanted: Vec<i32> = (0..chunks.len())
            .filter(|&i| chunks[i].pick.is_some_and(|p| p.logits))
            .map(|i| i as i32)
            .collect();
        let mut rows = if wanted.is_empty() {
            Vec::new()
        } else {
            let ids = self.device.upload(&wanted)?;
            let mut out = self.device.alloc_zeroed::<f32>(wanted.len() * vocab)?;
            self.ops.gather_rows(
                &self.stream,
                &self.buffers.logits,
                &ids,
                wanted.len(),
                vocab,
                &mut out,
            )?;
            self.stream.synchronize()?;
            out.to_vec()?
        }
        .chunks_exact(vocab)
        .map(<[f32]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter();
        chunks
            .iter()
            .zip(sampled)
            .map(|(c, s)| {
                let Some(pick) = c.pick else { return Ok(None) };
                let token = s
                    .token
                    .ok_or(ForwardError::NonFiniteLogits { seq: c.chunk.seq })?;
                let logits = pick
                    .logits
                    .then(|| rows.next().expect("one gathered row per logits pick"));
                Ok(Some(Picked { token, logits }))
            })
            .collect()
    }

    /// A forward call up to the logits of each chunk's last token in `buffers.logits` (and,
    /// with `requests`, the sampled tokens in `buffers.results`), queued: checks it, appends
    /// every chunk's tokens to the cache, then replays the decode graph of its shape
    /// (capturing it first if needed) or launches each op.
    fn run(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        requests: Option<&[f64]>,
        cache: &mut GpuKvCache,
    ) -> Result<(), GpuModelError> {
        self.check(chunks, cache)?;
        if chunks.is_empty() {
            return Ok(());
        }
        let call = self.prepare(chunks, requests, cache)?;
        let decode = chunks.iter().all(|c| c.tokens.len() == 1);
        if self.gpu_options.graphs && decode {
            self.replay(call, cache)?;
        } else {
            self.record(call, cache)?;
        }
        for chunk in chunks {
            cache.commit(chunk.seq, chunk.tokens.len());
        }
        Ok(())
    }

    /// Queues every launch of `call` on the model's stream: embedding, layers, head and, when
    /// sampled, the sampling. Only launches: no allocation, copy or wait, so it can be
    /// captured.
    fn record(&mut self, call: Call, cache: &mut GpuKvCache) -> Result<(), GpuModelError> {
        self.ops.embed_rows(
            &self.stream,
            &self.weights.embed,
            &self.buffers.ids,
            call.tokens,
            &mut self.acts.x,
        )?;
        for l in 0..self.weights.layers.len() {
            self.layer(l, &call, cache)?;
        }
        self.head(call.tokens, call.chunks)?;
        if call.sampled {
            let b = &mut self.buffers;
            self.sampling.launch(
                &self.stream,
                &b.logits,
                self.config.vocab_size,
                call.chunks,
                &b.requests,
                &mut b.scans,
                &mut b.results,
            )?;
        }
        Ok(())
    }

    /// Replays the graph of a decode `call`, capturing it first when no graph of its key is
    /// cached. The attention's key length is rounded up to [`key_bucket`], so a
    /// sequence growing by one token a step takes a new graph only when it crosses a bucket.
    fn replay(&mut self, call: Call, cache: &mut GpuKvCache) -> Result<(), GpuModelError> {
        let key = GraphKey {
            cache: cache.id,
            tokens: call.tokens,
            keys: key_bucket(call.max_keys, MLA_MAX_KEYS),
            sampled: call.sampled,
            fusion: self.fusion,
        };
        let graph = match self.graphs.take(&key) {
            Some(graph) => graph,
            None => {
                tracing::debug!(
                    tokens = key.tokens,
                    max_keys = key.keys,
                    sampled = key.sampled,
                    fusion = ?key.fusion,
                    cached = self.graphs.entries.len(),
                    "capturing a decode graph"
                );
                let stream = Arc::clone(&self.stream);
                let bucketed = Call {
                    max_keys: key.keys,
                    ..call
                };
                let graph = stream.capture(|_| self.record(bucketed, cache))?;
                self.graphs.captures += 1;
                graph
            }
        };
        // SAFETY: the graph reads and writes the model's weights, activations, call buffers
        // and MoE workspace, owned by `self` and never reallocated, and the arrays of the
        // cache whose id is in its key (ids are never reused, and a cache's arrays live as
        // long as it does): all alive.
        unsafe { graph.launch(&self.stream) }?;
        self.graphs.put(key, graph);
        Ok(())
    }

    fn check(&self, chunks: &[SequenceChunk<'_>], cache: &GpuKvCache) -> Result<(), GpuModelError> {
        if !cache.matches(&self.config) {
            return Err(ForwardError::CacheMismatch.into());
        }
        if cache.budget().blocks > self.buffers.tables.len() {
            return Err(GpuModelError::Unsupported(format!(
                "a KV cache of {} blocks is larger than the {} this model was planned for \
                 (use GpuModel::new_cache)",
                cache.budget().blocks,
                self.gpu_options.kv.blocks
            )));
        }
        let vocab_size = self.config.vocab_size;
        let mut seen = HashSet::new();
        for chunk in chunks {
            let seq = chunk.seq;
            if chunk.tokens.is_empty() {
                return Err(ForwardError::EmptyChunk { seq }.into());
            }
            if !seen.insert(seq) {
                return Err(ForwardError::DuplicateSequence { seq }.into());
            }
            if let Some((index, &token)) = chunk
                .tokens
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= vocab_size)
            {
                return Err(ForwardError::TokenOutOfVocab {
                    seq,
                    index,
                    token,
                    vocab_size,
                }
                .into());
            }
            let length = cache.seq_len(seq) + chunk.tokens.len();
            if length > self.config.max_position_embeddings {
                return Err(ForwardError::ContextTooLong {
                    seq,
                    length,
                    max: self.config.max_position_embeddings,
                }
                .into());
            }
            if length > self.context {
                return Err(GpuModelError::AttentionContext {
                    seq,
                    length,
                    max: self.context,
                });
            }
        }
        let needed = cache.blocks.blocks_needed(&appends(chunks));
        if needed > cache.free_blocks() {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: cache.free_blocks(),
                total: cache.blocks.total_blocks(),
            }
            .into());
        }
        let tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        if tokens > self.gpu_options.max_batch_tokens {
            return Err(GpuModelError::BatchTooLarge {
                tokens,
                max: self.gpu_options.max_batch_tokens,
            });
        }
        Ok(())
    }

    /// Takes the blocks the call's tokens need (all of them were checked to be free) and
    /// queues the copies of the call's inputs to [`CallBuffers`]: each token's id, cache row,
    /// position and block-table offset, the call's block tables, the rotary cos/sin (computed
    /// on the host exactly as the CPU reference does), each chunk's last row and the sampling
    /// `requests`. Queued on the model's stream, each copy lands after the previous call's
    /// launches are done with the buffer.
    fn prepare(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        requests: Option<&[f64]>,
        cache: &mut GpuKvCache,
    ) -> Result<Call, GpuModelError> {
        cache.grow(&appends(chunks))?;
        let (mut ids, mut rows, mut tables, mut offsets, mut pos, mut last) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        let mut max_keys = 0;
        for chunk in chunks {
            let offset = tables.len() as i32;
            let table = cache.block_table(chunk.seq);
            tables.extend(table.iter().map(|&b| b as i32));
            let first = cache.seq_len(chunk.seq);
            for (p, &token) in (first..).zip(chunk.tokens) {
                ids.push(token as i32);
                let row = cache.blocks.row(chunk.seq, p);
                rows.push(row.expect("blocks were taken for every new token") as i32);
                offsets.push(offset);
                pos.push(p as i32);
                let (c, s) = self.rope.cos_sin(p);
                cos.extend(c);
                sin.extend(s);
            }
            last.push(rows.len() as i32 - 1);
            max_keys = max_keys.max(first + chunk.tokens.len());
        }
        let (s, b) = (&self.stream, &mut self.buffers);
        b.ids.copy_prefix_from_host_async(&ids, s)?;
        b.rows.copy_prefix_from_host_async(&rows, s)?;
        b.tables.copy_prefix_from_host_async(&tables, s)?;
        b.table_offsets.copy_prefix_from_host_async(&offsets, s)?;
        b.pos.copy_prefix_from_host_async(&pos, s)?;
        b.cos.copy_prefix_from_host_async(&cos, s)?;
        b.sin.copy_prefix_from_host_async(&sin, s)?;
        b.last.copy_prefix_from_host_async(&last, s)?;
        if let Some(requests) = requests {
            b.requests.copy_prefix_from_host_async(requests, s)?;
        }
        Ok(Call {
            tokens: rows.len(),
            chunks: chunks.len(),
            max_keys,
            sampled: requests.is_some(),
        })
    }

    fn layer(
        &mut self,
        l: usize,
        call: &Call,
        cache: &mut GpuKvCache,
    ) -> Result<(), GpuModelError> {
        let (s, ops, a) = (&*self.stream, &self.ops, &mut self.acts);
        let attention = &mut self.attention;
        let b = &self.buffers;
        let c = &self.config;
        let t = call.tokens;
        let h = c.hidden_size;
        let layer = &self.weights.layers[l];
        let mode = self.options.activations;
        let eps = c.rms_norm_eps;

        // Every layer leaves its last residual in `delta` for the next norm to add.
        if l == 0 {
            ops.rmsnorm(s, &a.x, h, &layer.input_norm, eps, t, &mut a.normed, h)?;
        } else {
            ops.add_rmsnorm(
                s,
                &mut a.x,
                &a.delta,
                &layer.input_norm,
                eps,
                t,
                &mut a.normed,
            )?;
        }
        // Attention: the query, and the new keys into the cache.
        let w = &layer.attention;
        let d = &self.dims;
        let kv_width = d.kv_lora + d.qk_rope;
        // Where the kv_a_proj output lands in `a.kv_a`: (row stride, offset in the row).
        let (kv_stride, kv_offset) = match &w.input {
            AttentionInput::StackedLora { qkv_a, q_norm, q_b } => {
                let r = q_norm.len();
                ops.linear(s, &a.normed, t, qkv_a, mode, &mut a.quant, &mut a.kv_a)?;
                ops.rmsnorm(
                    s,
                    &a.kv_a,
                    r + kv_width,
                    q_norm,
                    eps,
                    t,
                    &mut a.q_a_normed,
                    r,
                )?;
                ops.linear(s, &a.q_a_normed, t, q_b, mode, &mut a.quant, &mut a.q)?;
                (r + kv_width, r)
            }
            AttentionInput::Lora {
                q_a,
                q_norm,
                q_b,
                kv_a,
            } => {
                let r = q_norm.len();
                ops.linear(s, &a.normed, t, q_a, mode, &mut a.quant, &mut a.q_a)?;
                ops.rmsnorm(s, &a.q_a, r, q_norm, eps, t, &mut a.q_a_normed, r)?;
                ops.linear(s, &a.q_a_normed, t, q_b, mode, &mut a.quant, &mut a.q)?;
                ops.linear(s, &a.normed, t, kv_a, mode, &mut a.quant, &mut a.kv_a)?;
                (kv_width, 0)
            }
            AttentionInput::Direct { q, kv_a } => {
                ops.linear(s, &a.normed, t, q, mode, &mut a.quant, &mut a.q)?;
                ops.linear(s, &a.normed, t, kv_a, mode, &mut a.quant, &mut a.kv_a)?;
                (kv_width, 0)
            }
        };
        let (cache_latent, cache_rope) = &mut cache.layers[l];
        ops.kv_append(
            s,
            &a.kv_a,
            kv_stride,
            kv_offset,
            &w.kv_a_norm,
            eps,
            w.kv_b_input,
            d.qk_rope,
            &b.cos,
            &b.sin,
            &b.rows,
            t,
            cache_latent,
            cache_rope,
            QueryRope {
                q: &mut a.q,
                heads: d.heads,
                nope: d.qk_nope,
            },
        )?;
        let keys = PagedKeys {
            tables: &b.tables,
            table_offsets: &b.table_offsets,
            positions: &b.pos,
            block_tokens: KV_BLOCK_TOKENS,
            max_keys: call.max_keys,
        };
        ops.mla_attention(
            s,
            &a.q,
            cache_latent,
            cache_rope,
            &w.kv_b,
            &keys,
            t,
            d,
            c.softmax_scale(),
            attention,
            &mut a.attn,
        )?;
        ops.linear(s, &a.attn, t, &w.o_proj, mode, &mut a.quant, &mut a.delta)?;

        // Feed-forward; its output stays in `delta`.
        ops.add_rmsnorm(
            s,
            &mut a.x,
            &a.delta,
            &layer.post_norm,
            eps,
            t,
            &mut a.normed,
        )?;
        match &layer.ffn {
            DeviceFfn::Dense(m) => mlp(ops, s, a, m, t, mode)?,
            DeviceFfn::Moe(m) => {
                let (kernels, ws) = self
                    .moe
                    .as_mut()
                    .expect("MoE kernels built with MoE layers");
                moe(ops, s, a, m, kernels, ws, t)?;
                if let Some(shared) = &m.shared_mlp {
                    ops.add(s, &mut a.x, &a.delta, t * h)?;
                    mlp(ops, s, a, shared, t, mode)?;
                }
            }
        }
        Ok(())
    }

    /// The last layer's residual added to the `tokens` rows, then the final norm and output
    /// head on the last token of each of `n` chunks: `[n, vocab]` logits in `buffers.logits`
    /// (queued, not waited for).
    fn head(&mut self, tokens: usize, n: usize) -> Result<(), GpuModelError> {
        let c = &self.config;
        let h = c.hidden_size;
        let s = &self.stream;
        let a = &mut self.acts;
        let b = &mut self.buffers;
        if !self.weights.layers.is_empty() {
            self.ops.add(s, &mut a.x, &a.delta, tokens * h)?;
        }
        // `delta` holds the last rows, `normed` their norm.
        self.ops.gather_rows(s, &a.x, &b.last, n, h, &mut a.delta)?;
        self.ops.rmsnorm(
            s,
            &a.delta,
            h,
            &self.weights.norm,
            c.rms_norm_eps,
            n,
            &mut a.normed,
            h,
        )?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        self.ops.linear(
            s,
            &a.normed,
            n,
            head,
            self.options.activations,
            &mut a.quant,
            &mut b.logits,
        )?;
        Ok(())
    }
}

/// The `max_keys` a decode graph is captured with for a step whose longest sequence has
/// `max_keys` keys: whole cache blocks, rounded up to a power of two of them, within `limit`
/// (the attention kernels' index limit). The kernels read each query's own key count from its
/// position on the device; `max_keys` only picks how the keys are split over blocks (a split
/// past a query's keys contributes nothing), so a graph serves every step up to its bucket.
fn key_bucket(max_keys: usize, limit: usize) -> usize {
    let blocks = max_keys.div_ceil(KV_BLOCK_TOKENS).next_power_of_two();
    (blocks * KV_BLOCK_TOKENS).min(limit).max(max_keys)
}

/// Each chunk's sequence and its number of new tokens.
fn appends(chunks: &[SequenceChunk<'_>]) -> Vec<(SeqId, usize)> {
    chunks.iter().map(|c| (c.seq, c.tokens.len())).collect()
}

/// `delta = down(silu(gate(normed)) · up(normed))`.
fn mlp(
    ops: &ModelOps,
    s: &Stream,
    a: &mut Activations,
    m: &DeviceMlp,
    t: usize,
    mode: ActivationMode,
) -> Result<(), GpuModelError> {
    let inter = m.intermediate();
    ops.linear(s, &a.normed, t, &m.gate, mode, &mut a.quant, &mut a.gate)?;
    ops.linear(s, &a.normed, t, &m.up, mode, &mut a.quant, &mut a.up)?;
    ops.silu_mul(s, &a.gate, &a.up, t * inter, &mut a.act)?;
    ops.linear(s, &a.act, t, &m.down, mode, &mut a.quant, &mut a.delta)?;
    Ok(())
}

/// `delta = moe(normed)`: router logits, then the experts through `moe_kernels::gpu`, all in f32.
#[allow(clippy::too_many_arguments)]
fn moe(
    ops: &ModelOps,
    s: &Stream,
    a: &mut Activations,
    m: &DeviceMoe,
    kernels: &MoeKernels,
    ws: &mut MoeWorkspace,
    t: usize,
) -> Result<(), GpuModelError> {
    ops.linear(
        s,
        &a.normed,
        t,
        &m.router,
        ActivationMode::Unquantized,
        &mut a.quant,
        &mut a.router,
    )?;
    kernels.forward(
        s,
        &m.experts,
        &m.params,
        m.act,
        m.mode,
        &a.normed,
        &a.router,
        &m.bias,
        t,
        ws,
        &mut a.delta,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_buckets_are_powers_of_two_of_blocks_within_the_limit() {
        let b = KV_BLOCK_TOKENS;
        for (keys, want) in [
            (1, b),
            (b, b),
            (b + 1, 2 * b),
            (2 * b + 1, 4 * b),
            (4 * b, 4 * b),
            (5 * b - 3, 8 * b),
        ] {
            assert_eq!(key_bucket(keys, 1 << 20), want, "{keys} keys");
        }
        // Never beyond the kernel's limit, never below the step's own keys.
        assert_eq!(key_bucket(5 * b, 6 * b), 6 * b);
        assert_eq!(key_bucket(6 * b, 6 * b), 6 * b);
        // Every step from 1 to 4096 keys falls into one of 7 buckets.
        let buckets: HashSet<usize> = (1..=4096).map(|k| key_bucket(k, 1 << 20)).collect();
        assert_eq!(buckets.len(), 7);
    }
}
