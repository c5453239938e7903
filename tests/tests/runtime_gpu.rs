//! The runtime on every GPU present: copies, the runtime's own kernels against CPU
//! references, the disk cache, and errors. Each test prints "skipped: no GPU" where there is
//! none (CI); they run on the device machine (see the runtime's device workflow).

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_rocm::{
    Defines, Device, DeviceBuffer, Error, KernelCache, KernelSource, LaunchConfig, Module,
    kernel_source,
};

const AXPY: KernelSource<'static> = kernel_source!("../../runtime-rocm/kernels/axpy.hip");
const REDUCE: KernelSource<'static> = kernel_source!("../../runtime-rocm/kernels/reduce.hip");
const FILL: KernelSource<'static> = kernel_source!("../../runtime-rocm/kernels/fill.hip");
const SHARED: KernelSource<'static> = kernel_source!("../../runtime-rocm/kernels/shared.hip");

/// The GPUs present, for one test at a time: the tests of this binary run on parallel threads,
/// and the leak check reads the device's free memory, which another test's buffers would move.
/// The returned iterator holds the lock until the test's loop over it ends.
fn gpus(test: &str) -> impl Iterator<Item = Device> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding the lock poisons it; the next may still run.
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    runtime_rocm::gpus(test).into_iter().inspect(move |_| {
        let _held = &guard;
    })
}

fn fresh_rng() -> ChaCha8Rng {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

fn random_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn compile(device: &Device, source: &KernelSource<'_>, defines: &Defines) -> Module {
    let cache = tempfile::tempdir().unwrap();
    device
        .compile_with_cache(source, defines, Some(&KernelCache::at(cache.path())))
        .unwrap_or_else(|e| panic!("{}: {e}", device.id()))
}

#[test]
fn copies_round_trip_sync_and_async() {
    let mut rng = fresh_rng();
    for device in gpus("copies_round_trip_sync_and_async") {
        let stream = device.create_stream().unwrap();
        for n in [1usize, 1000, (1 << 20) + 3] {
            let data: Vec<u32> = (0..n).map(|_| rng.random()).collect();
            let buffer = device.upload(&data).unwrap();
            assert_eq!(buffer.to_vec().unwrap(), data);

            let mut copy = device.alloc_uninit::<u32>(n).unwrap();
            copy.copy_from_async(&buffer, &stream).unwrap();
            let mut back = vec![0u32; n];
            copy.copy_to_host_async(&mut back, &stream).unwrap();
            stream.synchronize().unwrap();
            assert_eq!(back, data);

            let other: Vec<u32> = (0..n).map(|_| rng.random()).collect();
            copy.copy_from_host_async(&other, &stream).unwrap();
            copy.memset_async(0xa5, &stream).unwrap();
            stream.synchronize().unwrap();
            assert!(copy.to_vec().unwrap().iter().all(|&v| v == 0xa5a5_a5a5));

            // A prefix copy writes and reads the first elements only; the host slice may be
            // dropped as soon as the queued copy returns (pageable memory is read by then).
            let head = n.div_ceil(3);
            {
                let fresh: Vec<u32> = other[..head].to_vec();
                copy.copy_prefix_from_host_async(&fresh, &stream).unwrap();
            }
            stream.synchronize().unwrap();
            let mut first = vec![0u32; head];
            copy.copy_prefix_to_host(&mut first).unwrap();
            assert_eq!(first, other[..head]);
            let whole = copy.to_vec().unwrap();
            assert!(whole[head..].iter().all(|&v| v == 0xa5a5_a5a5));
        }
        let mut small = device.alloc_zeroed::<f32>(4).unwrap();
        assert!(matches!(
            small.copy_from_host(&[1.0; 5]),
            Err(Error::LengthMismatch {
                expected: 4,
                found: 5,
                ..
            })
        ));
        assert!(matches!(
            small.copy_prefix_from_host_async(&[1.0; 5], &stream),
            Err(Error::DoesNotFit {
                capacity: 4,
                found: 5,
                ..
            })
        ));
    }
}

#[test]
fn axpy_matches_the_cpu() {
    let mut rng = fresh_rng();
    for device in gpus("axpy_matches_the_cpu") {
        let axpy = compile(&device, &AXPY, &Defines::new())
            .function("axpy_f32")
            .unwrap();
        let n = 100_003;
        let (x, y) = (random_f32(&mut rng, n), random_f32(&mut rng, n));
        let a: f32 = rng.random_range(-2.0..2.0);
        let x_dev = device.upload(&x).unwrap();
        let mut y_dev = device.upload(&y).unwrap();
        let stream = device.create_stream().unwrap();
        stream
            .launch(
                &axpy,
                LaunchConfig::linear(n, 256),
                &[&y_dev, &x_dev, &a, &(n as u32)],
            )
            .unwrap();
        stream.synchronize().unwrap();
        let expected: Vec<f32> = x.iter().zip(&y).map(|(x, y)| a.mul_add(*x, *y)).collect();
        let got = y_dev.to_vec().unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() <= 1e-6 * (1.0 + e.abs()),
                "{} element {i}: {g} vs {e}",
                device.id()
            );
        }
        // The buffer is still usable as a destination afterwards.
        y_dev.copy_from_host(&y).unwrap();
    }
}

#[test]
fn wave_shuffle_sum_and_ballot_count_match_the_cpu() {
    let mut rng = fresh_rng();
    for device in gpus("wave_shuffle_sum_and_ballot_count_match_the_cpu") {
        for block in [256u32, 1024] {
            let module = compile(&device, &REDUCE, &Defines::new().set("BLOCK_SIZE", block));
            let (sum, count) = (
                module.function("sum_f32").unwrap(),
                module.function("count_positive_f32").unwrap(),
            );
            let n = 1_000_037usize;
            let x = random_f32(&mut rng, n);
            let x_dev = device.upload(&x).unwrap();
            let blocks = 120u32;
            let mut partial = device.alloc_uninit::<f32>(blocks as usize).unwrap();
            partial.memset(0xff).unwrap(); // NaN poison: every block must write its slot.
            let stream = device.default_stream();
            let config = LaunchConfig {
                grid: [blocks, 1, 1],
                block: [block, 1, 1],
                shared_mem_bytes: 0,
            };
            stream
                .launch(&sum, config, &[&x_dev, &(n as u32), &partial])
                .unwrap();
            let total: f64 = partial.to_vec().unwrap().iter().map(|&p| p as f64).sum();
            let reference: f64 = x.iter().map(|&v| v as f64).sum();
            let abs_sum: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
            assert!(
                (total - reference).abs() <= 1e-6 * abs_sum,
                "{} block {block}: {total} vs {reference}",
                device.id()
            );

            let counter = device.alloc_zeroed::<u32>(1).unwrap();
            stream
                .launch(
                    &count,
                    LaunchConfig::linear(n, block),
                    &[&x_dev, &(n as u32), &counter],
                )
                .unwrap();
            let positives = x.iter().filter(|&&v| v > 0.0).count() as u32;
            assert_eq!(
                counter.to_vec().unwrap(),
                vec![positives],
                "{} block {block}",
                device.id()
            );
        }
    }
}

#[test]
fn bf16_helpers_round_like_the_host() {
    let mut rng = fresh_rng();
    for device in gpus("bf16_helpers_round_like_the_host") {
        let module = compile(&device, &FILL, &Defines::new());
        let (fill, scale) = (
            module.function("fill_bf16").unwrap(),
            module.function("scale_bf16").unwrap(),
        );
        let n = 70_001usize;
        let value: f32 = rng.random_range(-100.0..100.0);
        let out = device.alloc_uninit::<u16>(n).unwrap();
        let stream = device.default_stream();
        stream
            .launch(
                &fill,
                LaunchConfig::linear(n / 4, 128),
                &[&out, &value, &(n as u32)],
            )
            .unwrap();
        let expected = bf16::from_f32(value).to_bits();
        assert!(
            out.to_vec().unwrap().iter().all(|&b| b == expected),
            "{}",
            device.id()
        );

        let input: Vec<u16> = (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-1e3f32..1e3)).to_bits())
            .collect();
        let factor: f32 = rng.random_range(0.1..3.0);
        let in_dev = device.upload(&input).unwrap();
        stream
            .launch(
                &scale,
                LaunchConfig::linear(n, 256),
                &[&out, &in_dev, &factor, &(n as u32)],
            )
            .unwrap();
        let expected: Vec<u16> = input
            .iter()
            .map(|&b| bf16::from_f32(factor * bf16::from_bits(b).to_f32()).to_bits())
            .collect();
        assert_eq!(out.to_vec().unwrap(), expected, "{}", device.id());
    }
}

#[test]
fn second_compile_hits_the_disk_cache_and_corruption_recompiles() {
    for device in gpus("second_compile_hits_the_disk_cache_and_corruption_recompiles") {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::at(dir.path());
        let defines = Defines::new().set("BLOCK_SIZE", 512);
        let first = device
            .compile_with_cache(&REDUCE, &defines, Some(&cache))
            .unwrap();
        assert!(!first.cache_hit());
        let second = device
            .compile_with_cache(&REDUCE, &defines, Some(&cache))
            .unwrap();
        assert!(second.cache_hit());
        second.function("sum_f32").unwrap();
        // Different defines are a different entry.
        let other = device
            .compile_with_cache(
                &REDUCE,
                &Defines::new().set("BLOCK_SIZE", 128),
                Some(&cache),
            )
            .unwrap();
        assert!(!other.cache_hit());

        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&path, bytes).unwrap();
        }
        let rebuilt = device
            .compile_with_cache(&REDUCE, &defines, Some(&cache))
            .unwrap();
        assert!(!rebuilt.cache_hit(), "a corrupted entry must be recompiled");
        assert!(
            device
                .compile_with_cache(&REDUCE, &defines, Some(&cache))
                .unwrap()
                .cache_hit()
        );
    }
}

#[test]
fn failing_launches_and_compiles_report_errors() {
    for device in gpus("failing_launches_and_compiles_report_errors") {
        let axpy = compile(&device, &AXPY, &Defines::new())
            .function("axpy_f32")
            .unwrap();
        let n = 1024usize;
        let x = device.upload(&vec![1.0f32; n]).unwrap();
        let y = device.upload(&vec![2.0f32; n]).unwrap();
        let stream = device.create_stream().unwrap();
        let too_many = LaunchConfig {
            grid: [1, 1, 1],
            block: [4096, 1, 1],
            shared_mem_bytes: 0,
        };
        match stream.launch(&axpy, too_many, &[&y, &x, &3.0f32, &(n as u32)]) {
            Err(Error::Driver {
                operation, message, ..
            }) => {
                assert!(operation.contains("axpy_f32"), "{operation}");
                assert!(!message.is_empty());
            }
            other => panic!("{}: expected a driver error, got {other:?}", device.id()),
        }
        let empty = LaunchConfig {
            grid: [0, 1, 1],
            block: [32, 1, 1],
            shared_mem_bytes: 0,
        };
        assert!(matches!(
            stream.launch(&axpy, empty, &[&y, &x, &3.0f32, &(n as u32)]),
            Err(Error::InvalidLaunch { .. })
        ));
        // The device is still healthy.
        stream
            .launch(
                &axpy,
                LaunchConfig::linear(n, 256),
                &[&y, &x, &3.0f32, &(n as u32)],
            )
            .unwrap();
        stream.synchronize().unwrap();
        assert!(y.to_vec().unwrap().iter().all(|&v| v == 5.0));

        assert!(matches!(
            compile_err(&device, "extern \"C\" __global__ void k(float* y) { y[0] = nope; }"),
            Error::Compile { log, .. } if log.contains("nope")
        ));
        assert!(matches!(
            device.compile(&AXPY, &Defines::new()).unwrap().function("no_such_kernel"),
            Err(Error::Driver { operation, .. }) if operation.contains("no_such_kernel")
        ));
    }
}

fn compile_err(device: &Device, code: &str) -> Error {
    device
        .compile_with_cache(
            &KernelSource::new("broken.hip", code),
            &Defines::new(),
            None,
        )
        .unwrap_err()
}

#[test]
fn events_time_device_work_and_memory_does_not_leak() {
    for device in gpus("events_time_device_work_and_memory_does_not_leak") {
        let stream = device.create_stream().unwrap();
        let src = device.alloc_zeroed::<u8>(64 << 20).unwrap();
        let mut dst = device.alloc_uninit::<u8>(64 << 20).unwrap();
        let start = stream.record_event().unwrap();
        for _ in 0..10 {
            dst.copy_from_async(&src, &stream).unwrap();
        }
        let end = stream.record_event().unwrap();
        let ms = start.elapsed_ms(&end).unwrap();
        assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");

        let (free_before, total) = device.memory_info().unwrap();
        assert!(free_before <= total);
        for i in 0..1000usize {
            let buffer = device
                .alloc_uninit::<f32>(1 + (i * 7919) % (1 << 20))
                .unwrap();
            drop(buffer);
        }
        let (free_after, _) = device.memory_info().unwrap();
        let drift = free_before.abs_diff(free_after);
        assert!(
            drift <= 8 << 20,
            "{}: free memory moved by {drift} bytes",
            device.id()
        );
    }
}

#[test]
fn launches_may_use_all_the_shared_memory_the_device_has() {
    let mut rng = fresh_rng();
    for device in gpus("launches_may_use_all_the_shared_memory_the_device_has") {
        let reverse = compile(&device, &SHARED, &Defines::new())
            .function("reverse_chunks_f32")
            .unwrap();
        let max = device.info().max_shared_memory_per_block;
        assert!(max >= 32 * 1024, "{}: {max}", device.id());
        let chunk = max as usize / 4;
        let blocks = 7usize;
        let input = random_f32(&mut rng, chunk * blocks);
        let in_dev = device.upload(&input).unwrap();
        let out = device.alloc_uninit::<f32>(input.len()).unwrap();
        let stream = device.default_stream();
        let config = LaunchConfig {
            grid: [blocks as u32, 1, 1],
            block: [256, 1, 1],
            shared_mem_bytes: max,
        };
        stream
            .launch(&reverse, config, &[&out, &in_dev, &(chunk as u32)])
            .unwrap();
        let expected: Vec<f32> = input
            .chunks(chunk)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert_eq!(out.to_vec().unwrap(), expected, "{}", device.id());

        let too_much = config.with_shared_mem(max + 1024);
        assert!(
            matches!(
                stream.launch(&reverse, too_much, &[&out, &in_dev, &(chunk as u32)]),
                Err(Error::Driver { .. })
            ),
            "{}: a launch over the shared-memory limit must fail",
            device.id()
        );
    }
}

#[test]
fn a_captured_graph_replays_on_updated_inputs() {
    let mut rng = fresh_rng();
    for device in gpus("a_captured_graph_replays_on_updated_inputs") {
        let axpy = compile(&device, &AXPY, &Defines::new())
            .function("axpy_f32")
            .unwrap();
        let n = 50_001;
        let a: f32 = rng.random_range(-2.0..2.0);
        let mut x_dev = device.alloc_zeroed::<f32>(n).unwrap();
        let mut y_dev = device.alloc_zeroed::<f32>(n).unwrap();
        let mut z_dev = device.alloc_zeroed::<f32>(n).unwrap();
        let stream = device.create_stream().unwrap();
        // y += a·x twice, then z = y: three nodes, none of which runs now.
        let graph = stream
            .capture(|s| {
                for _ in 0..2 {
                    s.launch(
                        &axpy,
                        LaunchConfig::linear(n, 256),
                        &[&y_dev, &x_dev, &a, &(n as u32)],
                    )?;
                }
                z_dev.copy_from_async(&y_dev, s)
            })
            .unwrap();
        stream.synchronize().unwrap();
        assert!(z_dev.to_vec().unwrap().iter().all(|&v| v == 0.0));
        for replay in 0..3 {
            let x = random_f32(&mut rng, n);
            let y = random_f32(&mut rng, n);
            x_dev.copy_from_host_async(&x, &stream).unwrap();
            y_dev.copy_from_host_async(&y, &stream).unwrap();
            // SAFETY: every captured buffer outlives the replay (synchronized below).
            unsafe { graph.launch(&stream) }.unwrap();
            stream.synchronize().unwrap();
            let got = z_dev.to_vec().unwrap();
            for (i, g) in got.iter().enumerate() {
                let e = a.mul_add(x[i], a.mul_add(x[i], y[i]));
                assert!(
                    (g - e).abs() <= 1e-6 * (1.0 + e.abs()),
                    "{} replay {replay} element {i}: {g} vs {e}",
                    device.id()
                );
            }
        }
        // The default stream cannot be captured; a synchronous copy inside a capture fails
        // the capture and leaves the stream usable.
        assert!(matches!(
            device.default_stream().capture(|_| Ok(())),
            Err(Error::Unsupported { .. })
        ));
        let failed = stream.capture(|_| z_dev.copy_from_host(&vec![1.0; n]));
        assert!(failed.is_err(), "a synchronous copy was captured");
        y_dev.copy_from_host_async(&vec![2.0; n], &stream).unwrap();
        stream.synchronize().unwrap();
        assert!(y_dev.to_vec().unwrap().iter().all(|&v| v == 2.0));
    }
}

#[test]
fn synchronous_work_on_other_threads_waits_out_a_capture() {
    let mut rng = fresh_rng();
    for device in gpus("synchronous_work_on_other_threads_waits_out_a_capture") {
        let axpy = compile(&device, &AXPY, &Defines::new())
            .function("axpy_f32")
            .unwrap();
        let n = 4096;
        let x_dev = device.upload(&random_f32(&mut rng, n)).unwrap();
        let y_dev = device.alloc_zeroed::<f32>(n).unwrap();
        let stream = device.create_stream().unwrap();
        // Each other thread starts one kind of synchronous work the moment the capture is
        // open: on blocking streams each would otherwise fail ("legacy stream depends on a
        // capturing stream") or break the capture.
        type Work = fn(&Device, &mut DeviceBuffer<f32>, &[f32]);
        let kinds: [(&str, Work); 6] = [
            ("copy to host", |_, b, want| {
                assert_eq!(b.to_vec().unwrap(), want)
            }),
            ("copy from host", |_, b, want| {
                b.copy_from_host(want).unwrap()
            }),
            ("memset", |_, b, _| b.memset(0).unwrap()),
            ("upload", |d, _, want| {
                assert_eq!(d.upload(want).unwrap().to_vec().unwrap(), want)
            }),
            ("synchronize", |d, _, _| d.synchronize().unwrap()),
            ("drop", |_, b, _| {
                drop(std::mem::replace(b, b.device().alloc_zeroed(1).unwrap()))
            }),
        ];
        let started = std::sync::Barrier::new(kinds.len() + 1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = kinds
                .iter()
                .map(|&(name, work)| {
                    let data = random_f32(&mut fresh_rng(), n);
                    let mut buffer = device.upload(&data).unwrap();
                    let (device, started) = (&device, &started);
                    scope.spawn(move || {
                        started.wait();
                        work(device, &mut buffer, &data);
                        name
                    })
                })
                .collect();
            let graph = stream
                .capture(|s| {
                    started.wait();
                    for _ in 0..50 {
                        s.launch(
                            &axpy,
                            LaunchConfig::linear(n, 256),
                            &[&y_dev, &x_dev, &1.0f32, &(n as u32)],
                        )?;
                        // Keep the capture open while the other threads start.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Ok::<(), Error>(())
                })
                .unwrap();
            for worker in workers {
                let name = worker.join().unwrap();
                eprintln!("{}: {name} during a capture: ok", device.id());
            }
            // SAFETY: the buffers outlive the replay (synchronized below).
            unsafe { graph.launch(&stream) }.unwrap();
            stream.synchronize().unwrap();
        });
        let (x, y) = (x_dev.to_vec().unwrap(), y_dev.to_vec().unwrap());
        for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
            let want = (0..50).fold(0.0f32, |acc, _| xi.mul_add(1.0, acc));
            assert_eq!(yi, want, "{} element {i}", device.id());
        }
    }
}

/// Each step reads its input at a permuted index (another block's output) and writes the other
/// buffer, which the step before read: a step that started before the previous one finished
/// would read stale values or overwrite live ones.
const CHAIN: &str = r#"// dependent-launch
extern "C" __global__ void chain_step(const float* __restrict__ src, float* __restrict__ dst,
                                      int n, int stride) {
    mx_wait_prior_kernels();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[(int)(((long long)i * stride) % n)] + 1.0f;
}
"#;

#[test]
fn dependent_launches_wait_for_the_kernel_before_them() {
    let mut rng = fresh_rng();
    for device in gpus("dependent_launches_wait_for_the_kernel_before_them") {
        let supported = device.set_dependent_launch(true).is_ok();
        // An H100 or newer must take the dependent path; only older cards may refuse it.
        let capability = device
            .info()
            .arch
            .strip_prefix("sm_")
            .and_then(|v| v.parse::<u32>().ok());
        if capability.is_some_and(|c| c >= 90) {
            assert!(supported, "{}: {}", device.id(), device.info().arch);
        }
        let step = compile(
            &device,
            &KernelSource::new("chain.hip", CHAIN),
            &Defines::new(),
        )
        .function("chain_step")
        .unwrap();
        // n is prime and the stride below n, so i -> i * stride mod n permutes the elements.
        let (n, steps) = (1_000_003usize, 64);
        let stride = rng.random_range(2..n as i32);
        let start = random_f32(&mut rng, n);
        let mut expected = start.clone();
        for _ in 0..steps {
            expected = (0..n)
                .map(|i| expected[(i as u64 * stride as u64 % n as u64) as usize] + 1.0)
                .collect();
        }
        let stream = device.create_stream().unwrap();
        let mut buffers = [
            device.upload(&start).unwrap(),
            device.alloc_zeroed(n).unwrap(),
        ];
        let run = |buffers: &[DeviceBuffer<f32>; 2],
                   s: &runtime_rocm::Stream|
         -> runtime_rocm::Result<()> {
            for k in 0..steps {
                let (src, dst) = (&buffers[k % 2], &buffers[(k + 1) % 2]);
                s.launch(
                    &step,
                    LaunchConfig::linear(n, 256),
                    &[src, dst, &(n as i32), &stride],
                )?;
            }
            Ok(())
        };
        let modes: &[bool] = if supported { &[true, false] } else { &[false] };
        for &dependent in modes {
            device.set_dependent_launch(dependent).unwrap();
            let graph = stream.capture(|s| run(&buffers, s)).unwrap();
            for replayed in [false, true] {
                buffers[0].copy_from_host_async(&start, &stream).unwrap();
                if replayed {
                    // SAFETY: both buffers outlive the replay (synchronized below).
                    unsafe { graph.launch(&stream) }.unwrap();
                } else {
                    run(&buffers, &stream).unwrap();
                }
                stream.synchronize().unwrap();
                let got = buffers[steps % 2].to_vec().unwrap();
                let wrong = (0..n).filter(|&i| got[i] != expected[i]).count();
                assert_eq!(
                    wrong,
                    0,
                    "{} dependent {dependent} replayed {replayed}: {wrong} of {n} elements wrong",
                    device.id()
                );
            }
        }
        // A dependent-launch source whose kernel does not wait first is refused before it
        // reaches the compiler.
        let no_wait = "// dependent-launch\nextern \"C\" __global__ void k(float* y) { y[0] = 1; }";
        assert!(matches!(
            compile_err(&device, no_wait),
            Error::InvalidSource { .. }
        ));
    }
}
