//! One MoE layer with MXFP4 experts on the GPU, decode / small-batch path: routing
//! (`noaux_tc`), align by expert, dynamic MXFP4 activation quantization (W4A4) or bf16
//! activations (W4A16), gate+up with SiLU·up fused, down, and the weighted combine.
//!
//! The shared expert lives in the same stacked weights as the routed experts (slots
//! `n_routed ..`). [`SharedExpertMode::Fused`] routes every token to it as one more slot, so
//! one pass of each kernel covers routed and shared experts; [`SharedExpertMode::Separate`]
//! runs the same kernels a second time over the shared slots only. Both compute
//! [`crate::reference::moe_forward`] (plus, when separate, the shared MLP added after the
//! routed scaling factor).
//!
//! The layer's input and output are bf16 or f32 ([`MoeIo`]): bf16 is the serving
//! activation format; f32 lets a caller whose residual stream is f32 (the GPU model) quantize
//! exactly the values the f32 reference quantizes. W4A4 quantizes the input as given, so an
//! f32 input gives the reference's MXFP4 codes bit for bit; weight-only
//! ([`ActivationQuant::None`]) multiplies an f32 input in f32 (W4A32, one token per gate_up
//! tile so the f32 row fits shared memory; bf16 input keeps two).

use half::bf16;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Event, Function, KernelSource, LaunchConfig, Stream,
    kernel_source,
};

use super::error::{GpuError, check_len, check_param};
use super::moe_tc::{TcOperands, TcPlan, TensorCoreKernels};
use crate::reference::{ActivationQuant, RoutingParams, ScaleRule};

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/moe.hip");

/// Waves per block of the expert GEMV kernels (`MOE_WARPS`); gate_up splits them in two
/// halves (gate rows, up rows), so it must be even. (down's waves each work alone.)
const WARPS: u32 = 8;
const _: () = assert!(WARPS.is_multiple_of(2));
/// Output rows per work item of the down projection (`MOE_DOWN_ROWS`).
const DOWN_ROWS: u32 = 2;
/// Resident blocks per compute unit of the GEMV kernels: their `__launch_bounds__` minimum.
const GEMV_BLOCKS_PER_UNIT: usize = 2;
/// Threads of the routing kernel (`ROUTE_THREADS`, its launch bound).
const ROUTE_THREADS: u32 = 256;
/// Threads of the single-block align kernel (`ALIGN_THREADS`).
const ALIGN_THREADS: u32 = 1024;
/// Threads per block of the elementwise kernels.
const ELEMENT_THREADS: u32 = 256;
/// Slots per token the routing kernel supports (`ROUTE_MAX_TOPK`).
const MAX_SLOTS: usize = 64;
/// Expert groups the routing kernel supports (`ROUTE_MAX_GROUPS`).
const MAX_GROUPS: usize = 64;
/// Largest dynamic shared memory a launch may use without opting in.
const SHARED_MEM_LIMIT: usize = 48 * 1024;
/// MX block size: elements per E8M0 scale.
const BLOCK: usize = 32;
/// Elements per thread of the activation quantizer (`QUANT_PER_LANE`).
const QUANT_PER_LANE: usize = 4;

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
}

/// Element type of a MoE layer's input and output ([`MoeKernels::forward`]) and of the rows
/// [`MoeKernels::quantize`] reads: `bf16` or `f32`.
pub trait MoeIo: bytemuck::Pod + sealed::Sealed {
    /// True for `f32`: picks the kernel variants that read and write f32.
    const IS_F32: bool;
}

impl MoeIo for bf16 {
    const IS_F32: bool = false;
}

impl MoeIo for f32 {
    const IS_F32: bool = true;
}

/// The kernels that read the layer's input or write its output, for one [`MoeIo`] type.
#[derive(Debug)]
struct IoKernels {
    quantize: Function,
    /// The same quantization written as E4M3 bytes, for the tensor-core kernels.
    quantize_e4m3: Function,
    gate_up_w4a16: Function,
    combine: Function,
}

/// The expert shapes of one MoE layer as the kernels see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// Hidden size (the experts' input and output width).
    pub hidden: usize,
    /// Expert intermediate size.
    pub inter: usize,
    /// Routed experts.
    pub n_routed: usize,
    /// Shared-expert slots stored after the routed experts (0 when the layer has none).
    pub n_shared: usize,
}

impl MoeShape {
    /// Expert slots in the stacked weights: routed, then shared.
    pub fn slots(&self) -> usize {
        self.n_routed + self.n_shared
    }

    /// Bytes of one expert slot's weights and scales (gate, up and down).
    pub fn bytes_per_expert(&self) -> usize {
        3 * self.hidden * self.inter / 2 + 3 * self.hidden * self.inter / BLOCK
    }

    /// Bytes of the stacked gate+up codes (`w13`).
    pub fn w13_len(&self) -> usize {
        self.slots() * 2 * self.inter * self.hidden / 2
    }

    /// Bytes of the gate+up scales (`s13`).
    pub fn s13_len(&self) -> usize {
        self.slots() * 2 * self.inter * self.hidden / BLOCK
    }

    /// Bytes of the down codes (`w2`).
    pub fn w2_len(&self) -> usize {
        self.slots() * self.hidden * self.inter / 2
    }

    /// Bytes of the down scales (`s2`).
    pub fn s2_len(&self) -> usize {
        self.slots() * self.hidden * self.inter / BLOCK
    }

    fn describe(&self) -> String {
        format!(
            "hidden {}, intermediate {}, {} routed + {} shared experts",
            self.hidden, self.inter, self.n_routed, self.n_shared
        )
    }
}

/// Stacked MXFP4 expert weights on one device, in Quark's layout per expert (`weight` uint8
/// `[out, in/2]`, low nibble = even element; `weight_scale` E8M0 `[out, in/32]`):
/// - `w13` `[slots][2·inter][hidden/2]`: rows `0..inter` are `gate_proj`, `inter..` `up_proj`;
/// - `s13` `[slots][2·inter][hidden/32]`;
/// - `w2` `[slots][hidden][inter/2]`, `s2` `[slots][hidden][inter/32]`.
#[derive(Debug)]
pub struct MoeWeights {
    shape: MoeShape,
    w13: DeviceBuffer<u8>,
    s13: DeviceBuffer<u8>,
    w2: DeviceBuffer<u8>,
    s2: DeviceBuffer<u8>,
}

impl MoeWeights {
    /// Checks the four buffers against `shape`.
    pub fn new(
        shape: MoeShape,
        w13: DeviceBuffer<u8>,
        s13: DeviceBuffer<u8>,
        w2: DeviceBuffer<u8>,
        s2: DeviceBuffer<u8>,
    ) -> Result<Self, GpuError> {
        check_len("w13", shape.w13_len(), w13.len(), || shape.describe())?;
        check_len("s13", shape.s13_len(), s13.len(), || shape.describe())?;
        check_len("w2", shape.w2_len(), w2.len(), || shape.describe())?;
        check_len("s2", shape.s2_len(), s2.len(), || shape.describe())?;
        Ok(MoeWeights {
            shape,
            w13,
            s13,
            w2,
            s2,
        })
    }

    /// The expert shapes.
    pub fn shape(&self) -> MoeShape {
        self.shape
    }

    /// The four buffers, mutably (to fill them on the device).
    pub fn buffers_mut(&mut self) -> [&mut DeviceBuffer<u8>; 4] {
        [&mut self.w13, &mut self.s13, &mut self.w2, &mut self.s2]
    }
}

/// Whether the shared expert runs as extra slots of the routed pass or as a pass of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SharedExpertMode {
    /// Every token gets the shared slots appended to its routed experts (weight `1/rsf`).
    Fused,
    /// The shared slots run as a separate MLP, added after the routed scaling factor.
    Separate,
}

/// Which kernels run the expert GEMMs of a W4A4 layer (weight-only layers always take the
/// GEMV kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpertPath {
    /// Tensor cores from [`TENSOR_CORE_MIN_TOKENS`] tokens on when the device has them, the
    /// GEMV kernels below that and elsewhere.
    Auto,
    /// Always the GEMV kernels (CUDA cores / vector ALUs): the decode path.
    Gemv,
    /// Always the tensor-core kernels; an error on a device without them.
    TensorCore,
}

/// Tokens from which [`ExpertPath::Auto`] takes the tensor cores. On a Kimi-K2.5 layer the
/// GEMV kernels win below: on an H100 2.16 against 2.43 ms at 32 tokens and 2.98 against 3.09
/// at 48, and the tensor cores from 64 (3.56 against 3.76 ms); the two lines cross near 55.
/// The H200 agrees at 32 (2.10 against 2.22 ms). See `PERF-NOTES.md`, v10 and v11.
pub const TENSOR_CORE_MIN_TOKENS: usize = 56;

/// One routing result on the device: `ids` and `weights` `[tokens][slots]`.
#[derive(Debug)]
pub struct Routing {
    /// Expert index per slot.
    pub ids: DeviceBuffer<i32>,
    /// Weight per slot.
    pub weights: DeviceBuffer<f32>,
}

impl Routing {
    /// Room for `pairs` (token, slot) pairs.
    pub fn alloc(device: &Device, pairs: usize) -> Result<Self, GpuError> {
        Ok(Routing {
            ids: device.alloc_uninit(pairs)?,
            weights: device.alloc_uninit(pairs)?,
        })
    }
}

/// Activations quantized to MXFP4 per 32, as the kernels keep them: `values` holds twice each
/// E2M1 value as int8 (exact, ready for int8 dot products), `scales` the E8M0 bytes.
#[derive(Debug)]
pub struct QuantizedActivations {
    /// `[rows][cols]`, each `2 · e2m1` in `-12..=12`.
    pub values: DeviceBuffer<i8>,
    /// `[rows][cols/32]` E8M0.
    pub scales: DeviceBuffer<u8>,
}

impl QuantizedActivations {
    /// Room for `elements` activations (a multiple of 32).
    pub fn alloc(device: &Device, elements: usize) -> Result<Self, GpuError> {
        Ok(QuantizedActivations {
            values: device.alloc_uninit(elements)?,
            scales: device.alloc_uninit(elements / BLOCK)?,
        })
    }
}

/// The grouping of one routing's pairs by expert (see `moe_align` in the kernel source).
#[derive(Debug)]
struct Grouping {
    offsets: DeviceBuffer<i32>,
    sorted: DeviceBuffer<i32>,
    position: DeviceBuffer<i32>,
    active: DeviceBuffer<i32>,
    n_active: DeviceBuffer<i32>,
    /// The tensor-core kernels' work list: first tile of each active expert, then the total.
    tiles: DeviceBuffer<i32>,
}

impl Grouping {
    fn alloc(device: &Device, pairs: usize, experts: usize) -> Result<Self, GpuError> {
        Ok(Grouping {
            offsets: device.alloc_uninit(experts + 1)?,
            sorted: device.alloc_uninit(pairs)?,
            position: device.alloc_uninit(pairs)?,
            active: device.alloc_uninit(experts)?,
            n_active: device.alloc_uninit(1)?,
            tiles: device.alloc_uninit(experts + 1)?,
        })
    }
}

/// Scratch memory for [`MoeKernels::forward`], sized for up to `max_tokens` tokens.
#[derive(Debug)]
pub struct MoeWorkspace {
    max_tokens: usize,
    top_k: usize,
    shape: MoeShape,
    x_quant: QuantizedActivations,
    routed: Routing,
    routed_groups: Grouping,
    shared: Routing,
    shared_groups: Grouping,
    h: DeviceBuffer<f32>,
    h_quant: QuantizedActivations,
    y: DeviceBuffer<f32>,
    y_shared: DeviceBuffer<f32>,
    marks: Marks,
}

/// Events recorded after each stage while a breakdown is being taken.
type Marks = Option<Vec<(&'static str, Event)>>;

fn mark(stream: &Stream, marks: &mut Marks, stage: &'static str) -> Result<(), GpuError> {
    if let Some(marks) = marks {
        marks.push((stage, stream.record_event()?));
    }
    Ok(())
}

impl MoeWorkspace {
    /// Allocates scratch for `max_tokens` tokens, `top_k` routed experts each, on `device`.
    pub fn new(
        device: &Device,
        shape: MoeShape,
        top_k: usize,
        max_tokens: usize,
    ) -> Result<Self, GpuError> {
        check_param("max_tokens", max_tokens, max_tokens > 0, || {
            "at least one token".into()
        })?;
        let pairs = max_tokens * (top_k + shape.n_shared);
        let shared_pairs = (max_tokens * shape.n_shared).max(1);
        Ok(MoeWorkspace {
            max_tokens,
            top_k,
            shape,
            x_quant: QuantizedActivations::alloc(device, max_tokens * shape.hidden)?,
            routed: Routing::alloc(device, pairs)?,
            routed_groups: Grouping::alloc(device, pairs, shape.slots())?,
            shared: Routing::alloc(device, shared_pairs)?,
            shared_groups: Grouping::alloc(device, shared_pairs, shape.n_shared.max(1))?,
            h: device.alloc_uninit(pairs * shape.inter)?,
            h_quant: QuantizedActivations::alloc(device, pairs * shape.inter)?,
            y: device.alloc_uninit(pairs * shape.hidden)?,
            y_shared: device.alloc_uninit(shared_pairs * shape.hidden)?,
            marks: None,
        })
    }

    /// Sets every byte of the scratch memory to `byte` (tests poison it with NaNs so that a
    /// value read before it is written shows in the output).
    pub fn fill(&mut self, byte: u8) -> Result<(), GpuError> {
        self.x_quant.values.memset(byte)?;
        self.x_quant.scales.memset(byte)?;
        self.h.memset(byte)?;
        self.h_quant.values.memset(byte)?;
        self.h_quant.scales.memset(byte)?;
        self.y.memset(byte)?;
        self.y_shared.memset(byte)?;
        Ok(())
    }
}

impl MoeWorkspace {
    /// Records an event after every stage of the following [`MoeKernels::forward`] calls, for
    /// [`MoeWorkspace::stage_times`]. The events cost a little time per stage.
    pub fn record_stages(&mut self) {
        self.marks = Some(Vec::new());
    }

    /// Device time in milliseconds of each stage (route, align, quantize, gate_up, down,
    /// combine, …) of every forward since [`MoeWorkspace::record_stages`], in order, and stops
    /// recording. Waits for the device.
    pub fn stage_times(&mut self) -> Result<Vec<(&'static str, f64)>, GpuError> {
        let marks = self.marks.take().unwrap_or_default();
        let mut times = Vec::new();
        for pair in marks.windows(2) {
            let ((_, before), (stage, after)) = (&pair[0], &pair[1]);
            if *stage != "start" {
                after.synchronize()?;
                times.push((*stage, f64::from(before.elapsed_ms(after)?)));
            }
        }
        Ok(times)
    }

    /// Expert slots the last [`MoeKernels::forward`] with this workspace read weights of
    /// (routed experts with at least one token, plus the shared slots), once its stream has
    /// finished: what a benchmark counts as the bytes touched. Waits for the device.
    pub fn experts_touched(&self, mode: SharedExpertMode) -> Result<usize, GpuError> {
        let routed_pass = self.routed_groups.n_active.to_vec()?[0] as usize;
        Ok(match mode {
            SharedExpertMode::Fused => routed_pass,
            SharedExpertMode::Separate => routed_pass + self.shape.n_shared,
        })
    }
}

/// The MoE kernels compiled for one device and one (hidden, intermediate) shape.
#[derive(Debug)]
pub struct MoeKernels {
    device: Device,
    hidden: usize,
    inter: usize,
    route: Function,
    route_all: Function,
    align: Function,
    io_bf16: IoKernels,
    io_f32: IoKernels,
    gate_up_w4a4: Function,
    /// W4A4 gate_up for at most 1, 2, 4 and 8 tokens (`moe_gate_up_w4a4_staged{T}`).
    gate_up_w4a4_staged: [(usize, Function); 4],
    down_w4a4: Function,
    down_w4a16: Function,
    /// None where the device has no E4M3 tensor cores (see `moe_tc`).
    tensor: Option<TensorCoreKernels>,
    path: ExpertPath,
}

pub(super) fn to_i32(parameter: &'static str, value: usize) -> Result<i32, GpuError> {
    i32::try_from(value).map_err(|_| GpuError::Parameter {
        parameter,
        value: value.to_string(),
        reason: "does not fit a 32-bit kernel argument".into(),
    })
}

pub(super) fn to_u32(parameter: &'static str, value: usize) -> Result<u32, GpuError> {
    u32::try_from(value).map_err(|_| GpuError::Parameter {
        parameter,
        value: value.to_string(),
        reason: "does not fit a 32-bit grid dimension".into(),
    })
}

fn even_flag(rule: ScaleRule) -> i32 {
    match rule {
        ScaleRule::Even => 1,
        ScaleRule::Ocp => 0,
    }
}

impl MoeKernels {
    /// Compiles (or loads from the kernel cache) the MoE kernels for `hidden` × `inter`
    /// experts on `device`.
    pub fn compile(device: &Device, hidden: usize, inter: usize) -> Result<Self, GpuError> {
        if device.is_cpu() {
            return Err(GpuError::NotAGpu {
                device: device.id(),
            });
        }
        for (parameter, value) in [("hidden", hidden), ("inter", inter)] {
            check_param(
                parameter,
                value,
                value > 0 && value.is_multiple_of(BLOCK),
                || format!("must be a positive multiple of the MX block size {BLOCK}"),
            )?;
        }
        let defines = Defines::new()
            .set("MOE_HIDDEN", hidden)
            .set("MOE_INTER", inter)
            .set("MOE_WARPS", WARPS)
            .set("MOE_DOWN_ROWS", DOWN_ROWS)
            .set("ROUTE_THREADS", ROUTE_THREADS)
            .set("ROUTE_MAX_TOPK", MAX_SLOTS)
            .set("ROUTE_MAX_GROUPS", MAX_GROUPS)
            .set("ALIGN_THREADS", ALIGN_THREADS);
        let module = device.compile(&SOURCE, &defines)?;
        let f = |name: &str| module.function(name);
        Ok(MoeKernels {
            device: device.clone(),
            hidden,
            inter,
            route: f("moe_route_noaux_tc")?,
            route_all: f("moe_route_all")?,
            align: f("moe_align")?,
            io_bf16: IoKernels {
                quantize: f("moe_quantize_bf16")?,
                quantize_e4m3: f("moe_quantize_bf16_e4m3")?,
                gate_up_w4a16: f("moe_gate_up_w4a16")?,
                combine: f("moe_combine_bf16")?,
            },
            io_f32: IoKernels {
                quantize: f("moe_quantize_f32")?,
                quantize_e4m3: f("moe_quantize_f32_e4m3")?,
                gate_up_w4a16: f("moe_gate_up_w4a16_f32")?,
                combine: f("moe_combine_f32")?,
            },
            gate_up_w4a4: f("moe_gate_up_w4a4")?,
            gate_up_w4a4_staged: [
                (1, f("moe_gate_up_w4a4_staged1")?),
                (2, f("moe_gate_up_w4a4_staged2")?),
                (4, f("moe_gate_up_w4a4_staged4")?),
                (8, f("moe_gate_up_w4a4_staged8")?),
            ],
            down_w4a4: f("moe_down_w4a4")?,
            down_w4a16: f("moe_down_w4a16")?,
            tensor: TensorCoreKernels::compile(device, hidden, inter)?,
            path: ExpertPath::Auto,
        })
    }

    /// Whether this device and shape have the tensor-core expert kernels.
    pub fn has_tensor_cores(&self) -> bool {
        self.tensor.is_some()
    }

    /// Picks the expert kernels of the following W4A4 forwards; [`ExpertPath::TensorCore`]
    /// is refused where [`MoeKernels::has_tensor_cores`] is false.
    pub fn set_expert_path(&mut self, path: ExpertPath) -> Result<(), GpuError> {
        if path == ExpertPath::TensorCore && self.tensor.is_none() {
            return Err(GpuError::Parameter {
                parameter: "expert path",
                value: format!("{path:?}"),
                reason: format!(
                    "the tensor-core kernels need an NVIDIA GPU of compute capability 8.9 or \
                     later and hidden / intermediate sizes that are multiples of 128 \
                     (device {}, hidden {}, intermediate {})",
                    self.device.info().arch,
                    self.hidden,
                    self.inter
                ),
            });
        }
        self.path = path;
        Ok(())
    }

    /// The expert path set by [`MoeKernels::set_expert_path`].
    pub fn expert_path(&self) -> ExpertPath {
        self.path
    }

    /// The tensor-core kernels if a W4A4 pass of `n_tokens` tokens should use them.
    fn tensor_path(&self, act: ActivationQuant, n_tokens: usize) -> Option<&TensorCoreKernels> {
        let wanted = match self.path {
            ExpertPath::Auto => n_tokens >= TENSOR_CORE_MIN_TOKENS,
            ExpertPath::Gemv => false,
            ExpertPath::TensorCore => true,
        };
        match act {
            ActivationQuant::Mxfp4(_) if wanted => self.tensor.as_ref(),
            _ => None,
        }
    }

    fn io<T: MoeIo>(&self) -> &IoKernels {
        if T::IS_F32 {
            &self.io_f32
        } else {
            &self.io_bf16
        }
    }

    /// The device the kernels were compiled for.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Threads per block of the GEMV kernels on this device.
    fn gemv_threads(&self) -> u32 {
        WARPS * self.device.info().wave_size
    }

    /// Shared memory of `moe_gate_up_w4a4_staged{T}` for `n_tokens` tokens: each token's
    /// quantized row, H bytes and H / 32 scales.
    fn gate_up_stage_bytes(&self, n_tokens: usize) -> usize {
        n_tokens * (self.hidden + self.hidden / BLOCK)
    }

    /// The staged W4A4 gate_up kernel for `n_tokens` (the smallest instantiation that holds
    /// them), where two blocks' stages fit what one block may have (so two still fit a compute
    /// unit where that is all it has); None for more tokens.
    fn staged_gate_up(&self, n_tokens: usize) -> Option<&Function> {
        let limit = self.device.info().max_shared_memory_per_block as usize;
        if 2 * self.gate_up_stage_bytes(n_tokens) > limit {
            return None;
        }
        self.gate_up_w4a4_staged
            .iter()
            .find(|(tokens, _)| n_tokens <= *tokens)
            .map(|(_, kernel)| kernel)
    }

    /// Grid of the persistent GEMV kernels for at most `blocks` blocks of work: as many as are
    /// resident at once (their launch bound is two per compute unit), fewer when there is less
    /// work.
    fn gemv_blocks(&self, blocks: usize) -> Result<u32, GpuError> {
        let resident = GEMV_BLOCKS_PER_UNIT * self.device.info().compute_units as usize;
        to_u32("GEMV blocks", blocks.clamp(1, resident))
    }

    /// [`crate::reference::route_noaux_tc`] for `n_tokens` tokens: `logits` `[n_tokens][n_routed]`
    /// (a longer buffer is fine: only the first rows are read),
    /// `bias` `[n_routed]`; writes `[n_tokens][top_k + shared_slots]` ids and weights.
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &self,
        stream: &Stream,
        logits: &DeviceBuffer<f32>,
        bias: &DeviceBuffer<f32>,
        n_tokens: usize,
        n_routed: usize,
        params: &RoutingParams,
        out: &mut Routing,
    ) -> Result<(), GpuError> {
        let slots = params.top_k + params.shared_slots;
        check_param(
            "n_group",
            params.n_group,
            params.n_group > 0 && params.n_group <= MAX_GROUPS,
            || format!("1 ..= {MAX_GROUPS} expert groups"),
        )?;
        check_param(
            "n_group",
            params.n_group,
            n_routed.is_multiple_of(params.n_group),
            || format!("must divide the {n_routed} routed experts"),
        )?;
        let group_size = n_routed / params.n_group;
        check_param("n_routed", n_routed, group_size >= 2, || {
            "groups need two experts each".into()
        })?;
        check_param(
            "topk_group",
            params.topk_group,
            (1..=params.n_group).contains(&params.topk_group),
            || format!("1 ..= n_group ({})", params.n_group),
        )?;
        check_param(
            "top_k",
            params.top_k,
            params.top_k >= 1 && params.top_k <= params.topk_group * group_size,
            || {
                format!(
                    "1 ..= the {} experts of the kept groups",
                    params.topk_group * group_size
                )
            },
        )?;
        check_param("top_k + shared_slots", slots, slots <= MAX_SLOTS, || {
            format!("at most {MAX_SLOTS}")
        })?;
        check_param(
            "routed_scaling_factor",
            params.routed_scaling_factor,
            params.routed_scaling_factor.is_normal(),
            || "must be a finite non-zero number".into(),
        )?;
        let smem = 2 * n_routed * size_of::<f32>();
        check_param("n_routed", n_routed, smem <= SHARED_MEM_LIMIT, || {
            format!(
                "at most {} experts fit the routing kernel's shared memory",
                SHARED_MEM_LIMIT / 8
            )
        })?;
        // Only the first rows are read, so a caller can pass a buffer sized for its largest batch.
        check_param(
            "logits",
            logits.len(),
            logits.len() >= n_tokens * n_routed,
            || format!("too short for {n_tokens} tokens × {n_routed} experts"),
        )?;
        check_len("bias", n_routed, bias.len(), || {
            format!("{n_routed} experts")
        })?;
        check_param(
            "routing buffers",
            out.ids.len(),
            out.ids.len() >= n_tokens * slots && out.weights.len() >= n_tokens * slots,
            || format!("need room for {n_tokens} tokens × {slots} slots"),
        )?;
        let config = LaunchConfig {
            grid: [to_u32("n_tokens", n_tokens)?, 1, 1],
            block: [ROUTE_THREADS, 1, 1],
            shared_mem_bytes: smem as u32,
        };
        stream.launch(
            &self.route,
            config,
            &[
                logits,
                bias,
                &to_i32("n_tokens", n_tokens)?,
                &to_i32("n_routed", n_routed)?,
                &to_i32("n_group", params.n_group)?,
                &to_i32("topk_group", params.topk_group)?,
                &to_i32("top_k", params.top_k)?,
                &i32::from(params.norm_topk_prob),
                &params.routed_scaling_factor,
                &to_i32("shared_slots", params.shared_slots)?,
                &out.ids,
                &out.weights,
            ],
        )?;
        Ok(())
    }

    /// Dynamic MXFP4 quantization of `rows` rows of `cols` values (bf16 or f32) with `rule`:
    /// what [`crate::reference::fake_quantize_rows`] computes on the same values, kept as codes
    /// and scales.
    pub fn quantize<T: MoeIo>(
        &self,
        stream: &Stream,
        x: &DeviceBuffer<T>,
        rows: usize,
        cols: usize,
        rule: ScaleRule,
        out: &mut QuantizedActivations,
    ) -> Result<(), GpuError> {
        check_param("cols", cols, cols > 0 && cols.is_multiple_of(BLOCK), || {
            format!("a positive multiple of {BLOCK}")
        })?;
        check_len("x", rows * cols, x.len(), || {
            format!("{rows} rows × {cols}")
        })?;
        check_param(
            "quantized buffers",
            out.values.len(),
            out.values.len() >= rows * cols,
            || format!("need room for {rows} rows × {cols}"),
        )?;
        self.launch_quantize(stream, &self.io::<T>().quantize, x, rows, cols, rule, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_quantize<T: bytemuck::Pod>(
        &self,
        stream: &Stream,
        function: &Function,
        x: &DeviceBuffer<T>,
        rows: usize,
        cols: usize,
        rule: ScaleRule,
        out: &mut QuantizedActivations,
    ) -> Result<(), GpuError> {
        stream.launch(
            function,
            LaunchConfig::linear(rows * cols / QUANT_PER_LANE, ELEMENT_THREADS),
            &[
                x,
                &to_i32("rows", rows)?,
                &to_i32("cols", cols)?,
                &even_flag(rule),
                &out.values,
                &out.scales,
            ],
        )?;
        Ok(())
    }

    /// One MoE layer for `n_tokens` tokens: `x` `[n_tokens][hidden]` (bf16 or f32, see
    /// [`MoeIo`]; longer buffers are fine, only the first rows are read), router `logits`
    /// `[n_tokens][n_routed]` and correction `bias` `[n_routed]` in f32; writes the first
    /// `[n_tokens][hidden]` of `out`, of the same type as `x`, =
    /// `rsf · Σ_slots w · expert(x)` (+ the shared MLP when [`SharedExpertMode::Separate`]).
    ///
    /// `params.shared_slots` must be `n_shared` for [`SharedExpertMode::Fused`] and 0 for
    /// [`SharedExpertMode::Separate`]; `act` is the experts' activation spec (W4A4 with its
    /// scale rule, or none for bf16 activations).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: MoeIo>(
        &self,
        stream: &Stream,
        weights: &MoeWeights,
        params: &RoutingParams,
        act: ActivationQuant,
        mode: SharedExpertMode,
        x: &DeviceBuffer<T>,
        logits: &DeviceBuffer<f32>,
        bias: &DeviceBuffer<f32>,
        n_tokens: usize,
        ws: &mut MoeWorkspace,
        out: &mut DeviceBuffer<T>,
    ) -> Result<(), GpuError> {
        let shape = weights.shape;
        check_param(
            "weights",
            shape.describe(),
            shape.hidden == self.hidden && shape.inter == self.inter,
            || {
                format!(
                    "kernels were compiled for hidden {}, intermediate {}",
                    self.hidden, self.inter
                )
            },
        )?;
        check_param(
            "workspace",
            ws.shape.describe(),
            ws.shape == shape && ws.top_k == params.top_k,
            || {
                format!(
                    "allocated for {} with top_k {}",
                    ws.shape.describe(),
                    ws.top_k
                )
            },
        )?;
        check_param(
            "n_tokens",
            n_tokens,
            n_tokens >= 1 && n_tokens <= ws.max_tokens,
            || format!("1 ..= {} (the workspace's capacity)", ws.max_tokens),
        )?;
        let expected_slots = match mode {
            SharedExpertMode::Fused => shape.n_shared,
            SharedExpertMode::Separate => 0,
        };
        check_param(
            "shared_slots",
            params.shared_slots,
            params.shared_slots == expected_slots,
            || {
                format!(
                    "must be {expected_slots} for {mode:?} with {} shared slots stored",
                    shape.n_shared
                )
            },
        )?;
        // Only the first `n_tokens` rows are read and written, so a caller can pass buffers
        // sized for its largest batch.
        for (name, len) in [("x", x.len()), ("out", out.len())] {
            check_param(name, len, len >= n_tokens * shape.hidden, || {
                format!("too short for {n_tokens} tokens × hidden {}", shape.hidden)
            })?;
        }

        let slots = params.top_k + params.shared_slots;
        let experts = shape.n_routed + params.shared_slots;
        let tensor = self.tensor_path(act, n_tokens);
        let routed_tiles =
            tensor.map(|tc| tc.plan(n_tokens * slots, experts, params.shared_slots, n_tokens));
        mark(stream, &mut ws.marks, "start")?;
        self.route(
            stream,
            logits,
            bias,
            n_tokens,
            shape.n_routed,
            params,
            &mut ws.routed,
        )?;
        mark(stream, &mut ws.marks, "route")?;
        self.align(
            stream,
            &ws.routed.ids,
            n_tokens * slots,
            experts,
            routed_tiles,
            &mut ws.routed_groups,
        )?;
        mark(stream, &mut ws.marks, "align")?;
        if let ActivationQuant::Mxfp4(rule) = act {
            let io = self.io::<T>();
            self.launch_quantize(
                stream,
                if tensor.is_some() {
                    &io.quantize_e4m3
                } else {
                    &io.quantize
                },
                x,
                n_tokens,
                shape.hidden,
                rule,
                &mut ws.x_quant,
            )?;
            mark(stream, &mut ws.marks, "quantize x")?;
        }
        let pass = Pass {
            base: 0,
            experts,
            slots,
            n_tokens,
            tensor: routed_tiles,
        };
        self.experts_pass(
            stream,
            weights,
            act,
            x,
            &ws.x_quant,
            &ws.routed_groups,
            pass,
            &ws.h,
            &mut ws.h_quant,
            &ws.y,
            &mut ws.marks,
        )?;

        let shared_slots = match mode {
            SharedExpertMode::Separate if shape.n_shared > 0 => {
                let pairs = n_tokens * shape.n_shared;
                let shared_tiles = tensor.map(|tc| tc.plan(pairs, shape.n_shared, 0, 0));
                stream.launch(
                    &self.route_all,
                    LaunchConfig::linear(pairs, ELEMENT_THREADS),
                    &[
                        &to_i32("n_tokens", n_tokens)?,
                        &to_i32("n_shared", shape.n_shared)?,
                        &ws.shared.ids,
                        &ws.shared.weights,
                    ],
                )?;
                self.align(
                    stream,
                    &ws.shared.ids,
                    pairs,
                    shape.n_shared,
                    shared_tiles,
                    &mut ws.shared_groups,
                )?;
                let pass = Pass {
                    base: shape.n_routed,
                    experts: shape.n_shared,
                    slots: shape.n_shared,
                    n_tokens,
                    tensor: shared_tiles,
                };
                self.experts_pass(
                    stream,
                    weights,
                    act,
                    x,
                    &ws.x_quant,
                    &ws.shared_groups,
                    pass,
                    &ws.h,
                    &mut ws.h_quant,
                    &ws.y_shared,
                    &mut ws.marks,
                )?;
                shape.n_shared
            }
            _ => 0,
        };
        let (y_b, groups_b, routing_b) = if shared_slots > 0 {
            (&ws.y_shared, &ws.shared_groups, &ws.shared)
        } else {
            (&ws.y, &ws.routed_groups, &ws.routed) // not read: zero slots
        };
        stream.launch(
            &self.io::<T>().combine,
            LaunchConfig {
                grid: [
                    to_u32("n_tokens", n_tokens)?,
                    to_u32("hidden", self.hidden.div_ceil(4 * ELEMENT_THREADS as usize))?,
                    1,
                ],
                block: [ELEMENT_THREADS, 1, 1],
                shared_mem_bytes: 0,
            },
            &[
                &ws.y,
                &ws.routed_groups.position,
                &ws.routed.weights,
                &to_i32("slots", slots)?,
                &params.routed_scaling_factor,
                y_b,
                &groups_b.position,
                &routing_b.weights,
                &to_i32("shared slots", shared_slots)?,
                out,
            ],
        )?;
        mark(stream, &mut ws.marks, "combine")?;
        Ok(())
    }

    fn align(
        &self,
        stream: &Stream,
        ids: &DeviceBuffer<i32>,
        pairs: usize,
        experts: usize,
        tiles: Option<TcPlan<'_>>,
        g: &mut Grouping,
    ) -> Result<(), GpuError> {
        let smem = 2 * experts * size_of::<i32>();
        check_param("experts", experts, smem <= SHARED_MEM_LIMIT, || {
            format!(
                "at most {} expert slots fit the align kernel's shared memory",
                SHARED_MEM_LIMIT / 8
            )
        })?;
        stream.launch(
            &self.align,
            LaunchConfig {
                grid: [1, 1, 1],
                block: [ALIGN_THREADS, 1, 1],
                shared_mem_bytes: smem as u32,
            },
            &[
                ids,
                &to_i32("pairs", pairs)?,
                &to_i32("experts", experts)?,
                // The GEMV kernels read no tile list: any positive width will do.
                &to_i32("tile pairs", tiles.map_or(1, |t| t.tile_pairs()))?,
                &g.offsets,
                &g.sorted,
                &g.position,
                &g.active,
                &g.n_active,
                &g.tiles,
            ],
        )?;
        Ok(())
    }

    /// gate_up → (quantize) → down over one grouping, writing `y` by sorted position.
    #[allow(clippy::too_many_arguments)]
    fn experts_pass<T: MoeIo>(
        &self,
        stream: &Stream,
        w: &MoeWeights,
        act: ActivationQuant,
        x: &DeviceBuffer<T>,
        x_quant: &QuantizedActivations,
        g: &Grouping,
        pass: Pass<'_>,
        h: &DeviceBuffer<f32>,
        h_quant: &mut QuantizedActivations,
        y: &DeviceBuffer<f32>,
        marks: &mut Marks,
    ) -> Result<(), GpuError> {
        let pairs = pass.n_tokens * pass.slots;
        // Upper bound of the active experts; the kernels read the real count.
        let experts = pass.experts.min(pairs);
        let threads = self.gemv_threads();
        let gate_up = LaunchConfig {
            grid: [
                // One tile of WARPS / 2 gate rows and their up rows per block.
                self.gemv_blocks(self.inter.div_ceil(WARPS as usize / 2) * experts)?,
                1,
                1,
            ],
            block: [threads, 1, 1],
            shared_mem_bytes: 0,
        };
        let down = LaunchConfig {
            grid: [
                // One item of DOWN_ROWS rows per wave.
                self.gemv_blocks(
                    (self.hidden.div_ceil(DOWN_ROWS as usize) * experts).div_ceil(WARPS as usize),
                )?,
                1,
                1,
            ],
            ..gate_up
        };
        let base = to_i32("expert base", pass.base)?;
        let slots = to_i32("slots", pass.slots)?;
        match act {
            ActivationQuant::Mxfp4(rule) => {
                // The tensor-core kernels read the same grouping plus its tile list, and
                // activations as E4M3 bytes instead of doubled int8.
                let tensor = pass.tensor.map(|plan| {
                    let operands = TcOperands {
                        weights: &w.w13,
                        scales: &w.s13,
                        expert_base: base,
                        act: &x_quant.values,
                        act_scales: &x_quant.scales,
                        offsets: &g.offsets,
                        active: &g.active,
                        n_active: &g.n_active,
                        tiles: &g.tiles,
                        out: h,
                    };
                    (plan, operands)
                });
                match &tensor {
                    Some((plan, op)) => plan.gate_up(
                        stream,
                        self.inter,
                        pairs,
                        pass.experts,
                        op,
                        &g.sorted,
                        slots,
                    )?,
                    None if let Some(kernel) = self.staged_gate_up(pass.n_tokens) => {
                        // One item (an intermediate row of an expert) per wave; every token's
                        // quantized row in shared memory.
                        let config = LaunchConfig {
                            grid: [
                                self.gemv_blocks((self.inter * experts).div_ceil(WARPS as usize))?,
                                1,
                                1,
                            ],
                            block: [threads, 1, 1],
                            shared_mem_bytes: to_u32(
                                "gate_up shared memory",
                                self.gate_up_stage_bytes(pass.n_tokens),
                            )?,
                        };
                        stream.launch(
                            kernel,
                            config,
                            &[
                                &w.w13,
                                &w.s13,
                                &base,
                                &x_quant.values,
                                &x_quant.scales,
                                &to_i32("tokens", pass.n_tokens)?,
                                &g.offsets,
                                &g.sorted,
                                &g.active,
                                &g.n_active,
                                &slots,
                                h,
                            ],
                        )?
                    }
                    None => stream.launch(
                        &self.gate_up_w4a4,
                        gate_up,
                        &[
                            &w.w13,
                            &w.s13,
                            &base,
                            &x_quant.values,
                            &x_quant.scales,
                            &g.offsets,
                            &g.sorted,
                            &g.active,
                            &g.n_active,
                            &slots,
                            h,
                        ],
                    )?,
                }
                mark(stream, marks, "gate_up")?;
                let quantize_h = match tensor {
                    Some(_) => &self.io_f32.quantize_e4m3,
                    None => &self.io_f32.quantize,
                };
                self.launch_quantize(stream, quantize_h, h, pairs, self.inter, rule, h_quant)?;
                mark(stream, marks, "quantize h")?;
                match tensor {
                    Some((plan, op)) => {
                        let down = TcOperands {
                            weights: &w.w2,
                            scales: &w.s2,
                            act: &h_quant.values,
                            act_scales: &h_quant.scales,
                            out: y,
                            ..op
                        };
                        plan.down(stream, self.hidden, pairs, pass.experts, &down)?
                    }
                    None => stream.launch(
                        &self.down_w4a4,
                        down,
                        &[
                            &w.w2,
                            &w.s2,
                            &base,
                            &h_quant.values,
                            &h_quant.scales,
                            &g.offsets,
                            &g.active,
                            &g.n_active,
                            y,
                        ],
                    )?,
                }
                mark(stream, marks, "down")?;
            }
            ActivationQuant::None => {
                stream.launch(
                    &self.io::<T>().gate_up_w4a16,
                    gate_up,
                    &[
                        &w.w13,
                        &w.s13,
                        &base,
                        x,
                        &g.offsets,
                        &g.sorted,
                        &g.active,
                        &g.n_active,
                        &slots,
                        h,
                    ],
                )?;
                mark(stream, marks, "gate_up")?;
                stream.launch(
                    &self.down_w4a16,
                    down,
                    &[
                        &w.w2,
                        &w.s2,
                        &base,
                        h,
                        &g.offsets,
                        &g.active,
                        &g.n_active,
                        y,
                    ],
                )?;
                mark(stream, marks, "down")?;
            }
        }
        Ok(())
    }
}

/// One pass of the expert kernels: which weight slots, how many slots per token, which
/// kernels.
#[derive(Debug, Clone, Copy)]
struct Pass<'a> {
    /// First weight slot of this pass.
    base: usize,
    /// Expert slots in this pass.
    experts: usize,
    /// Slots per token.
    slots: usize,
    n_tokens: usize,
    /// The tensor-core kernels, when this pass uses them.
    tensor: Option<TcPlan<'a>>,
}
