//! The CPU as a device: what it reports about itself. Its buffers are host vectors and its
//! streams run synchronously; kernels do not run on it.

use crate::device::{DeviceId, DeviceInfo};

pub(crate) fn info() -> DeviceInfo {
    DeviceInfo {
        id: DeviceId::Cpu,
        name: cpu_model().unwrap_or_else(|| "CPU".to_owned()),
        arch: std::env::consts::ARCH.to_owned(),
        total_memory: meminfo_kib("MemTotal:").map_or(0, |kib| kib * 1024),
        wave_size: 1,
        compute_units: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    }
}

/// Free and total host memory in bytes (0 where /proc/meminfo is absent).
pub(crate) fn memory_info() -> (u64, u64) {
    let free = meminfo_kib("MemAvailable:").map_or(0, |kib| kib * 1024);
    let total = meminfo_kib("MemTotal:").map_or(0, |kib| kib * 1024);
    (free, total)
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
