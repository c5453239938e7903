//! The device-to-device copy bandwidth, the yardstick every benchmark's bandwidth floor is
//! divided by.

use runtime_rocm::{Device, DeviceBuffer, Stream};

use super::error::GpuError;

/// Bytes copied per measurement (large enough that the L2 cache does not matter).
const BYTES: usize = 2 << 30;

/// Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written: the
/// median of 10 timed copies of 2 GiB after 2 untimed ones. Allocates 4 GiB while it runs.
pub fn copy_bandwidth(device: &Device, stream: &Stream) -> Result<f64, GpuError> {
    let src: DeviceBuffer<u8> = device.alloc_zeroed(BYTES)?;
    let mut dst: DeviceBuffer<u8> = device.alloc_zeroed(BYTES)?;
    let mut times = Vec::new();
    for i in 0..12 {
        let start = stream.record_event()?;
        dst.copy_from_async(&src, stream)?;
        let end = stream.record_event()?;
        end.synchronize()?;
        if i >= 2 {
            times.push(f64::from(start.elapsed_ms(&end)?) * 1e-3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = 0.5 * (times[times.len() / 2 - 1] + times[times.len() / 2]);
    Ok(2.0 * BYTES as f64 / median)
}
