//! Launchers for the dense model ops in `kernels/model_ops.hip`: row gather, RMSNorm, f32 and
//! MXFP4 linear layers (with dynamic MXFP4 activation quantization for W4A4), the latent-cache
//! append (norm, quantization, and the rotary embedding of keys and queries, in one launch),
//! absorbed MLA attention over a paged latent cache (flash-decoding: batched
//! absorptions, key splits, a combine), SwiGLU and residual adds.
//!
//! Each launcher computes what the CPU reference op of the same name computes
//! ([`crate::reference`]), in f32, up to summation order. Buffers may be longer than a call
//! needs (workspaces are sized for the largest batch); each is checked to be long enough.
//! The linear kernels are built for decode: each weight byte is read once per tile of
//! [`LINEAR_TOKEN_TILE`] tokens (so once per step for a decode batch of up to that many
//! sequences), 16 bytes per lane and load; larger batches reread the weight once per tile.
//! From [`LINEAR_TENSOR_MIN_TOKENS`] tokens, bf16 layers run on tensor cores where the device
//! has them (`kernels/linear_tc.hip`).

use half::bf16;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelArg, KernelSource, LaunchConfig, Stream,
    kernel_source,
};

use super::error::{GpuError, check_param};
use crate::reference::{ActivationMode, ActivationQuant, Linear, MlaDims, ScaleRule};

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/model_ops.hip");
const TENSOR_SOURCE: KernelSource<'static> = kernel_source!("../../kernels/linear_tc.hip");

/// Threads per block of every launch (`OPS_THREADS`).
const THREADS: u32 = 256;
/// MX block size.
const BLOCK: usize = 32;
/// Output rows per wave of the linear kernels (`LIN_ROWS`).
const LINEAR_ROWS: usize = 4;
/// Tokens that share one read of a linear layer's weight (`LIN_TOKS`).
pub const LINEAR_TOKEN_TILE: usize = 8;
/// Lanes per row group of the one-token batched kernels for short rows (`LIN_SHORT_LANES`):
/// rows of at most this many 16-byte chunks (the q absorption's k = 128 is 16 bf16 chunks) share
/// a wave between row groups instead of leaving lanes idle.
const LINEAR_SHORT_LANES: usize = 16;
/// Tokens from which a bf16 linear layer runs on tensor cores (where the device has them):
/// beyond one token tile the CUDA-core kernel reads the weights again for every tile.
pub const LINEAR_TENSOR_MIN_TOKENS: usize = LINEAR_TOKEN_TILE + 1;
/// The tensor-core linear kernel's tile (`LTC_BM` features × `LTC_BN` tokens × `LTC_BK`), its
/// threads (`LTC_THREADS`), and its pipeline depth (`LTC_PIPE`). It is compiled twice: 16-token
/// tiles for calls up to [`LTC_NARROW_UP_TO`] tokens, 64-token tiles beyond.
const LTC_FEATURES: usize = 128;
const LTC_NARROW_TOKENS: usize = 16;
const LTC_WIDE_TOKENS: usize = 64;
const LTC_NARROW_UP_TO: usize = 24;
const LTC_K: usize = 32;
const LTC_PIPE: usize = 4;
const LTC_THREADS: u32 = 256;

/// Shared memory of the tensor-core linear kernel with `tokens`-token tiles: `LTC_PIPE` stages
/// of a weight tile (rows padded to `2 · LTC_BK + 16` bytes) and an f32 activation tile (rows
/// padded to `4 · LTC_BK + 32` bytes).
const fn ltc_shared(tokens: usize) -> usize {
    LTC_PIPE * (LTC_FEATURES * (2 * LTC_K + 16) + tokens * (4 * LTC_K + 32))
}
/// The first compute capability with bf16 `mma.sync` (Ampere).
const LTC_MIN_CAPABILITY: u32 = 80;
/// Blocks a linear launch aims for before it stops splitting k over more waves: a few per
/// compute unit of the largest devices, so small projections still keep every unit busy.
const LINEAR_TARGET_BLOCKS: usize = 1024;
/// Heads of one attention block (`MLA_HEADS`): each key row it stages serves them all.
const MLA_HEADS: usize = 8;
/// Keys per shared-memory tile of the attention kernel (`MLA_KEYS`).
const MLA_KEYS: usize = 8;
/// Latent columns per thread of the attention kernel (`MLA_COLS`): `kv_lora` may be at most
/// `THREADS × MLA_COLS`.
const MLA_COLS: usize = 4;
/// Blocks an attention launch aims for before it stops splitting keys: a few per compute
/// unit, enough to spread one long sequence over the whole device.
const MLA_TARGET_BLOCKS: usize = 512;
/// Most key splits of one (token, head group) (the combine kernel takes at most `THREADS`).
const MLA_MAX_SPLITS: usize = 64;
/// Most keys one query of [`ModelOps::mla_attention`] may attend to: positions and key
/// indices are 32-bit on the device, with headroom for the split arithmetic. Nothing else in
/// the kernels bounds the context (no per-key shared memory).
pub const MLA_MAX_KEYS: usize = (i32::MAX / 2) as usize;

fn room<T: bytemuck::Pod>(
    name: &'static str,
    buffer: &DeviceBuffer<T>,
    needed: usize,
) -> Result<(), GpuError> {
    check_param(name, buffer.len(), buffer.len() >= needed, || {
        format!("buffer too short: {needed} elements needed")
    })
}

fn int(parameter: &'static str, value: usize) -> Result<i32, GpuError> {
    i32::try_from(value).map_err(|_| GpuError::Parameter {
        parameter,
        value: value.to_string(),
        reason: "does not fit a 32-bit kernel argument".into(),
    })
}

fn grid(parameter: &'static str, value: usize) -> Result<u32, GpuError> {
    u32::try_from(value).map_err(|_| GpuError::Parameter {
        parameter,
        value: value.to_string(),
        reason: "does not fit a 32-bit grid dimension".into(),
    })
}

/// A linear layer's weight on the device, in the format the checkpoint stores it.
#[derive(Debug)]
pub enum DeviceLinear {
    /// bf16 `[out, in]`: a dense weight whose every value is a bf16 (always so for a
    /// checkpoint's bf16 tensor, which the host holds widened to f32), stored exactly.
    Bf16 {
        /// The weight.
        weight: DeviceBuffer<bf16>,
        /// Output features.
        out: usize,
        /// Input features.
        input: usize,
    },
    /// f32 `[out, in]`: a dense weight with values bf16 cannot hold exactly.
    Dense {
        /// The weight.
        weight: DeviceBuffer<f32>,
        /// Output features.
        out: usize,
        /// Input features.
        input: usize,
    },
    /// MXFP4 `[out, in]`: packed codes `[out, in/2]`, E8M0 scales `[out, in/32]`.
    Mxfp4 {
        /// Packed E2M1 codes, low nibble = even element.
        packed: DeviceBuffer<u8>,
        /// E8M0 scales.
        scales: DeviceBuffer<u8>,
        /// Output features.
        out: usize,
        /// Input features.
        input: usize,
        /// How the layer's input is quantized at run time.
        activations: ActivationQuant,
    },
}

impl DeviceLinear {
    /// Uploads a reference weight as it is stored: a dense weight as bf16 when that is exact
    /// (see [`dense_is_bf16`]), else as f32; MXFP4 as codes and scales.
    pub fn upload(device: &Device, w: &Linear) -> Result<Self, GpuError> {
        Ok(match w {
            Linear::Dense(m) => {
                Self::dense(device, &m.data, m.rows, m.cols, dense_is_bf16(&m.data))?
            }
            Linear::Mxfp4 {
                weight,
                activations,
            } => DeviceLinear::Mxfp4 {
                packed: device.upload(weight.packed())?,
                scales: device.upload(weight.scales())?,
                out: weight.rows(),
                input: weight.cols(),
                activations: *activations,
            },
        })
    }

    /// The weights of `parts` stacked into one `[Σ out, input]` layer (the first part's rows
    /// first), so one launch computes all of them from a shared input, as SGLang's
    /// `fused_qkv_a_proj_with_mqa` does for `q_a_proj` and `kv_a_proj_with_mqa`. `None` when
    /// the parts are not stored alike (different input widths, dense and MXFP4, bf16-exact and
    /// not, different activation rules): the caller then runs them one by one.
    pub fn upload_stacked(device: &Device, parts: &[&Linear]) -> Result<Option<Self>, GpuError> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let input = first.in_features();
        if parts.iter().any(|p| p.in_features() != input) {
            return Ok(None);
        }
        let out = parts.iter().map(|p| p.out_features()).sum();
        let dense: Option<Vec<&[f32]>> = parts
            .iter()
            .map(|p| match p {
                Linear::Dense(m) => Some(&m.data[..]),
                Linear::Mxfp4 { .. } => None,
            })
            .collect();
        if let Some(dense) = dense {
            let narrow = dense.iter().map(|d| dense_is_bf16(d)).collect::<Vec<_>>();
            if narrow.iter().any(|&n| n != narrow[0]) {
                return Ok(None);
            }
            return Self::dense(device, &dense.concat(), out, input, narrow[0]).map(Some);
        }
        let mx: Option<Vec<_>> = parts
            .iter()
            .map(|p| match p {
                Linear::Mxfp4 {
                    weight,
                    activations,
                } => Some((weight, *activations)),
                Linear::Dense(_) => None,
            })
            .collect();
        let Some(mx) = mx else { return Ok(None) };
        let activations = mx[0].1;
        if mx.iter().any(|(_, a)| *a != activations) {
            return Ok(None);
        }
        let concat = |bytes: fn(&crate::reference::Mxfp4Matrix) -> &[u8]| {
            mx.iter()
                .flat_map(|(w, _)| bytes(w))
                .copied()
                .collect::<Vec<u8>>()
        };
        Ok(Some(DeviceLinear::Mxfp4 {
            packed: device.upload(&concat(|w| w.packed()))?,
            scales: device.upload(&concat(|w| w.scales()))?,
            out,
            input,
            activations,
        }))
    }

    /// A dense `[out, input]` weight, as bf16 when `narrow` (the caller has checked that
    /// every value is one), else as f32.
    fn dense(
        device: &Device,
        data: &[f32],
        out: usize,
        input: usize,
        narrow: bool,
    ) -> Result<Self, GpuError> {
        Ok(if narrow {
            let narrow: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
            DeviceLinear::Bf16 {
                weight: device.upload(&narrow)?,
                out,
                input,
            }
        } else {
            DeviceLinear::Dense {
                weight: device.upload(data)?,
                out,
                input,
            }
        })
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match self {
            DeviceLinear::Bf16 { out, .. }
            | DeviceLinear::Dense { out, .. }
            | DeviceLinear::Mxfp4 { out, .. } => *out,
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match self {
            DeviceLinear::Bf16 { input, .. }
            | DeviceLinear::Dense { input, .. }
            | DeviceLinear::Mxfp4 { input, .. } => *input,
        }
    }

    /// Bytes the weight occupies on the device.
    pub fn device_bytes(&self) -> usize {
        match self {
            DeviceLinear::Bf16 { weight, .. } => weight.len() * 2,
            DeviceLinear::Dense { weight, .. } => weight.len() * 4,
            DeviceLinear::Mxfp4 { packed, scales, .. } => packed.len() + scales.len(),
        }
    }
}

/// Whether every value of a dense weight is exactly a bf16 (NaN payloads included), so it can
/// be stored as bf16 with nothing lost. [`DeviceLinear::upload`] decides by this.
pub fn dense_is_bf16(values: &[f32]) -> bool {
    values.iter().all(|v| v.to_bits() & 0xffff == 0)
}

/// Bytes [`DeviceLinear::upload`] stores for a reference weight.
pub fn linear_device_bytes(w: &Linear) -> usize {
    match w {
        Linear::Dense(m) if dense_is_bf16(&m.data) => m.data.len() * 2,
        Linear::Dense(m) => m.data.len() * 4,
        Linear::Mxfp4 { weight, .. } => weight.packed().len() + weight.scales().len(),
    }
}

/// Where the keys of each query of [`ModelOps::mla_attention`] live in a paged latent cache.
/// The cache is an array of blocks of `block_tokens` rows; a sequence's block table lists its
/// blocks in order, so its key `j` is cache row
/// `tables[table_offsets[t] + j / block_tokens] * block_tokens + j % block_tokens`.
#[derive(Debug, Clone, Copy)]
pub struct PagedKeys<'a> {
    /// The block tables of the call's sequences, one after another (block indices).
    pub tables: &'a DeviceBuffer<i32>,
    /// Per query: where its sequence's block table starts in `tables`.
    pub table_offsets: &'a DeviceBuffer<i32>,
    /// Per query: its position; it attends to keys `0..=position`.
    pub positions: &'a DeviceBuffer<i32>,
    /// Rows per cache block (a power of two, so the kernel maps keys with a shift and a mask).
    pub block_tokens: usize,
    /// At least `position + 1` of every query, at most [`MLA_MAX_KEYS`]. Only its
    /// power-of-two bucket matters (it picks the launch shape, see [`mla_launch`]); the
    /// kernels read each query's own key count from `positions`.
    pub max_keys: usize,
}

/// `kv_b_proj` arranged for the absorbed attention's two batched linear layers: per head,
/// `W_UK[h]ᵀ` (the query absorption `q_lat = W_UK[h]ᵀ·q_nope`) and `W_UV[h]` (the output
/// absorption `out = W_UV[h]·o_lat`), each head's matrix stacked after the previous one's.
/// Stored bf16 when every value of `kv_b_proj` is a bf16 (a bf16 checkpoint tensor, or an
/// MXFP4 one: an E2M1 code times a power of two has at most two significant bits), else f32:
/// either way exactly the values the CPU reference multiplies by.
#[derive(Debug)]
pub struct MlaWeights {
    /// `W_UK[h]ᵀ` of every head: `[heads·kv_lora, qk_nope]`.
    pub uk_t: DeviceLinear,
    /// `W_UV[h]` of every head: `[heads·v, kv_lora]`.
    pub uv: DeviceLinear,
}

impl MlaWeights {
    /// Splits and uploads `kv_b_proj` (`[heads·(qk_nope + v), kv_lora]`).
    pub fn upload(device: &Device, kv_b: &Linear, dims: &MlaDims) -> Result<Self, GpuError> {
        let d = dims;
        let kv_b = kv_b.to_dense();
        let head_rows = d.qk_nope + d.v;
        check_param(
            "kv_b_proj",
            kv_b.rows,
            kv_b.rows == d.heads * head_rows && kv_b.cols == d.kv_lora,
            || {
                format!(
                    "[{}, {}] is not [heads·(qk_nope + v), kv_lora] = [{}, {}]",
                    kv_b.rows,
                    kv_b.cols,
                    d.heads * head_rows,
                    d.kv_lora
                )
            },
        )?;
        let mut uk_t = vec![0f32; d.heads * d.kv_lora * d.qk_nope];
        let mut uv = Vec::with_capacity(d.heads * d.v * d.kv_lora);
        for (h, head) in kv_b.data.chunks_exact(head_rows * d.kv_lora).enumerate() {
            let (w_uk, w_uv) = head.split_at(d.qk_nope * d.kv_lora);
            let t = &mut uk_t[h * d.kv_lora * d.qk_nope..(h + 1) * d.kv_lora * d.qk_nope];
            for (n, row) in w_uk.chunks_exact(d.kv_lora).enumerate() {
                for (c, &w) in row.iter().enumerate() {
                    t[c * d.qk_nope + n] = w;
                }
            }
            uv.extend_from_slice(w_uv);
        }
        let narrow = dense_is_bf16(&kv_b.data);
        Ok(Self {
            uk_t: DeviceLinear::dense(device, &uk_t, d.heads * d.kv_lora, d.qk_nope, narrow)?,
            uv: DeviceLinear::dense(device, &uv, d.heads * d.v, d.kv_lora, narrow)?,
        })
    }

    /// Bytes on the device.
    pub fn device_bytes(&self) -> usize {
        self.uk_t.device_bytes() + self.uv.device_bytes()
    }
}

/// Bytes [`MlaWeights::upload`] stores for `kv_b_proj`.
pub fn mla_weight_bytes(kv_b: &Linear) -> usize {
    let elements = kv_b.out_features() * kv_b.in_features();
    match kv_b {
        Linear::Dense(m) if !dense_is_bf16(&m.data) => elements * 4,
        Linear::Dense(_) | Linear::Mxfp4 { .. } => elements * 2,
    }
}

/// How an attention call is spread over blocks: each block takes `group` heads of one token
/// over one of `splits` key ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaLaunch {
    /// Heads per block (a power of two, at most 8): they share every key row the block reads.
    pub group: usize,
    /// Key ranges per (token, head group); with more than one, a combine kernel merges them.
    pub splits: usize,
}

/// The launch shape of an attention call of `tokens` queries with at most `max_keys` keys:
/// aim for [`MLA_TARGET_BLOCKS`] blocks, first by splitting the keys (up to their tiles
/// rounded up to a power of two, at most [`MLA_MAX_SPLITS`]), then, when the keys are too few
/// for that (short decode contexts), by giving each block fewer heads. It depends only on
/// `tokens`, `heads` and the power-of-two bucket of `max_keys`, so a decode batch's grids
/// change only when its longest sequence crosses a power of two.
pub fn mla_launch(tokens: usize, heads: usize, max_keys: usize) -> MlaLaunch {
    let tiles = max_keys
        .clamp(1, MLA_MAX_KEYS)
        .next_power_of_two()
        .div_ceil(MLA_KEYS)
        .min(MLA_MAX_SPLITS);
    let blocks = |group: usize| tokens.max(1) * heads.max(1).div_ceil(group);
    let mut group = MLA_HEADS;
    while group > 1 && blocks(group) * tiles < MLA_TARGET_BLOCKS {
        group /= 2;
    }
    MlaLaunch {
        group,
        splits: (MLA_TARGET_BLOCKS / blocks(group)).clamp(1, tiles),
    }
}

/// Scratch of [`ModelOps::mla_attention`] for up to `max_tokens` queries: the absorbed
/// queries (overwritten by the latent context) and the key splits' partial results.
#[derive(Debug)]
pub struct MlaWorkspace {
    latent: DeviceBuffer<f32>,
    partials: DeviceBuffer<f32>,
}

impl MlaWorkspace {
    /// Allocates the workspace for calls of up to `max_tokens` queries.
    pub fn new(device: &Device, dims: &MlaDims, max_tokens: usize) -> Result<Self, GpuError> {
        let (latent, partials) = Self::lengths(dims, max_tokens);
        Ok(Self {
            latent: device.alloc_zeroed(latent)?,
            partials: device.alloc_zeroed(partials)?,
        })
    }

    /// Bytes [`Self::new`] allocates.
    pub fn bytes(dims: &MlaDims, max_tokens: usize) -> usize {
        let (latent, partials) = Self::lengths(dims, max_tokens);
        (latent + partials) * size_of::<f32>()
    }

    /// f32 lengths of the two buffers (at least 1 each). Partials exist only for calls split
    /// over keys, which [`mla_launch`] allows only while tokens × splits stays under the
    /// target block count, so their size does not grow with `max_tokens`: the largest over
    /// every token count and key bucket.
    fn lengths(d: &MlaDims, max_tokens: usize) -> (usize, usize) {
        let buckets = (0..=MLA_MAX_KEYS.ilog2() + 1).map(|b| 1usize << b);
        let split_rows = (1..=max_tokens.min(MLA_TARGET_BLOCKS))
            .flat_map(|t| buckets.clone().map(move |keys| (t, keys)))
            .map(|(t, keys)| match mla_launch(t, d.heads, keys).splits {
                1 => 0,
                s => t * s,
            })
            .max()
            .unwrap_or(0);
        (
            (max_tokens * d.heads * d.kv_lora).max(1),
            (split_rows * d.heads * (d.kv_lora + 2)).max(1),
        )
    }
}

/// The queries whose rope parts [`ModelOps::kv_append`] rotates with the new keys: token `t`'s
/// `heads` heads of `nope + rope` values each, head `h` at `q[(t·heads + h)·(nope + rope) ..]`,
/// its rope part the last `rope` values.
#[derive(Debug)]
pub struct QueryRope<'a> {
    pub q: &'a mut DeviceBuffer<f32>,
    pub heads: usize,
    pub nope: usize,
}

/// The dense model ops compiled for one device.
#[derive(Debug)]
pub struct ModelOps {
    wave_size: u32,
    max_shared_memory: u32,
    gather_rows: Function,
    gather_rows_bf16: Function,
    rmsnorm: Function,
    linear_f32: Function,
    linear_bf16: Function,
    linear_mxfp4: Function,
    /// bf16 weights on tensor cores (`linear_tc.hip`), 16- and 64-token tiles; None where the
    /// device has none.
    linear_bf16_tc: Option<[Function; 2]>,
    linear_batched_f32: Function,
    linear_batched_bf16: Function,
    /// The batched layers for one token over short rows (see [`LINEAR_SHORT_LANES`]).
    linear_batched_f32_short: Function,
    linear_batched_bf16_short: Function,
    fake_quantize: Function,
    kv_append: Function,
    mla_split: Function,
    mla_combine: Function,
    silu_mul: Function,
    add: Function,
}

impl ModelOps {
    /// Compiles (or loads from the kernel cache) the ops for `device`.
    pub fn compile(device: &Device) -> Result<Self, GpuError> {
        if device.is_cpu() {
            return Err(GpuError::NotAGpu {
                device: device.id(),
            });
        }
        let defines = Defines::new()
            .set("OPS_THREADS", THREADS)
            .set("LIN_ROWS", LINEAR_ROWS)
            .set("LIN_TOKS", LINEAR_TOKEN_TILE)
            .set("LIN_SHORT_LANES", LINEAR_SHORT_LANES)
            .set("MLA_HEADS", MLA_HEADS)
            .set("MLA_KEYS", MLA_KEYS)
            .set("MLA_COLS", MLA_COLS);
        let module = device.compile(&SOURCE, &defines)?;
        let f = |name: &str| module.function(name);
        let tensor_linear = |tokens: usize| -> Result<Function, GpuError> {
            let defines = Defines::new()
                .set("LTC_PIPE", LTC_PIPE)
                .set("LTC_BN", tokens);
            Ok(device
                .compile(&TENSOR_SOURCE, &defines)?
                .function("ops_linear_bf16_tc")?)
        };
        let linear_bf16_tc = match super::nvidia_capability(&device.info().arch) {
            Some(cc) if cc >= LTC_MIN_CAPABILITY => Some([
                tensor_linear(LTC_NARROW_TOKENS)?,
                tensor_linear(LTC_WIDE_TOKENS)?,
            ]),
            _ => None,
        };
        Ok(ModelOps {
            wave_size: device.info().wave_size,
            max_shared_memory: device.info().max_shared_memory_per_block,
            gather_rows: f("ops_gather_rows")?,
            gather_rows_bf16: f("ops_gather_rows_bf16")?,
            rmsnorm: f("ops_rmsnorm")?,
            linear_f32: f("ops_linear_f32")?,
            linear_bf16: f("ops_linear_bf16")?,
            linear_mxfp4: f("ops_linear_mxfp4")?,
            linear_bf16_tc,
            linear_batched_f32: f("ops_linear_batched_f32")?,
            linear_batched_bf16: f("ops_linear_batched_bf16")?,
            linear_batched_f32_short: f("ops_linear_batched_f32_short")?,
            linear_batched_bf16_short: f("ops_linear_batched_bf16_short")?,
            fake_quantize: f("ops_fake_quantize")?,
            kv_append: f("ops_kv_append")?,
            mla_split: f("ops_mla_split")?,
            mla_combine: f("ops_mla_combine")?,
            silu_mul: f("ops_silu_mul")?,
            add: f("ops_add")?,
        })
    }

    /// `out[r] = table[ids[r]]` for `rows` rows of `cols` values (embedding lookup; picking
    /// the rows to take logits of). Ids must be below the table's row count.
    pub fn gather_rows(
        &self,
        stream: &Stream,
        table: &DeviceBuffer<f32>,
        ids: &DeviceBuffer<i32>,
        rows: usize,
        cols: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        room("ids", ids, rows)?;
        room("out", out, rows * cols)?;
        stream.launch(
            &self.gather_rows,
            LaunchConfig::linear(rows * cols, THREADS),
            &[table, ids, &int("rows", rows)?, &int("cols", cols)?, out],
        )?;
        Ok(())
    }

    /// The rows `ids` of a dense weight table (the embedding), widened to f32 in `out`. Ids
    /// must be below the table's row count.
    pub fn embed_rows(
        &self,
        stream: &Stream,
        table: &DeviceLinear,
        ids: &DeviceBuffer<i32>,
        rows: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        let cols = table.in_features();
        match table {
            DeviceLinear::Dense { weight, .. } => {
                self.gather_rows(stream, weight, ids, rows, cols, out)
            }
            DeviceLinear::Bf16 { weight, .. } => {
                room("ids", ids, rows)?;
                room("out", out, rows * cols)?;
                stream.launch(
                    &self.gather_rows_bf16,
                    LaunchConfig::linear(rows * cols, THREADS),
                    &[weight, ids, &int("rows", rows)?, &int("cols", cols)?, out],
                )?;
                Ok(())
            }
            DeviceLinear::Mxfp4 { .. } => Err(GpuError::Parameter {
                parameter: "table",
                value: "MXFP4".into(),
                reason: "an embedding table is dense (bf16 or f32)".into(),
            }),
        }
    }

    /// [`crate::reference::rmsnorm`] of `rows` rows of `weight.len()` values read every
    /// `x_stride` values of `x`, written every `out_stride` values of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        stream: &Stream,
        x: &DeviceBuffer<f32>,
        x_stride: usize,
        weight: &DeviceBuffer<f32>,
        eps: f32,
        rows: usize,
        out: &mut DeviceBuffer<f32>,
        out_stride: usize,
    ) -> Result<(), GpuError> {
        let d = weight.len();
        check_param("x_stride", x_stride, x_stride >= d, || {
            format!("at least the row width {d}")
        })?;
        room("x", x, rows.saturating_sub(1) * x_stride + d)?;
        self.launch_rmsnorm(
            stream, x, x_stride, None, weight, eps, rows, out, out_stride,
        )
    }

    /// The residual add and the next norm in one launch: `x += delta`, then `out =
    /// rmsnorm(x)`, over `rows` contiguous rows of `weight.len()` values (a decode step's
    /// `add` + `rmsnorm`, one kernel boundary less).
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm(
        &self,
        stream: &Stream,
        x: &mut DeviceBuffer<f32>,
        delta: &DeviceBuffer<f32>,
        weight: &DeviceBuffer<f32>,
        eps: f32,
        rows: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        let d = weight.len();
        room("x", x, rows * d)?;
        room("delta", delta, rows * d)?;
        self.launch_rmsnorm(stream, x, d, Some(delta), weight, eps, rows, out, d)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_rmsnorm(
        &self,
        stream: &Stream,
        x: &DeviceBuffer<f32>,
        x_stride: usize,
        delta: Option<&DeviceBuffer<f32>>,
        weight: &DeviceBuffer<f32>,
        eps: f32,
        rows: usize,
        out: &mut DeviceBuffer<f32>,
        out_stride: usize,
    ) -> Result<(), GpuError> {
        let d = weight.len();
        room("out", out, rows.saturating_sub(1) * out_stride + d)?;
        if rows == 0 {
            return Ok(());
        }
        stream.launch(
            &self.rmsnorm,
            LaunchConfig {
                grid: [grid("rows", rows)?, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[
                x,
                &int("x_stride", x_stride)?,
                &i32::from(delta.is_some()),
                // Not read without the add.
                delta.unwrap_or(x),
                weight,
                &int("d", d)?,
                &eps,
                out,
                &int("out_stride", out_stride)?,
            ],
        )?;
        Ok(())
    }

    /// [`crate::reference::linear`]: `out[m, out] = act(x)[m, in] · Wᵀ`, where a W4A4 layer
    /// fake-quantizes its input into `scratch` first (when `mode` allows it).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        stream: &Stream,
        x: &DeviceBuffer<f32>,
        m: usize,
        w: &DeviceLinear,
        mode: ActivationMode,
        scratch: &mut DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        let (n, k) = (w.out_features(), w.in_features());
        room("x", x, m * k)?;
        room("out", out, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let waves = (THREADS / self.wave_size) as usize;
        let chunk = match w {
            DeviceLinear::Mxfp4 { .. } => BLOCK,
            DeviceLinear::Bf16 { .. } | DeviceLinear::Dense { .. } => 8,
        };
        let tiles = m.div_ceil(LINEAR_TOKEN_TILE);
        let ksplit = k_split(n, k.div_ceil(chunk), tiles, waves, self.wave_size as usize);
        let rows_per_block = LINEAR_ROWS * waves / ksplit;
        let config = LaunchConfig {
            grid: [
                grid("out features", n.div_ceil(rows_per_block))?,
                grid("token tiles", tiles)?,
                1,
            ],
            block: [THREADS, 1, 1],
            shared_mem_bytes: 0,
        };
        let (mi, ki, ni) = (int("m", m)?, int("in", k)?, int("out", n)?);
        let ks = int("ksplit", ksplit)?;
        match w {
            DeviceLinear::Bf16 { weight, .. }
                if m >= LINEAR_TENSOR_MIN_TOKENS
                    && k.is_multiple_of(LTC_K)
                    && let Some([narrow, wide]) = &self.linear_bf16_tc =>
            {
                let (kernel, tokens) = if m <= LTC_NARROW_UP_TO {
                    (narrow, LTC_NARROW_TOKENS)
                } else {
                    (wide, LTC_WIDE_TOKENS)
                };
                let config = LaunchConfig {
                    grid: [
                        grid("out features", n.div_ceil(LTC_FEATURES))?,
                        grid("token tiles", m.div_ceil(tokens))?,
                        1,
                    ],
                    block: [LTC_THREADS, 1, 1],
                    shared_mem_bytes: ltc_shared(tokens) as u32,
                };
                stream.launch(kernel, config, &[x, weight, &mi, &ki, &ni, out])?
            }
            DeviceLinear::Bf16 { weight, .. } => stream.launch(
                &self.linear_bf16,
                config,
                &[x, weight, &mi, &ki, &ni, &ks, out],
            )?,
            DeviceLinear::Dense { weight, .. } => stream.launch(
                &self.linear_f32,
                config,
                &[x, weight, &mi, &ki, &ni, &ks, out],
            )?,
            DeviceLinear::Mxfp4 {
                packed,
                scales,
                activations,
                ..
            } => {
                let input = match (activations, mode) {
                    (ActivationQuant::Mxfp4(rule), ActivationMode::Quantized) => {
                        self.fake_quantize(stream, x, m * k, *rule, scratch)?;
                        &*scratch
                    }
                    _ => x,
                };
                stream.launch(
                    &self.linear_mxfp4,
                    config,
                    &[input, packed, scales, &mi, &ki, &ni, &ks, out],
                )?
            }
        }
        Ok(())
    }

    /// [`crate::reference::fake_quantize_rows`] of the first `elements` values of `x` (a
    /// multiple of 32; rows of any multiple of 32 quantize the same per block).
    pub fn fake_quantize(
        &self,
        stream: &Stream,
        x: &DeviceBuffer<f32>,
        elements: usize,
        rule: ScaleRule,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        check_param("elements", elements, elements.is_multiple_of(BLOCK), || {
            format!("a multiple of {BLOCK}")
        })?;
        room("x", x, elements)?;
        room("out", out, elements)?;
        let blocks = elements / BLOCK;
        let even = i32::from(rule == ScaleRule::Even);
        stream.launch(
            &self.fake_quantize,
            LaunchConfig::linear(blocks, THREADS),
            &[x, &int("blocks", blocks)?, &even, out],
        )?;
        Ok(())
    }

    /// The new latent-cache rows of `tokens` tokens, and their queries' rope parts, in one
    /// launch: token `t`'s `kv_a_proj` output, `kv_lora + rope` values at
    /// `kv[t·stride + offset ..]`, gives the latent ([`crate::reference::rmsnorm`] by `norm`,
    /// whose length is `kv_lora`, then [`crate::reference::fake_quantize_rows`] by `quant`:
    /// what `kv_b_proj` does to its input) and the rope key ([`crate::reference::Rope::rotate`]
    /// by `cos`/`sin[t]`, which are `[tokens, rope / 2]`). Both go to cache row `rows[t]` and
    /// nowhere else; rows must be inside the cache. The token's query heads (see
    /// [`QueryRope`]) get the same rotation of their rope parts, in place.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(
        &self,
        stream: &Stream,
        kv: &DeviceBuffer<f32>,
        stride: usize,
        offset: usize,
        norm: &DeviceBuffer<f32>,
        eps: f32,
        quant: ActivationQuant,
        rope: usize,
        cos: &DeviceBuffer<f32>,
        sin: &DeviceBuffer<f32>,
        rows: &DeviceBuffer<i32>,
        tokens: usize,
        cache_latent: &mut DeviceBuffer<f32>,
        cache_rope: &mut DeviceBuffer<f32>,
        query: QueryRope<'_>,
    ) -> Result<(), GpuError> {
        let kv_lora = norm.len();
        check_param("rope", rope, rope.is_multiple_of(2), || "even".into())?;
        let QueryRope { q, heads, nope } = query;
        let q_head = nope + rope;
        check_param("stride", stride, offset + kv_lora + rope <= stride, || {
            format!("at least offset {offset} + kv_lora {kv_lora} + rope {rope}")
        })?;
        let quant: i32 = match quant {
            ActivationQuant::None => 0,
            ActivationQuant::Mxfp4(rule) => {
                check_param("kv_lora", kv_lora, kv_lora.is_multiple_of(BLOCK), || {
                    format!("a multiple of {BLOCK} to quantize the latent")
                })?;
                if rule == ScaleRule::Even { 2 } else { 1 }
            }
        };
        if tokens == 0 {
            return Ok(());
        }
        room("kv", kv, (tokens - 1) * stride + offset + kv_lora + rope)?;
        room("cos", cos, tokens * rope / 2)?;
        room("sin", sin, tokens * rope / 2)?;
        room("rows", rows, tokens)?;
        room("q", q, tokens * heads * q_head)?;
        stream.launch(
            &self.kv_append,
            LaunchConfig {
                grid: [grid("tokens", tokens)?, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[
                kv,
                &int("stride", stride)?,
                &int("offset", offset)?,
                norm,
                &int("kv_lora", kv_lora)?,
                &int("rope", rope)?,
                &eps,
                &quant,
                cos,
                sin,
                rows,
                cache_latent,
                cache_rope,
                q,
                &int("heads", heads)?,
                &int("q_head", q_head)?,
                &int("nope", nope)?,
            ],
        )?;
        Ok(())
    }

    /// [`crate::reference::mla_attention`] for `tokens` queries of any sequences over a paged
    /// latent cache (see [`PagedKeys`]), in four launches: the query absorption
    /// `W_UK[h]ᵀ·q_nope` of every (token, head) as one batched linear layer, the scores,
    /// softmax and latent context over blocks of (up to 8 heads, a key range, a token) (see
    /// [`mla_launch`]), a combine of the key ranges (only when there are several), and the
    /// output absorption `W_UV[h]·o_lat` as a batched linear layer. `workspace` must have been
    /// sized for at least `tokens`.
    ///
    /// Shapes for graph capture: the grids depend on `tokens`, `dims` and [`mla_launch`],
    /// which depends only on `tokens` and the power-of-two bucket of `keys.max_keys`. Every
    /// per-query quantity (positions, block tables and their offsets) is read on the device,
    /// so a captured launch replays correctly for any key lengths within the bucket it was
    /// captured with.
    #[allow(clippy::too_many_arguments)]
    pub fn mla_attention(
        &self,
        stream: &Stream,
        q: &DeviceBuffer<f32>,
        cache_latent: &DeviceBuffer<f32>,
        cache_rope: &DeviceBuffer<f32>,
        weights: &MlaWeights,
        keys: &PagedKeys<'_>,
        tokens: usize,
        dims: &MlaDims,
        softmax_scale: f32,
        workspace: &mut MlaWorkspace,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        let d = dims;
        let q_head = d.qk_nope + d.qk_rope;
        room("q", q, tokens * d.heads * q_head)?;
        let shaped = |w: &DeviceLinear, out: usize, input: usize| {
            w.out_features() == out && w.in_features() == input
        };
        check_param(
            "kv_b",
            d.heads,
            shaped(&weights.uk_t, d.heads * d.kv_lora, d.qk_nope)
                && shaped(&weights.uv, d.heads * d.v, d.kv_lora),
            || "absorption weights of other dimensions than the call's heads".into(),
        )?;
        room("table_offsets", keys.table_offsets, tokens)?;
        room("positions", keys.positions, tokens)?;
        room("out", out, tokens * d.heads * d.v)?;
        let b = keys.block_tokens;
        check_param("block_tokens", b, b.is_power_of_two(), || {
            "must be a power of two".into()
        })?;
        check_param(
            "max_keys",
            keys.max_keys,
            keys.max_keys <= MLA_MAX_KEYS,
            || format!("the attention kernels index at most {MLA_MAX_KEYS} keys per query"),
        )?;
        let cols = THREADS as usize * MLA_COLS;
        check_param("kv_lora", d.kv_lora, d.kv_lora <= cols, || {
            format!("the attention kernel holds at most {cols} latent values per head")
        })?;
        // Dynamic shared memory: the group's queries and one key tile, latent and rope parts.
        let smem = (MLA_HEADS + MLA_KEYS) * (d.kv_lora + d.qk_rope) * size_of::<f32>();
        let static_smem = (MLA_HEADS * MLA_KEYS + 3 * MLA_HEADS) * size_of::<f32>();
        check_param(
            "kv_lora",
            d.kv_lora,
            smem + static_smem <= self.max_shared_memory as usize,
            || {
                format!(
                    "the attention kernel needs {} bytes of shared memory, the device has {}",
                    smem + static_smem,
                    self.max_shared_memory
                )
            },
        )?;
        if tokens == 0 {
            return Ok(());
        }
        let MlaLaunch { group, splits } = mla_launch(tokens, d.heads, keys.max_keys);
        room("workspace", &workspace.latent, tokens * d.heads * d.kv_lora)?;
        if splits > 1 {
            room(
                "workspace",
                &workspace.partials,
                tokens * splits * d.heads * (d.kv_lora + 2),
            )?;
        }
        let ws = workspace;
        let lat_stride = d.heads * d.kv_lora;
        self.linear_batched(
            stream,
            (q, d.heads * q_head, q_head),
            tokens,
            &weights.uk_t,
            d.heads,
            (&mut ws.latent, lat_stride, d.kv_lora),
        )?;
        let groups = d.heads.div_ceil(group);
        stream.launch(
            &self.mla_split,
            LaunchConfig {
                grid: [grid("attention blocks", groups * splits * tokens)?, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: grid("attention shared memory", smem)?,
            },
            &[
                q,
                &ws.latent,
                cache_latent,
                cache_rope,
                keys.tables,
                keys.table_offsets,
                keys.positions,
                &(b.trailing_zeros() as i32),
                &int("heads", d.heads)?,
                &int("group", group)?,
                &int("qk_nope", d.qk_nope)?,
                &int("qk_rope", d.qk_rope)?,
                &int("kv_lora", d.kv_lora)?,
                &softmax_scale,
                &int("splits", splits)?,
                &ws.partials,
            ],
        )?;
        if splits > 1 {
            stream.launch(
                &self.mla_combine,
                LaunchConfig {
                    grid: [grid("tokens × heads", tokens * d.heads)?, 1, 1],
                    block: [THREADS, 1, 1],
                    shared_mem_bytes: 0,
                },
                &[
                    &ws.partials,
                    &int("heads", d.heads)?,
                    &int("kv_lora", d.kv_lora)?,
                    &int("splits", splits)?,
                    &ws.latent,
                ],
            )?;
        }
        self.linear_batched(
            stream,
            (&ws.latent, lat_stride, d.kv_lora),
            tokens,
            &weights.uv,
            d.heads,
            (out, d.heads * d.v, d.v),
        )
    }

    /// `batches` linear layers at once (the attention's per-head absorptions): `w` stacks
    /// `batches` dense `[n, k]` weights; batch `b` of token `t` reads its input at
    /// `x[t·x_stride + b·x_batch ..]` and writes `out[t·out_stride + b·out_batch ..]` (each
    /// buffer given as `(buffer, stride, batch offset)`).
    fn linear_batched(
        &self,
        stream: &Stream,
        (x, x_stride, x_batch): (&DeviceBuffer<f32>, usize, usize),
        m: usize,
        w: &DeviceLinear,
        batches: usize,
        (out, out_stride, out_batch): (&mut DeviceBuffer<f32>, usize, usize),
    ) -> Result<(), GpuError> {
        let (rows, k) = (w.out_features(), w.in_features());
        check_param(
            "batches",
            batches,
            batches > 0 && rows % batches == 0,
            || format!("does not divide the weight's {rows} rows"),
        )?;
        let n = rows / batches;
        if m == 0 || n == 0 {
            return Ok(());
        }
        room("x", x, (m - 1) * x_stride + (batches - 1) * x_batch + k)?;
        room(
            "out",
            out,
            (m - 1) * out_stride + (batches - 1) * out_batch + n,
        )?;
        let waves = (THREADS / self.wave_size) as usize;
        // One token over short rows takes the short-row kernels: units of LINEAR_SHORT_LANES
        // lanes, k never split.
        let short = m == 1
            && k.div_ceil(8) <= LINEAR_SHORT_LANES
            && (self.wave_size as usize).is_multiple_of(LINEAR_SHORT_LANES);
        let (rows_per_block, ksplit) = if short {
            (LINEAR_ROWS * THREADS as usize / LINEAR_SHORT_LANES, 1)
        } else {
            // Blocks of all batches count towards the target, as if one layer of rows·batches.
            let tiles = m.div_ceil(LINEAR_TOKEN_TILE);
            let ksplit = k_split(rows, k.div_ceil(8), tiles, waves, self.wave_size as usize);
            (LINEAR_ROWS * waves / ksplit, ksplit)
        };
        let config = LaunchConfig {
            grid: [
                grid("out features", n.div_ceil(rows_per_block))?,
                grid("token tiles", m.div_ceil(LINEAR_TOKEN_TILE))?,
                grid("batches", batches)?,
            ],
            block: [THREADS, 1, 1],
            shared_mem_bytes: 0,
        };
        let (xs, xb) = (int("x_stride", x_stride)?, int("x_batch", x_batch)?);
        let (mi, ki, ni) = (int("m", m)?, int("in", k)?, int("out", n)?);
        let ks = int("ksplit", ksplit)?;
        let (os, ob) = (int("out_stride", out_stride)?, int("out_batch", out_batch)?);
        let (kernels, weight): (_, &dyn KernelArg) = match w {
            DeviceLinear::Bf16 { weight, .. } => (
                (&self.linear_batched_bf16_short, &self.linear_batched_bf16),
                weight,
            ),
            DeviceLinear::Dense { weight, .. } => (
                (&self.linear_batched_f32_short, &self.linear_batched_f32),
                weight,
            ),
            DeviceLinear::Mxfp4 { .. } => {
                return Err(GpuError::Parameter {
                    parameter: "w",
                    value: "MXFP4".into(),
                    reason: "the batched linear layers take dense (bf16 or f32) weights".into(),
                });
            }
        };
        if short {
            stream.launch(
                kernels.0,
                config,
                &[x, &xs, &xb, weight, &mi, &ki, &ni, out, &os, &ob],
            )?;
        } else {
            stream.launch(
                kernels.1,
                config,
                &[x, &xs, &xb, weight, &mi, &ki, &ni, &ks, out, &os, &ob],
            )?;
        }
        Ok(())
    }

    /// [`crate::reference::silu_mul`] of the first `n` values.
    pub fn silu_mul(
        &self,
        stream: &Stream,
        gate: &DeviceBuffer<f32>,
        up: &DeviceBuffer<f32>,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        room("gate", gate, n)?;
        room("up", up, n)?;
        room("out", out, n)?;
        stream.launch(
            &self.silu_mul,
            LaunchConfig::linear(n, THREADS),
            &[gate, up, &int("n", n)?, out],
        )?;
        Ok(())
    }

    /// `x[..n] += d[..n]`.
    pub fn add(
        &self,
        stream: &Stream,
        x: &mut DeviceBuffer<f32>,
        d: &DeviceBuffer<f32>,
        n: usize,
    ) -> Result<(), GpuError> {
        room("x", x, n)?;
        room("d", d, n)?;
        stream.launch(
            &self.add,
            LaunchConfig::linear(n, THREADS),
            &[x, d, &int("n", n)?],
        )?;
        Ok(())
    }
}

/// How many waves of a block share one group of output rows, splitting k between them: the
/// smallest power of two (up to the block's `waves`) that gives the launch
/// [`LINEAR_TARGET_BLOCKS`] blocks, as long as every wave keeps at least two loads per lane.
fn k_split(n: usize, k_chunks: usize, token_tiles: usize, waves: usize, wave_size: usize) -> usize {
    let blocks = |ks: usize| n.div_ceil(LINEAR_ROWS * waves / ks) * token_tiles;
    let mut ks = 1;
    while ks < waves && blocks(ks) < LINEAR_TARGET_BLOCKS && k_chunks >= 2 * 2 * ks * wave_size {
        ks *= 2;
    }
    ks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_exactness_is_decided_by_the_low_bits() {
        let exact: Vec<f32> = [1.0f32, -0.375, 3.0e38, 0.0, -0.0]
            .iter()
            .map(|&v| bf16::from_f32(v).to_f32())
            .collect();
        assert!(dense_is_bf16(&exact));
        assert!(!dense_is_bf16(&[1.0, 1.0 + f32::EPSILON]));
        assert!(dense_is_bf16(&[]));
    }

    #[test]
    fn attention_fills_the_device_with_splits_then_smaller_head_groups() {
        let launch = |group, splits| MlaLaunch { group, splits };
        // Kimi-K2.5, 64 heads. c=1 with 20 keys (4 tiles in the 32 bucket): 8 heads a block
        // give 8 × 4 = 32 blocks, so groups shrink to one head: 64 × 4 = 256 blocks.
        assert_eq!(mla_launch(1, 64, 20), launch(1, 4));
        assert_eq!(mla_launch(1, 64, 32), launch(1, 4));
        assert_eq!(mla_launch(1, 64, 33), launch(1, 8));
        // 64 tiles (512 keys) and more: 8 groups × 64 splits = 512 blocks.
        assert_eq!(mla_launch(1, 64, 5000), launch(8, 64));
        assert_eq!(mla_launch(1, 64, MLA_MAX_KEYS), launch(8, 64));
        assert_eq!(mla_launch(16, 64, 5000), launch(8, 4));
        // c=64 and prefill already have 512 blocks and more: one split, no combine.
        assert_eq!(mla_launch(64, 64, 5000), launch(8, 1));
        assert_eq!(mla_launch(64, 64, 20), launch(8, 1));
        assert_eq!(mla_launch(1024, 64, 1024), launch(8, 1));
        // One key is one split; a partial head group counts as a group.
        assert_eq!(mla_launch(1, 12, 1), launch(1, 1));
        assert_eq!(mla_launch(5, 12, 300), launch(8, 51));
    }

    #[test]
    fn attention_partials_do_not_grow_with_the_batch() {
        let kimi = MlaDims {
            heads: 64,
            qk_nope: 128,
            qk_rope: 64,
            v: 128,
            kv_lora: 512,
        };
        // Partials peak at 64 (token, split) pairs per head (c=1 with 64 splits, or c=2 with
        // 32, ...).
        let partials = 64 * 64 * 514;
        assert_eq!(
            MlaWorkspace::lengths(&kimi, 1024),
            (1024 * 64 * 512, partials)
        );
        assert_eq!(MlaWorkspace::lengths(&kimi, 8), (8 * 64 * 512, partials));
        assert_eq!(MlaWorkspace::bytes(&kimi, 1), (64 * 512 + partials) * 4);
    }

    #[test]
    fn k_split_fills_the_device_only_where_rows_are_few() {
        // Kimi-K2.5 shapes on an NVIDIA block of 8 waves of 32 (chunks of 8 bf16 values).
        // lm_head has rows enough: no split. o_proj (224 blocks unsplit) splits over the
        // whole block (each wave still makes 4 loads per lane and row).
        assert_eq!(k_split(163_840, 7168 / 8, 1, 8, 32), 1);
        assert_eq!(k_split(7168, 8192 / 8, 1, 8, 32), 8);
        // An MXFP4 down projection (k 2048 = 64 blocks) is too short to split.
        assert_eq!(k_split(7168, 2048 / 32, 1, 8, 32), 1);
        // kv_a (576 rows) and q_a (1536 rows) split k over every wave of the block.
        assert_eq!(k_split(576, 7168 / 8, 1, 8, 32), 8);
        assert_eq!(k_split(1536, 7168 / 8, 1, 8, 32), 8);
        // A short k keeps each wave busy rather than splitting further.
        assert_eq!(k_split(576, 512 / 8, 1, 8, 32), 1);
        // Many token tiles already give the blocks.
        assert_eq!(k_split(7168, 8192 / 8, 8, 8, 32), 1);
        // The split never exceeds the block's waves.
        assert_eq!(k_split(4, 1 << 20, 1, 4, 64), 4);
    }
}
