//! Lists the devices this machine offers and the vendor stacks that were not usable.

fn main() {
    let found = runtime_rocm::enumerate();
    for device in &found.devices {
        let info = device.info();
        println!(
            "{:<8} {} | arch {} | {:.1} GiB | wave {} | {} compute units",
            info.id.to_string(),
            info.name,
            info.arch,
            info.total_memory as f64 / (1u64 << 30) as f64,
            info.wave_size,
            info.compute_units
        );
    }
    for missing in &found.unavailable {
        println!("{:<8} not available: {}", missing.backend, missing.reason);
    }
}
