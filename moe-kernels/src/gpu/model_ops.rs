//! Launchers for the dense model ops in `kernels/model_ops.hip`: row gather, RMSNorm, f32 and
//! MXFP4 linear layers (with dynamic MXFP4 activation quantization for W4A4), interleaved
//! rotary embedding, latent-cache store, absorbed MLA attention over a paged latent cache,
//! SwiGLU and residual adds.
//!
//! Each launcher computes what the CPU reference op of the same name computes
//! ([`crate::reference`]), in f32, up to summation order. Buffers may be longer than a call
//! needs (workspaces are sized for the largest batch); each is checked to be long enough.
//! The linear kernels are built for decode: each weight byte is read once per tile of
//! [`LINEAR_TOKEN_TILE`] tokens (so once per step for a decode batch of up to that many
//! sequences), 16 bytes per lane and load; larger batches reread the weight once per tile. A
//! tensor-core GEMM for prefill-sized batches is not there yet.

use half::bf16;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelSource, LaunchConfig, Stream, kernel_source,
};

use super::error::{GpuError, check_param};
use crate::reference::{ActivationMode, ActivationQuant, Linear, MlaDims, ScaleRule};

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/model_ops.hip");

/// Threads per block of every launch (`OPS_THREADS`).
const THREADS: u32 = 256;
/// MX block size.
const BLOCK: usize = 32;
/// Output rows per wave of the linear kernels (`LIN_ROWS`).
const LINEAR_ROWS: usize = 4;
/// Tokens that share one read of a linear layer's weight (`LIN_TOKS`).
pub const LINEAR_TOKEN_TILE: usize = 8;
/// Blocks a linear launch aims for before it stops splitting k over more waves: a few per
/// compute unit of the largest devices, so small projections still keep every unit busy.
const LINEAR_TARGET_BLOCKS: usize = 1024;

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
            Linear::Dense(m) if dense_is_bf16(&m.data) => {
                let narrow: Vec<bf16> = m.data.iter().map(|&v| bf16::from_f32(v)).collect();
                DeviceLinear::Bf16 {
                    weight: device.upload(&narrow)?,
                    out: m.rows,
                    input: m.cols,
                }
            }
            Linear::Dense(m) => DeviceLinear::Dense {
                weight: device.upload(&m.data)?,
                out: m.rows,
                input: m.cols,
            },
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
    /// At least `position + 1` of every query (it sizes the kernel's shared memory).
    pub max_keys: usize,
}

/// Most keys one query of [`ModelOps::mla_attention`] may attend to on `device` with a
/// latent of `kv_lora` values: the scores of all its keys sit in shared memory next to two
/// latent vectors (0 on the CPU). Longer contexts need a split-key kernel.
pub fn mla_max_keys(device: &Device, kv_lora: usize) -> usize {
    let info = device.info();
    attention_keys(info.max_shared_memory_per_block, info.wave_size, kv_lora)
}

fn attention_keys(max_shared_memory: u32, wave_size: u32, kv_lora: usize) -> usize {
    if wave_size == 0 {
        return 0;
    }
    // The kernel's static `scratch[OPS_WAVES]` takes its share of the per-block limit.
    let fixed = (THREADS / wave_size) as usize * size_of::<f32>();
    let floats = (max_shared_memory as usize).saturating_sub(fixed) / size_of::<f32>();
    floats.saturating_sub(2 * kv_lora)
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
    fake_quantize: Function,
    rope: Function,
    cache_store: Function,
    mla_attention: Function,
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
            .set("LIN_TOKS", LINEAR_TOKEN_TILE);
        let module = device.compile(&SOURCE, &defines)?;
        let f = |name: &str| module.function(name);
        Ok(ModelOps {
            wave_size: device.info().wave_size,
            max_shared_memory: device.info().max_shared_memory_per_block,
            gather_rows: f("ops_gather_rows")?,
            gather_rows_bf16: f("ops_gather_rows_bf16")?,
            rmsnorm: f("ops_rmsnorm")?,
            linear_f32: f("ops_linear_f32")?,
            linear_bf16: f("ops_linear_bf16")?,
            linear_mxfp4: f("ops_linear_mxfp4")?,
            fake_quantize: f("ops_fake_quantize")?,
            rope: f("ops_rope")?,
            cache_store: f("ops_cache_store")?,
            mla_attention: f("ops_mla_attention")?,
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

    /// [`crate::reference::Rope::rotate`] for `tokens` tokens at once: token `t`'s vectors
    /// `h < count` start at `t·row_stride + h·stride + offset`; `cos`/`sin` are
    /// `[tokens, half]` (the reference's `cos_sin` of each token's position).
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        stream: &Stream,
        x: &mut DeviceBuffer<f32>,
        cos: &DeviceBuffer<f32>,
        sin: &DeviceBuffer<f32>,
        tokens: usize,
        count: usize,
        row_stride: usize,
        stride: usize,
        offset: usize,
        half: usize,
    ) -> Result<(), GpuError> {
        check_param(
            "offset",
            offset,
            offset + 2 * half <= stride || count == 1,
            || "vectors overlap".into(),
        )?;
        room("cos", cos, tokens * half)?;
        room("sin", sin, tokens * half)?;
        if tokens == 0 {
            return Ok(());
        }
        room(
            "x",
            x,
            (tokens - 1) * row_stride + (count - 1) * stride + offset + 2 * half,
        )?;
        stream.launch(
            &self.rope,
            LaunchConfig::linear(tokens * count * half, THREADS),
            &[
                x,
                cos,
                sin,
                &int("tokens", tokens)?,
                &int("count", count)?,
                &int("row_stride", row_stride)?,
                &int("stride", stride)?,
                &int("offset", offset)?,
                &int("half", half)?,
            ],
        )?;
        Ok(())
    }

    /// Writes token `t`'s latent (`latent[t]`, `kv_lora` values) and rope key (columns
    /// `kv_lora..` of `kv_a[t]`) to cache row `rows[t]`. Rows must be inside the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn cache_store(
        &self,
        stream: &Stream,
        latent: &DeviceBuffer<f32>,
        kv_a: &DeviceBuffer<f32>,
        rows: &DeviceBuffer<i32>,
        tokens: usize,
        kv_lora: usize,
        rope: usize,
        cache_latent: &mut DeviceBuffer<f32>,
        cache_rope: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        room("latent", latent, tokens * kv_lora)?;
        room("kv_a", kv_a, tokens * (kv_lora + rope))?;
        room("rows", rows, tokens)?;
        stream.launch(
            &self.cache_store,
            LaunchConfig::linear(tokens * (kv_lora + rope), THREADS),
            &[
                latent,
                kv_a,
                rows,
                &int("tokens", tokens)?,
                &int("kv_lora", kv_lora)?,
                &int("rope", rope)?,
                cache_latent,
                cache_rope,
            ],
        )?;
        Ok(())
    }

    /// [`crate::reference::mla_attention`] for `tokens` queries of any sequences over a paged
    /// latent cache (see [`PagedKeys`]); `kv_b` is `kv_b_proj` as f32. The keys of one query
    /// live in shared memory, so `keys.max_keys` may not exceed [`mla_max_keys`].
    #[allow(clippy::too_many_arguments)]
    pub fn mla_attention(
        &self,
        stream: &Stream,
        q: &DeviceBuffer<f32>,
        cache_latent: &DeviceBuffer<f32>,
        cache_rope: &DeviceBuffer<f32>,
        kv_b: &DeviceBuffer<f32>,
        keys: &PagedKeys<'_>,
        tokens: usize,
        dims: &MlaDims,
        softmax_scale: f32,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), GpuError> {
        let d = dims;
        room("q", q, tokens * d.heads * (d.qk_nope + d.qk_rope))?;
        room("kv_b", kv_b, d.heads * (d.qk_nope + d.v) * d.kv_lora)?;
        room("table_offsets", keys.table_offsets, tokens)?;
        room("positions", keys.positions, tokens)?;
        room("out", out, tokens * d.heads * d.v)?;
        let b = keys.block_tokens;
        check_param("block_tokens", b, b.is_power_of_two(), || {
            "must be a power of two".into()
        })?;
        let limit = self.max_keys(d.kv_lora);
        check_param("max_keys", keys.max_keys, keys.max_keys <= limit, || {
            format!("the attention kernel holds at most {limit} keys in shared memory here")
        })?;
        if tokens == 0 {
            return Ok(());
        }
        let smem = (2 * d.kv_lora + keys.max_keys) * size_of::<f32>();
        stream.launch(
            &self.mla_attention,
            LaunchConfig {
                grid: [grid("tokens × heads", tokens * d.heads)?, 1, 1],
                block: [THREADS, 1, 1],
                shared_mem_bytes: grid("attention shared memory", smem)?,
            },
            &[
                q,
                cache_latent,
                cache_rope,
                kv_b,
                keys.tables,
                keys.table_offsets,
                keys.positions,
                &(b.trailing_zeros() as i32),
                &int("heads", d.heads)?,
                &int("qk_nope", d.qk_nope)?,
                &int("qk_rope", d.qk_rope)?,
                &int("v", d.v)?,
                &int("kv_lora", d.kv_lora)?,
                &softmax_scale,
                out,
            ],
        )?;
        Ok(())
    }

    /// Most keys one query of [`Self::mla_attention`] may attend to on this device.
    pub fn max_keys(&self, kv_lora: usize) -> usize {
        attention_keys(self.max_shared_memory, self.wave_size, kv_lora)
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
