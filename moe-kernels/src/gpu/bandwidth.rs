//! The device-to-device copy bandwidth, the yardstick every benchmark's bandwidth floor is
//! divided by, and the median the benchmarks report timings by.

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
    Ok(2.0 * BYTES as f64 / median(&mut times))
}

/// The median of `values` (the mean of the middle two for an even count), sorting them in
/// place. Panics on an empty slice: a benchmark that timed nothing has no result to print.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts_in_any_order() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }
}
