//! The forward pass on the GPU: the same graph as [`crate::Model`]'s, one launch per op, with
//! the residual stream in f32, the MoE layer included (`moe_kernels::gpu` with f32 input and
//! output), so W4A4 quantizes the same f32 values as the CPU model.

use super::GpuModelError;
use super::blocks::{BlockError, KV_BLOCK_TOKENS};
use super::cache::GpuKvCache;
use super::plan::{KvBudget, MemoryPlan, activation_widths};
use super::weights::{DeviceFfn, DeviceMlp, DeviceMoe, DeviceQuery, DeviceWeights};
use crate::config::ModelConfig;
use crate::kv_cache::SeqId;
use crate::model::{ForwardError, ForwardOptions, Model, SequenceChunk};
use crate::sampling::{Picked, SampledChunk, check_picks};
use moe_kernels::gpu::model_ops::{MLA_MAX_KEYS, MlaWorkspace, ModelOps, PagedKeys};
use moe_kernels::gpu::{MoeKernels, MoeWorkspace, RowPick, SamplingKernel, SharedExpertMode};
use moe_kernels::reference::{ActivationMode, ActivationQuant, MlaDims, Rope};
use runtime_rocm::{Device, DeviceBuffer, Stream};
use std::collections::HashSet;

/// How a [`GpuModel`] is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// The KV cache [`GpuModel::new_cache`] allocates.
    pub kv: KvBudget,
    /// Most tokens (over all chunks) one forward call may take.
    pub max_batch_tokens: usize,
}

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
    latent: DeviceBuffer<f32>,
    attn: DeviceBuffer<f32>,
    quant: DeviceBuffer<f32>,
    gate: DeviceBuffer<f32>,
    up: DeviceBuffer<f32>,
    act: DeviceBuffer<f32>,
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
            latent: next(),
            attn: next(),
            quant: next(),
            gate: next(),
            up: next(),
            act: next(),
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

/// Per-call inputs on the device.
struct Call {
    tokens: usize,
    /// Cache row of each token (through its sequence's block table).
    rows: DeviceBuffer<i32>,
    /// The block tables of the call's sequences, one after another.
    tables: DeviceBuffer<i32>,
    /// Where each token's sequence's block table starts in `tables`.
    table_offsets: DeviceBuffer<i32>,
    /// Each token's position.
    pos: DeviceBuffer<i32>,
    /// Most keys any token of the call attends to (its position + 1).
    max_keys: usize,
    cos: DeviceBuffer<f32>,
    sin: DeviceBuffer<f32>,
    /// Router logits, exactly sized for the MoE launcher.
    router_logits: Option<DeviceBuffer<f32>>,
}

/// A [`Model`] resident on one GPU.
#[derive(Debug)]
pub struct GpuModel {
    device: Device,
    stream: Stream,
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
            stream: device.create_stream()?,
            ops: ModelOps::compile(device)?,
            sampling: SamplingKernel::compile(device)?,
            acts: Activations::new(device, &config, options.max_batch_tokens)?,
            attention: MlaWorkspace::new(device, &dims, options.max_batch_tokens)?,
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
        self.run(chunks, cache)?;
        self.logits(chunks)
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
        let plain: Vec<SequenceChunk<'_>> = chunks.iter().map(|c| c.chunk).collect();
        self.run(&plain, cache)?;
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.head(&plain)?;
        let vocab = self.config.vocab_size;
        let rows: Vec<RowPick> = chunks
            .iter()
            .map(|c| match c.pick {
                Some(p) => RowPick::Sample {
                    rule: p.rule,
                    u: p.u,
                },
                None => RowPick::Skip,
            })
            .collect();
        let sampled = self.sampling.sample(&self.stream, &logits, vocab, &rows)?;
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
            self.ops
                .gather_rows(&self.stream, &logits, &ids, wanted.len(), vocab, &mut out)?;
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

    /// The layers of a forward call: checks it, appends every chunk's tokens to the cache
    /// and leaves the residual stream in `acts.x`.
    fn run(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut GpuKvCache,
    ) -> Result<(), GpuModelError> {
        self.check(chunks, cache)?;
        if chunks.is_empty() {
            return Ok(());
        }
        let call = self.prepare(chunks, cache)?;
        let t = call.tokens;
        let ids: Vec<i32> = chunks
            .iter()
            .flat_map(|c| c.tokens.iter().map(|&tok| tok as i32))
            .collect();
        let ids = self.device.upload(&ids)?;
        self.ops
            .embed_rows(&self.stream, &self.weights.embed, &ids, t, &mut self.acts.x)?;
        let mut call = call;
        for l in 0..self.weights.layers.len() {
            self.layer(l, &mut call, cache)?;
        }
        for chunk in chunks {
            cache.commit(chunk.seq, chunk.tokens.len());
        }
        Ok(())
    }

    fn check(&self, chunks: &[SequenceChunk<'_>], cache: &GpuKvCache) -> Result<(), GpuModelError> {
        if !cache.matches(&self.config) {
            return Err(ForwardError::CacheMismatch.into());
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
    /// uploads each token's cache row, position and block-table offset, the call's block
    /// tables, and the rotary cos/sin (computed on the host exactly as the CPU reference does).
    fn prepare(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut GpuKvCache,
    ) -> Result<Call, GpuModelError> {
        cache.grow(&appends(chunks))?;
        let (mut rows, mut tables, mut offsets, mut pos) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        let mut max_keys = 0;
        for chunk in chunks {
            let offset = tables.len() as i32;
            let table = cache.block_table(chunk.seq);
            tables.extend(table.iter().map(|&b| b as i32));
            let first = cache.seq_len(chunk.seq);
            for p in first..first + chunk.tokens.len() {
                let row = cache.blocks.row(chunk.seq, p);
                rows.push(row.expect("blocks were taken for every new token") as i32);
                offsets.push(offset);
                pos.push(p as i32);
                let (c, s) = self.rope.cos_sin(p);
                cos.extend(c);
                sin.extend(s);
            }
            max_keys = max_keys.max(first + chunk.tokens.len());
        }
        let t = rows.len();
        let d = &self.device;
        let moe = self.moe.is_some();
        let c = &self.config;
        Ok(Call {
            tokens: t,
            rows: d.upload(&rows)?,
            tables: d.upload(&tables)?,
            table_offsets: d.upload(&offsets)?,
            pos: d.upload(&pos)?,
            max_keys,
            cos: d.upload(&cos)?,
            sin: d.upload(&sin)?,
            router_logits: moe
                .then(|| d.alloc_zeroed(t * c.n_routed_experts))
                .transpose()?,
        })
    }

    fn layer(
        &mut self,
        l: usize,
        call: &mut Call,
        cache: &mut GpuKvCache,
    ) -> Result<(), GpuModelError> {
        let (s, ops, a) = (&self.stream, &self.ops, &mut self.acts);
        let attention = &mut self.attention;
        let c = &self.config;
        let t = call.tokens;
        let h = c.hidden_size;
        let layer = &self.weights.layers[l];
        let mode = self.options.activations;
        let eps = c.rms_norm_eps;

        ops.rmsnorm(s, &a.x, h, &layer.input_norm, eps, t, &mut a.normed, h)?;
        // Attention.
        let w = &layer.attention;
        let d = &self.dims;
        let q_head = d.qk_nope + d.qk_rope;
        match &w.query {
            DeviceQuery::Lora { a: qa, norm, b } => {
                let r = qa.out_features();
                ops.linear(s, &a.normed, t, qa, mode, &mut a.quant, &mut a.q_a)?;
                ops.rmsnorm(s, &a.q_a, r, norm, eps, t, &mut a.q_a_normed, r)?;
                ops.linear(s, &a.q_a_normed, t, b, mode, &mut a.quant, &mut a.q)?;
            }
            DeviceQuery::Direct(q) => {
                ops.linear(s, &a.normed, t, q, mode, &mut a.quant, &mut a.q)?;
            }
        }
        let kv_width = d.kv_lora + d.qk_rope;
        ops.linear(s, &a.normed, t, &w.kv_a, mode, &mut a.quant, &mut a.kv_a)?;
        ops.rmsnorm(
            s,
            &a.kv_a,
            kv_width,
            &w.kv_a_norm,
            eps,
            t,
            &mut a.latent,
            d.kv_lora,
        )?;
        let latent = match w.kv_b_input {
            ActivationQuant::Mxfp4(rule) => {
                ops.fake_quantize(s, &a.latent, t * d.kv_lora, rule, &mut a.quant)?;
                &a.quant
            }
            ActivationQuant::None => &a.latent,
        };
        let half = d.qk_rope / 2;
        ops.rope(
            s,
            &mut a.q,
            &call.cos,
            &call.sin,
            t,
            d.heads,
            d.heads * q_head,
            q_head,
            d.qk_nope,
            half,
        )?;
        ops.rope(
            s,
            &mut a.kv_a,
            &call.cos,
            &call.sin,
            t,
            1,
            kv_width,
            kv_width,
            d.kv_lora,
            half,
        )?;
        let (cache_latent, cache_rope) = &mut cache.layers[l];
        ops.cache_store(
            s,
            latent,
            &a.kv_a,
            &call.rows,
            t,
            d.kv_lora,
            d.qk_rope,
            cache_latent,
            cache_rope,
        )?;
        let keys = PagedKeys {
            tables: &call.tables,
            table_offsets: &call.table_offsets,
            positions: &call.pos,
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
        ops.add(s, &mut a.x, &a.delta, t * h)?;

        // Feed-forward.
        ops.rmsnorm(s, &a.x, h, &layer.post_norm, eps, t, &mut a.normed, h)?;
        match &layer.ffn {
            DeviceFfn::Dense(m) => {
                mlp(ops, s, a, m, t, mode)?;
                ops.add(s, &mut a.x, &a.delta, t * h)?;
            }
            DeviceFfn::Moe(m) => {
                let (kernels, ws) = self
                    .moe
                    .as_mut()
                    .expect("MoE kernels built with MoE layers");
                moe(ops, s, a, m, kernels, ws, call, t, h)?;
                if let Some(shared) = &m.shared_mlp {
                    mlp(ops, s, a, shared, t, mode)?;
                    ops.add(s, &mut a.x, &a.delta, t * h)?;
                }
            }
        }
        Ok(())
    }

    /// The last-position logits of each chunk, copied to the host and checked finite.
    fn logits(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<Vec<Vec<f32>>, GpuModelError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let vocab = self.config.vocab_size;
        let logits = self.head(chunks)?;
        self.stream.synchronize()?;
        let host = logits.to_vec()?;
        let mut out = Vec::with_capacity(chunks.len());
        for (chunk, row) in chunks.iter().zip(host.chunks_exact(vocab)) {
            if !row.iter().all(|v| v.is_finite()) {
                return Err(ForwardError::NonFiniteLogits { seq: chunk.seq }.into());
            }
            out.push(row.to_vec());
        }
        Ok(out)
    }

    /// Final norm and output head on the last token of each chunk: `[chunks, vocab]` logits
    /// on the device (queued, not waited for).
    fn head(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<DeviceBuffer<f32>, GpuModelError> {
        let c = &self.config;
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let mut last = Vec::with_capacity(chunks.len());
        let mut end = 0usize;
        for chunk in chunks {
            end += chunk.tokens.len();
            last.push((end - 1) as i32);
        }
        let n = last.len();
        let s = &self.stream;
        let a = &mut self.acts;
        let last = self.device.upload(&last)?;
        // `delta` holds the last rows, `normed` their norm.
        self.ops.gather_rows(s, &a.x, &last, n, h, &mut a.delta)?;
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
        let mut logits = self.device.alloc_zeroed::<f32>(n * vocab)?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        self.ops.linear(
            s,
            &a.normed,
            n,
            head,
            self.options.activations,
            &mut a.quant,
            &mut logits,
        )?;
        Ok(logits)
    }
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

/// `x += moe(normed)`: router logits, then the experts through `moe_kernels::gpu`, all in f32.
#[allow(clippy::too_many_arguments)]
fn moe(
    ops: &ModelOps,
    s: &Stream,
    a: &mut Activations,
    m: &DeviceMoe,
    kernels: &MoeKernels,
    ws: &mut MoeWorkspace,
    call: &mut Call,
    t: usize,
    h: usize,
) -> Result<(), GpuModelError> {
    let missing = || GpuModelError::Unsupported("MoE buffers missing".into());
    let logits = call.router_logits.as_mut().ok_or_else(missing)?;
    ops.linear(
        s,
        &a.normed,
        t,
        &m.router,
        ActivationMode::Unquantized,
        &mut a.quant,
        logits,
    )?;
    kernels.forward(
        s,
        &m.experts,
        &m.params,
        m.act,
        m.mode,
        &a.normed,
        logits,
        &m.bias,
        t,
        ws,
        &mut a.delta,
    )?;
    ops.add(s, &mut a.x, &a.delta, t * h)?;
    Ok(())
}
