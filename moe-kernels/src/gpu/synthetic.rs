//! Seeded synthetic data generated on the device (`kernels/synthetic.hip`): benchmark weights
//! and activations too large to generate on the host and copy over quickly.

use half::bf16;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Function, KernelSource, LaunchConfig, Stream, kernel_source,
};

use super::error::{GpuError, check_param};

const SOURCE: KernelSource<'static> = kernel_source!("../../kernels/synthetic.hip");
const THREADS: u32 = 256;
/// Grid-stride launches: enough blocks to fill any current GPU.
const BLOCKS: u32 = 4096;

/// The synthetic-data kernels, compiled for one device.
#[derive(Debug)]
pub struct Synthetic {
    bytes: Function,
    normal_f32: Function,
    normal_bf16: Function,
}

const GRID: LaunchConfig = LaunchConfig {
    grid: [BLOCKS, 1, 1],
    block: [THREADS, 1, 1],
    shared_mem_bytes: 0,
};

impl Synthetic {
    /// Compiles (or loads from the cache) the generators for `device`.
    pub fn compile(device: &Device) -> Result<Self, GpuError> {
        if device.is_cpu() {
            return Err(GpuError::NotAGpu {
                device: device.id(),
            });
        }
        let module = device.compile(&SOURCE, &Defines::new())?;
        Ok(Synthetic {
            bytes: module.function("synth_bytes")?,
            normal_f32: module.function("synth_normal_f32")?,
            normal_bf16: module.function("synth_normal_bf16")?,
        })
    }

    /// Fills `out` with bytes uniform in `lo ..= hi`.
    pub fn bytes(
        &self,
        stream: &Stream,
        out: &mut DeviceBuffer<u8>,
        seed: u32,
        lo: u8,
        hi: u8,
    ) -> Result<(), GpuError> {
        check_param("lo", lo, lo <= hi, || format!("must not exceed hi ({hi})"))?;
        let span = u32::from(hi) - u32::from(lo) + 1;
        stream.launch(
            &self.bytes,
            GRID,
            &[out, &(out.len() as u64), &seed, &u32::from(lo), &span],
        )?;
        Ok(())
    }

    /// Fills `out` with normal values of standard deviation `scale`.
    pub fn normal_f32(
        &self,
        stream: &Stream,
        out: &mut DeviceBuffer<f32>,
        seed: u32,
        scale: f32,
    ) -> Result<(), GpuError> {
        stream.launch(
            &self.normal_f32,
            GRID,
            &[out, &(out.len() as u64), &seed, &scale],
        )?;
        Ok(())
    }

    /// Fills `out` with normal values of standard deviation `scale`, rounded to bf16.
    pub fn normal_bf16(
        &self,
        stream: &Stream,
        out: &mut DeviceBuffer<bf16>,
        seed: u32,
        scale: f32,
    ) -> Result<(), GpuError> {
        stream.launch(
            &self.normal_bf16,
            GRID,
            &[out, &(out.len() as u64), &seed, &scale],
        )?;
        Ok(())
    }
}
