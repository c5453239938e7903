//! Device check for the runtime, run on a GPU machine (see the crate's device workflow):
//! allocates, copies, compiles and launches the runtime's kernels (with the disk cache; run it
//! twice to see the hit), checks each result against the CPU, times a device-to-device copy
//! (median of many event-timed repetitions), runs 10 000 alloc/free cycles watching free
//! memory, and shows a failing launch returning an error. Exits non-zero on any failure.
//!
//! `runtime_check [device]` (default `auto`); the cache directory is `MXSERVE_KERNEL_CACHE`.

use std::time::Instant;

use anyhow::{Context, bail, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Error, KernelCache, KernelSource, LaunchConfig, Module,
    enumerate, kernel_source,
};

const AXPY: KernelSource<'static> = kernel_source!("../kernels/axpy.hip");
const REDUCE: KernelSource<'static> = kernel_source!("../kernels/reduce.hip");
const FILL: KernelSource<'static> = kernel_source!("../kernels/fill.hip");

fn main() -> anyhow::Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "auto".into());
    let found = enumerate();
    for d in &found.devices {
        println!(
            "device {:<7} {} ({}, {:.1} GiB, wave {}, {} CUs)",
            d.id().to_string(),
            d.info().name,
            d.info().arch,
            d.info().total_memory as f64 / (1u64 << 30) as f64,
            d.info().wave_size,
            d.info().compute_units
        );
    }
    for u in &found.unavailable {
        println!("stack  {:<7} not available: {}", u.backend, u.reason);
    }
    let device = Device::parse_and_open(&spec)?;
    ensure!(!device.is_cpu(), "no GPU: nothing to check");
    let cache = KernelCache::from_env().context("no cache directory (set MXSERVE_KERNEL_CACHE)")?;
    println!("using {} | cache {}", device.id(), cache.dir().display());
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut table = Vec::new();

    let mut modules = Vec::new();
    for (source, defines) in [
        (&AXPY, Defines::new()),
        (&REDUCE, Defines::new()),
        (&FILL, Defines::new()),
    ] {
        let started = Instant::now();
        let module = device.compile_with_cache(source, &defines, Some(&cache))?;
        let what = if module.cache_hit() {
            "disk cache hit"
        } else {
            "compiled"
        };
        table.push((
            format!("load {}", source.name),
            format!("{what} in {:.1} ms", started.elapsed().as_secs_f64() * 1e3),
        ));
        modules.push(module);
    }
    table.push((
        "axpy vs CPU".into(),
        check_axpy(&device, &modules[0], &mut rng)?,
    ));
    table.push((
        "wave-shuffle sum vs CPU (f64)".into(),
        check_sum(&device, &modules[1], &mut rng)?,
    ));
    table.push((
        "ballot count vs CPU".into(),
        check_count(&device, &modules[1], &mut rng)?,
    ));
    table.push((
        "bf16 fill/scale vs host rounding".into(),
        check_bf16(&device, &modules[2], &mut rng)?,
    ));
    table.push((
        "device-to-device copy".into(),
        time_copy(&device, &mut rng)?,
    ));
    table.push(("10 000 alloc/free cycles".into(), alloc_cycles(&device)?));
    table.push((
        "launch with 4096 threads/block".into(),
        failing_launch(&device, &modules[0])?,
    ));

    println!("\n{:<34} result", "check");
    for (check, result) in &table {
        println!("{check:<34} {result}");
    }
    Ok(())
}

fn random_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn check_axpy(device: &Device, module: &Module, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let axpy = module.function("axpy_f32")?;
    let n = 10_000_019usize;
    let (x, y) = (random_f32(rng, n), random_f32(rng, n));
    let a: f32 = rng.random_range(-2.0..2.0);
    let x_dev = device.upload(&x)?;
    let y_dev = device.upload(&y)?;
    let stream = device.create_stream()?;
    stream.launch(
        &axpy,
        LaunchConfig::linear(n, 256),
        &[&y_dev, &x_dev, &a, &(n as u32)],
    )?;
    stream.synchronize()?;
    let got = y_dev.to_vec()?;
    let worst = got
        .iter()
        .zip(x.iter().zip(&y))
        .map(|(g, (x, y))| (g - a.mul_add(*x, *y)).abs())
        .fold(0f32, f32::max);
    ensure!(worst <= 1e-6, "axpy max abs error {worst}");
    Ok(format!("PASS ({n} elements, max abs error {worst:.1e})"))
}

fn check_sum(device: &Device, module: &Module, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let sum = module.function("sum_f32")?;
    let n = 16_777_259usize;
    let x = random_f32(rng, n);
    let x_dev = device.upload(&x)?;
    let blocks = 4 * device.info().compute_units;
    let partial = device.alloc_uninit::<f32>(blocks as usize)?;
    let config = LaunchConfig {
        grid: [blocks, 1, 1],
        block: [256, 1, 1],
        shared_mem_bytes: 0,
    };
    device
        .default_stream()
        .launch(&sum, config, &[&x_dev, &(n as u32), &partial])?;
    let total: f64 = partial.to_vec()?.iter().map(|&p| p as f64).sum();
    let reference: f64 = x.iter().map(|&v| v as f64).sum();
    let abs_sum: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
    let relative = (total - reference).abs() / abs_sum;
    ensure!(
        relative <= 1e-6,
        "sum {total} vs {reference} (relative to sum|x| {relative:.1e})"
    );
    Ok(format!(
        "PASS (wave {}, {n} elements, error / sum|x| = {relative:.1e})",
        device.info().wave_size
    ))
}

fn check_count(device: &Device, module: &Module, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let count = module.function("count_positive_f32")?;
    let n = 3_000_017usize;
    let x = random_f32(rng, n);
    let x_dev = device.upload(&x)?;
    let counter = device.alloc_zeroed::<u32>(1)?;
    device.default_stream().launch(
        &count,
        LaunchConfig::linear(n, 256),
        &[&x_dev, &(n as u32), &counter],
    )?;
    let got = counter.to_vec()?[0];
    let expected = x.iter().filter(|&&v| v > 0.0).count() as u32;
    ensure!(got == expected, "ballot count {got} vs {expected}");
    Ok(format!("PASS ({got} of {n})"))
}

fn check_bf16(device: &Device, module: &Module, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let scale = module.function("scale_bf16")?;
    let n = 1_000_003usize;
    let input: Vec<u16> = (0..n)
        .map(|_| half::bf16::from_f32(rng.random_range(-1e3f32..1e3)).to_bits())
        .collect();
    let factor: f32 = rng.random_range(0.1..3.0);
    let in_dev = device.upload(&input)?;
    let out = device.alloc_uninit::<u16>(n)?;
    device.default_stream().launch(
        &scale,
        LaunchConfig::linear(n, 256),
        &[&out, &in_dev, &factor, &(n as u32)],
    )?;
    let got = out.to_vec()?;
    let mismatches = got
        .iter()
        .zip(&input)
        .filter(|(g, i)| {
            **g != half::bf16::from_f32(factor * half::bf16::from_bits(**i).to_f32()).to_bits()
        })
        .count();
    ensure!(mismatches == 0, "{mismatches} bf16 mismatches");
    Ok(format!("PASS ({n} elements bit-exact)"))
}

/// Median of event-timed copies of a 1 GiB random buffer; bandwidth counts bytes read plus
/// bytes written.
fn time_copy(device: &Device, rng: &mut ChaCha8Rng) -> anyhow::Result<String> {
    let words = 256usize << 20; // 1 GiB of u32
    let data: Vec<u32> = (0..words).map(|_| rng.random()).collect();
    let src = device.upload(&data)?;
    let mut dst: DeviceBuffer<u32> = device.alloc_uninit(words)?;
    let stream = device.create_stream()?;
    for _ in 0..5 {
        dst.copy_from_async(&src, &stream)?;
    }
    stream.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..100 {
        let start = stream.record_event()?;
        dst.copy_from_async(&src, &stream)?;
        let end = stream.record_event()?;
        times.push(start.elapsed_ms(&end)?);
    }
    times.sort_by(f32::total_cmp);
    let median = times[times.len() / 2] as f64;
    ensure!(dst.to_vec()? == data, "copied data differs");
    let bytes = 2.0 * (words * 4) as f64;
    Ok(format!(
        "{:.2} TB/s (1 GiB, median {median:.3} ms of 100, min {:.3}, max {:.3}; verified)",
        bytes / (median * 1e-3) / 1e12,
        times[0],
        times[times.len() - 1]
    ))
}

fn alloc_cycles(device: &Device) -> anyhow::Result<String> {
    device.synchronize()?;
    let (free_before, _) = device.memory_info()?;
    let started = Instant::now();
    for i in 0..10_000usize {
        let len = 1 + (i * 104_729) % (16 << 20);
        let buffer = device.alloc_uninit::<u32>(len)?;
        drop(buffer);
    }
    let (free_after, _) = device.memory_info()?;
    let drift = free_before as i64 - free_after as i64;
    ensure!(
        drift.abs() <= 1 << 20,
        "free memory drifted by {drift} bytes"
    );
    Ok(format!(
        "PASS (free memory drift {drift} bytes, {:.0} ms)",
        started.elapsed().as_secs_f64() * 1e3
    ))
}

fn failing_launch(device: &Device, module: &Module) -> anyhow::Result<String> {
    let axpy = module.function("axpy_f32")?;
    let n = 4096usize;
    let x = device.upload(&vec![1.0f32; n])?;
    let y = device.upload(&vec![2.0f32; n])?;
    let stream = device.create_stream()?;
    let config = LaunchConfig {
        grid: [1, 1, 1],
        block: [4096, 1, 1],
        shared_mem_bytes: 0,
    };
    let message = match stream.launch(&axpy, config, &[&y, &x, &1.0f32, &(n as u32)]) {
        Err(err @ Error::Driver { .. }) => err.to_string(),
        Err(other) => bail!("unexpected error kind: {other}"),
        Ok(()) => bail!("a 4096-thread block launched without an error"),
    };
    stream.launch(
        &axpy,
        LaunchConfig::linear(n, 256),
        &[&y, &x, &1.0f32, &(n as u32)],
    )?;
    stream.synchronize()?;
    ensure!(
        y.to_vec()?.iter().all(|&v| v == 3.0),
        "device unusable after the failed launch"
    );
    Ok(format!("error, device still usable: {message}"))
}
