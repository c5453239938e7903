//! The tensor-core expert GEMMs of `kernels/moe_tc.hip`: W4A4 gate_up and down on FP8
//! (E4M3) tensor cores, exact per MX block (see the kernel source), for passes with many
//! pairs per expert, where the GEMV kernels of `moe.hip` run out of arithmetic.
//!
//! They exist on NVIDIA GPUs of compute capability 8.9 and later (`mma.m16n8k32.e4m3`);
//! elsewhere [`TensorCoreKernels::compile`] returns `None` and every pass takes the GEMV
//! kernels. Their inputs are the same grouping as the GEMV kernels' plus its tile list, and
//! activations quantized to E4M3 bytes instead of doubled int8.

use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelSource, LaunchConfig, Stream, kernel_source,
};

use super::error::GpuError;

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/moe_tc.hip");

/// Pairs per tile (`TC_BN`) of the two compiled variants: narrow tiles waste less tensor work
/// where experts hold few pairs each (the memory-bound sizes), wide ones reread less shared
/// memory per multiply where they hold many.
const NARROW_PAIRS: usize = 16;
const WIDE_PAIRS: usize = 64;
/// Mean pairs per active expert up to which a pass takes the narrow tiles.
const NARROW_UP_TO: usize = 24;
/// Weight rows per tile (`TC_BM` in the kernel).
const TILE_ROWS: usize = 128;
/// K per stage (`TC_BK`), and what hidden and intermediate sizes must be multiples of.
const TILE_K: usize = 128;
/// Threads per block (`TC_THREADS`).
const THREADS: u32 = 256;
/// Stages of raw data in flight (`TC_PIPE`).
const PIPE: usize = 4;

/// Dynamic shared memory of a block with `pairs`-pair tiles (`TC_SMEM_BYTES`): the decoded
/// weight tile (pitch `TILE_K` + 16 bytes), both scale sets as floats, then `PIPE` raw stages
/// (packed weights, activations at the same pitch, E8M0 codes).
const fn shared_bytes(pairs: usize) -> usize {
    TILE_ROWS * (TILE_K + 16)
        + 4 * (TILE_K / 32) * (TILE_ROWS + pairs)
        + PIPE
            * (TILE_ROWS * TILE_K / 2 + pairs * (TILE_K + 16) + (TILE_K / 32) * (TILE_ROWS + pairs))
}

/// The first compute capability with E4M3 `mma.sync` (Ada, Hopper and later).
const MIN_CAPABILITY: u32 = 89;

/// The compiled tensor-core kernels for one (hidden, intermediate) shape, in both tile widths.
#[derive(Debug)]
pub(super) struct TensorCoreKernels {
    narrow: TileKernels,
    wide: TileKernels,
}

/// gate_up and down for one tile width.
#[derive(Debug)]
pub(super) struct TileKernels {
    pairs: usize,
    gate_up: Function,
    down: Function,
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
    /// Upper bound of the tiles `moe_align` can have written: the grid's y extent.
    pub max_tiles: u32,
    pub out: &'a DeviceBuffer<f32>,
}

/// `sm_XY` -> XY; anything else (AMD `gfx…`) -> None.
fn nvidia_capability(arch: &str) -> Option<u32> {
    arch.strip_prefix("sm_")?
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()
}

impl TensorCoreKernels {
    /// Compiles the kernels when `device` has E4M3 tensor cores and both sizes are multiples of
    /// the tile depth; `None` otherwise (the caller uses the GEMV kernels).
    pub(super) fn compile(
        device: &Device,
        hidden: usize,
        inter: usize,
    ) -> Result<Option<Self>, GpuError> {
        let capable = nvidia_capability(&device.info().arch).is_some_and(|cc| cc >= MIN_CAPABILITY);
        if !capable || !hidden.is_multiple_of(TILE_K) || !inter.is_multiple_of(TILE_K) {
            return Ok(None);
        }
        let variant = |pairs: usize| -> Result<TileKernels, GpuError> {
            let defines = Defines::new()
                .set("MOE_HIDDEN", hidden)
                .set("MOE_INTER", inter)
                .set("TC_BN", pairs)
                .set("TC_PIPE", PIPE);
            let module = device.compile(&SOURCE, &defines)?;
            Ok(TileKernels {
                pairs,
                gate_up: module.function("moe_tc_gate_up")?,
                down: module.function("moe_tc_down")?,
            })
        };
        Ok(Some(TensorCoreKernels {
            narrow: variant(NARROW_PAIRS)?,
            wide: variant(WIDE_PAIRS)?,
        }))
    }

    /// The tile width for a pass of `pairs` pairs over at most `experts` experts.
    pub(super) fn for_pass(&self, pairs: usize, experts: usize) -> &TileKernels {
        if pairs <= NARROW_UP_TO * experts.min(pairs) {
            &self.narrow
        } else {
            &self.wide
        }
    }
}

impl TileKernels {
    /// Pairs per tile: what `moe_align` must cut the experts' pairs into for these kernels.
    pub(super) fn tile_pairs(&self) -> usize {
        self.pairs
    }

    /// The most tiles a grouping of `pairs` pairs over `experts` experts can have: every
    /// expert's last tile may be partial.
    pub(super) fn max_tiles(&self, pairs: usize, experts: usize) -> usize {
        pairs.div_ceil(self.pairs) + experts.min(pairs)
    }

    fn config(&self, row_tiles: usize, max_tiles: u32) -> Result<LaunchConfig, GpuError> {
        Ok(LaunchConfig {
            grid: [super::moe::to_u32("row tiles", row_tiles)?, max_tiles, 1],
            block: [THREADS, 1, 1],
            shared_mem_bytes: shared_bytes(self.pairs) as u32,
        })
    }

    /// gate_up with SiLU·up: `h[position][inter]` from E4M3 activations `[tokens][hidden]`,
    /// gathered through `sorted` (flat pair index / `slots` = token).
    pub(super) fn gate_up(
        &self,
        stream: &Stream,
        inter: usize,
        op: &TcOperands<'_>,
        sorted: &DeviceBuffer<i32>,
        slots: i32,
    ) -> Result<(), GpuError> {
        stream.launch(
            &self.gate_up,
            self.config(inter / (TILE_ROWS / 2), op.max_tiles)?,
            &[
                op.weights,
                op.scales,
                &op.expert_base,
                op.act,
                op.act_scales,
                op.offsets,
                sorted,
                op.active,
                op.n_active,
                op.tiles,
                &slots,
                op.out,
            ],
        )?;
        Ok(())
    }

    /// down: unweighted `y[position][hidden]` from E4M3 `h` `[positions][inter]`.
    pub(super) fn down(
        &self,
        stream: &Stream,
        hidden: usize,
        op: &TcOperands<'_>,
    ) -> Result<(), GpuError> {
        stream.launch(
            &self.down,
            self.config(hidden / TILE_ROWS, op.max_tiles)?,
            &[
                op.weights,
                op.scales,
                &op.expert_base,
                op.act,
                op.act_scales,
                op.offsets,
                op.active,
                op.n_active,
                op.tiles,
                op.out,
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_from_arch() {
        assert_eq!(nvidia_capability("sm_90"), Some(90));
        assert_eq!(nvidia_capability("sm_90a"), Some(90));
        assert_eq!(nvidia_capability("sm_89"), Some(89));
        assert_eq!(nvidia_capability("sm_100a"), Some(100));
        assert_eq!(nvidia_capability("gfx942"), None);
        assert_eq!(nvidia_capability("x86_64"), None);
    }
}
