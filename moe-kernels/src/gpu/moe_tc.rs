//! The tensor-core expert GEMMs of `kernels/moe_tc.hip`: W4A4 gate_up and down on FP8
//! (E4M3) tensor cores, exact per MX block (see the kernel source), for passes with many
//! pairs per expert, where the GEMV kernels of `moe.hip` run out of arithmetic.
//!
//! They exist on NVIDIA GPUs of compute capability 8.9 and later (`mma.m16n8k32.e4m3`);
//! elsewhere [`TensorCoreKernels::compile`] returns `None` and every pass takes the GEMV
//! kernels. Their inputs are the same grouping as the GEMV kernels' plus its tile list, and
//! activations quantized to E4M3 bytes instead of doubled int8.

use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelArg, KernelSource, LaunchConfig, Stream,
    kernel_source,
};

use super::error::GpuError;
use super::moe::{to_i32, to_u32};
use super::nvidia_capability;

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/moe_tc.hip");

/// The compiled tile shapes. Narrow tiles (8 or 16 pairs) take the direct layout: every weight
/// is decoded by the one warp that multiplies it, straight into its mma fragment; experts with
/// few pairs are bound by that decode and the issue of their instructions, not by the tensor
/// cores. Wide tiles (64 pairs) share each decoded weight tile across the warps of a block,
/// which pays where each weight meets many pairs (see the kernel source).
///
/// Warps per block as measured best on the H200 (`PERF-NOTES.md`, v8): four for the narrow
/// tiles (more, smaller blocks: B=1 to 128 gain 5-17 % over eight), eight for the medium ones
/// (B=512 5 % faster than four).
const NARROW: TileShape = TileShape {
    pairs: 8,
    direct: true,
    warps: 4,
};
const MEDIUM: TileShape = TileShape {
    pairs: 16,
    direct: true,
    warps: 8,
};
const WIDE: TileShape = TileShape {
    pairs: 64,
    direct: false,
    warps: 8,
};
/// Mean pairs per active expert up to which a pass takes the narrow, then the medium tiles.
const NARROW_UP_TO: usize = 8;
const MEDIUM_UP_TO: usize = 24;
/// K per stage (`TC_BK`), and what the intermediate size must be a multiple of.
const TILE_K: usize = 128;
/// What the hidden size must be a multiple of: the rows of a direct-layout down tile.
const HIDDEN_MULTIPLE: usize = 256;
/// Stages of raw data in flight (`TC_PIPE`).
const PIPE: usize = 4;
/// Warps per SM that the register allocation must allow (`TC_MIN_BLOCKS` blocks of a shape):
/// at most 128 registers a thread.
const WARPS_PER_SM: usize = 16;

/// One compiled tile shape: pairs per tile (`TC_BN`) and the layout (`TC_DIRECT`).
#[derive(Debug, Clone, Copy)]
struct TileShape {
    pairs: usize,
    direct: bool,
    warps: usize,
}

impl TileShape {
    /// Weight rows per block (`TC_BM`).
    const fn rows(self) -> usize {
        if self.direct { 32 * self.warps } else { 128 }
    }

    /// Dynamic shared memory of a block (`TC_SMEM_BYTES`). Direct: `PIPE` raw stages of packed
    /// weights (pitch `TILE_K / 2` + 16), activations (pitch `TILE_K` + 32) and one word of
    /// E8M0 codes per row and per pair. Shared-tile: the decoded weight tile (pitch `TILE_K` +
    /// 16), both scale sets as floats, then `PIPE` raw stages (packed weights, activations at
    /// the decoded pitch, E8M0 codes).
    const fn shared_bytes(self) -> usize {
        let (rows, pairs, kb) = (self.rows(), self.pairs, TILE_K / 32);
        if self.direct {
            PIPE * (rows * (TILE_K / 2 + 16) + pairs * (TILE_K + 32) + 4 * (rows + pairs))
        } else {
            rows * (TILE_K + 16)
                + 4 * kb * (rows + pairs)
                + PIPE * (rows * TILE_K / 2 + pairs * (TILE_K + 16) + kb * (rows + pairs))
        }
    }
}

/// The first compute capability with E4M3 `mma.sync` (Ada, Hopper and later).
const MIN_CAPABILITY: u32 = 89;

/// The compiled tensor-core kernels for one (hidden, intermediate) shape, in every tile shape.
#[derive(Debug)]
pub(super) struct TensorCoreKernels {
    narrow: TileKernels,
    medium: TileKernels,
    wide: TileKernels,
}

/// gate_up and down for one tile shape.
#[derive(Debug)]
pub(super) struct TileKernels {
    shape: TileShape,
    gate_up: Function,
    down: Function,
}

/// The tile widths of one pass: `list` over the active experts (from `moe_align`'s tile list),
/// and optionally wide tiles for trailing dense slots (the fused shared slots: each holds one
/// pair per token), which `list` then leaves out.
#[derive(Debug, Clone, Copy)]
pub(super) struct TcPlan<'a> {
    pub list: &'a TileKernels,
    pub tail: Option<DenseTail<'a>>,
}

/// Trailing active experts served in dense mode (see `tile_of_block` in the kernel).
#[derive(Debug, Clone, Copy)]
pub(super) struct DenseTail<'a> {
    kernels: &'a TileKernels,
    slots: usize,
    pairs_per_slot: usize,
}

/// Where one tensor-core GEMM reads and writes (see the kernel signatures).
pub(super) struct TcOperands<'a> {
    pub weights: &'a DeviceBuffer<u8>,
    pub scales: &'a DeviceBuffer<u8>,
    pub expert_base: i32,
    pub act: &'a DeviceBuffer<i8>,
    pub act_scales: &'a DeviceBuffer<u8>,
    pub offsets: &'a DeviceBuffer<i32>,
    pub active: &'a DeviceBuffer<i32>,
    pub n_active: &'a DeviceBuffer<i32>,
    pub tiles: &'a DeviceBuffer<i32>,
    pub out: &'a DeviceBuffer<f32>,
}

/// One launch of a GEMM: its tile width's kernels, the (n_tail, dense_pairs) arguments and the
/// grid's y extent.
type Launch<'a> = (&'a TileKernels, [i32; 2], usize);

impl TcPlan<'_> {
    /// Pairs per tile of the list `moe_align` must write.
    pub(super) fn tile_pairs(&self) -> usize {
        self.list.shape.pairs
    }

    /// Each launch of one GEMM.
    fn launches(&self, pairs: usize, experts: usize) -> Result<Vec<Launch<'_>>, GpuError> {
        let n_tail = to_i32("shared slots", self.tail.map_or(0, |t| t.slots))?;
        // Every expert's last tile may be partial: at most one tile per expert beyond pairs / width.
        let mut launches = vec![(
            self.list,
            [n_tail, 0],
            pairs.div_ceil(self.list.shape.pairs) + experts.min(pairs),
        )];
        if let Some(t) = self.tail {
            launches.push((
                t.kernels,
                [n_tail, to_i32("pairs per shared slot", t.pairs_per_slot)?],
                t.slots * t.pairs_per_slot.div_ceil(t.kernels.shape.pairs),
            ));
        }
        Ok(launches)
    }

    /// gate_up with SiLU·up over `pairs` pairs of at most `experts` experts:
    /// `h[position][inter]` from E4M3 activations `[tokens][hidden]`, gathered through
    /// `sorted` (flat pair index / `slots` = token).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gate_up(
        &self,
        stream: &Stream,
        inter: usize,
        pairs: usize,
        experts: usize,
        op: &TcOperands<'_>,
        sorted: &DeviceBuffer<i32>,
        slots: i32,
    ) -> Result<(), GpuError> {
        // A tile's rows are half gate, half up rows of the same intermediate indices.
        self.run(
            stream,
            |k| &k.gate_up,
            |rows| inter / (rows / 2),
            pairs,
            experts,
            op,
            &[sorted, &slots],
        )
    }

    /// down: unweighted `y[position][hidden]` from E4M3 `h` `[positions][inter]`.
    pub(super) fn down(
        &self,
        stream: &Stream,
        hidden: usize,
        pairs: usize,
        experts: usize,
        op: &TcOperands<'_>,
    ) -> Result<(), GpuError> {
        self.run(
            stream,
            |k| &k.down,
            |rows| hidden / rows,
            pairs,
            experts,
            op,
            &[],
        )
    }

    /// Every launch of one GEMM (`kernel` of each tile shape in the plan, over `row_tiles` of
    /// its weight rows per block): the arguments both kernels share, then `extra`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        stream: &Stream,
        kernel: fn(&TileKernels) -> &Function,
        row_tiles: impl Fn(usize) -> usize,
        pairs: usize,
        experts: usize,
        op: &TcOperands<'_>,
        extra: &[&dyn KernelArg],
    ) -> Result<(), GpuError> {
        for (kernels, [n_tail, dense], grid_y) in self.launches(pairs, experts)? {
            let shared: [&dyn KernelArg; 12] = [
                op.weights,
                op.scales,
                &op.expert_base,
                op.act,
                op.act_scales,
                op.offsets,
                op.active,
                op.n_active,
                op.tiles,
                &n_tail,
                &dense,
                op.out,
            ];
            let args: Vec<&dyn KernelArg> = shared.iter().chain(extra).copied().collect();
            let row_tiles = row_tiles(kernels.shape.rows());
            stream.launch(kernel(kernels), kernels.config(row_tiles, grid_y)?, &args)?;
        }
        Ok(())
    }
}

impl TensorCoreKernels {
    /// Compiles the kernels when `device` has E4M3 tensor cores, the intermediate size is a
    /// multiple of the tile depth and the hidden size of the direct tiles' rows; `None`
    /// otherwise (the caller uses the GEMV kernels).
    pub(super) fn compile(
        device: &Device,
        hidden: usize,
        inter: usize,
    ) -> Result<Option<Self>, GpuError> {
        let capable = nvidia_capability(&device.info().arch).is_some_and(|cc| cc >= MIN_CAPABILITY);
        if !capable || !hidden.is_multiple_of(HIDDEN_MULTIPLE) || !inter.is_multiple_of(TILE_K) {
            return Ok(None);
        }
        let variant = |shape: TileShape| -> Result<TileKernels, GpuError> {
            let defines = Defines::new()
                .set("MOE_HIDDEN", hidden)
                .set("MOE_INTER", inter)
                .set("TC_DIRECT", u8::from(shape.direct))
                .set("TC_BN", shape.pairs)
                .set("TC_WARPS", shape.warps)
                .set("TC_MIN_BLOCKS", WARPS_PER_SM / shape.warps)
                .set("TC_PIPE", PIPE);
            let module = device.compile(&SOURCE, &defines)?;
            Ok(TileKernels {
                shape,
                gate_up: module.function("moe_tc_gate_up")?,
                down: module.function("moe_tc_down")?,
            })
        };
        Ok(Some(TensorCoreKernels {
            narrow: variant(NARROW)?,
            medium: variant(MEDIUM)?,
            wide: variant(WIDE)?,
        }))
    }

    /// The tile shapes for a pass of `pairs` pairs over at most `experts` experts, of which
    /// the last `dense_slots` hold `pairs_per_dense_slot` pairs each (fused shared slots; 0 for
    /// none): narrow or medium tiles where the other experts average few pairs, and wide ones
    /// for dense slots that hold many.
    pub(super) fn plan(
        &self,
        pairs: usize,
        experts: usize,
        dense_slots: usize,
        pairs_per_dense_slot: usize,
    ) -> TcPlan<'_> {
        let (list, dense_tail) = choose_shapes(pairs, experts, dense_slots, pairs_per_dense_slot);
        let list = match list {
            ListShape::Narrow => &self.narrow,
            ListShape::Medium => &self.medium,
            ListShape::Wide => &self.wide,
        };
        let tail = dense_tail.then_some(DenseTail {
            kernels: &self.wide,
            slots: dense_slots,
            pairs_per_slot: pairs_per_dense_slot,
        });
        TcPlan { list, tail }
    }
}

/// The tile shape of a pass's expert list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListShape {
    Narrow,
    Medium,
    Wide,
}

/// [`TensorCoreKernels::plan`]'s choice, from the counts alone: the list's shape by the mean
/// pairs per sparse (routed) expert, and whether the dense slots go to a separate wide launch
/// (only beside narrow or medium tiles, and only when each holds more pairs than a medium tile
/// serves well; a wide list takes them along).
fn choose_shapes(
    pairs: usize,
    experts: usize,
    dense_slots: usize,
    pairs_per_dense_slot: usize,
) -> (ListShape, bool) {
    let sparse_pairs = pairs.saturating_sub(dense_slots * pairs_per_dense_slot);
    let sparse_experts = experts.saturating_sub(dense_slots).min(sparse_pairs).max(1);
    let list = if sparse_pairs <= NARROW_UP_TO * sparse_experts {
        ListShape::Narrow
    } else if sparse_pairs <= MEDIUM_UP_TO * sparse_experts {
        ListShape::Medium
    } else {
        return (ListShape::Wide, false);
    };
    (list, dense_slots > 0 && pairs_per_dense_slot > MEDIUM_UP_TO)
}

impl TileKernels {
    fn config(&self, row_tiles: usize, tiles: usize) -> Result<LaunchConfig, GpuError> {
        Ok(LaunchConfig {
            grid: [to_u32("row tiles", row_tiles)?, to_u32("tiles", tiles)?, 1],
            block: [to_u32("threads", 32 * self.shape.warps)?, 1, 1],
            shared_mem_bytes: to_u32("shared memory", self.shape.shared_bytes())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ListShape, choose_shapes};

    /// A fused Kimi-K2.5 pass of `tokens` tokens: 384 routed experts, top-8, one shared slot.
    fn fused(tokens: usize) -> (ListShape, bool) {
        choose_shapes(tokens * 9, 385, 1, tokens)
    }

    #[test]
    fn decode_and_prefill_sizes_take_the_measured_shapes() {
        // 32 tokens: 256 routed pairs over at most 256 experts, one pair each; the shared slot
        // holds 32 pairs, more than a medium tile serves well.
        assert_eq!(fused(32), (ListShape::Narrow, true));
        assert_eq!(fused(16), (ListShape::Narrow, false));
        assert_eq!(fused(128), (ListShape::Narrow, true)); // 1024 / 384 = 2.7 a routed expert
        assert_eq!(fused(512), (ListShape::Medium, true)); // 10.7
        assert_eq!(fused(2048), (ListShape::Wide, false)); // 42.7: the shared slot rides along
        // The unfused routed pass has no dense slots, the shared pass only dense ones.
        assert_eq!(
            choose_shapes(512 * 8, 384, 0, 0),
            (ListShape::Medium, false)
        );
        assert_eq!(choose_shapes(512, 1, 1, 512), (ListShape::Narrow, true));
    }

    #[test]
    fn thresholds_are_the_mean_pairs_per_sparse_expert() {
        assert_eq!(choose_shapes(8 * 100, 100, 0, 0).0, ListShape::Narrow);
        assert_eq!(choose_shapes(8 * 100 + 1, 100, 0, 0).0, ListShape::Medium);
        assert_eq!(choose_shapes(24 * 100, 100, 0, 0).0, ListShape::Medium);
        assert_eq!(choose_shapes(24 * 100 + 1, 100, 0, 0).0, ListShape::Wide);
        // Fewer pairs than experts: the mean is over the experts that can be active.
        assert_eq!(choose_shapes(5, 384, 0, 0).0, ListShape::Narrow);
        // Dense slots' pairs do not count toward the sparse mean.
        assert_eq!(
            choose_shapes(800 + 4 * 1000, 104, 4, 1000),
            (ListShape::Narrow, true)
        );
        assert_eq!(choose_shapes(0, 0, 0, 0), (ListShape::Narrow, false));
    }
}
