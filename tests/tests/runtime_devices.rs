//! Device selection and the CPU device, which every machine has.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_rocm::{
    Defines, Device, DeviceId, DeviceSpec, Error, KernelSource, enumerate, first_gpu, gpus,
};

fn fresh_rng() -> ChaCha8Rng {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn enumeration_ends_with_the_cpu_and_explains_missing_stacks() {
    let found = enumerate();
    let last = found.devices.last().expect("the CPU is always present");
    assert_eq!(last.id(), DeviceId::Cpu);
    assert_eq!(found.devices.iter().filter(|d| d.is_cpu()).count(), 1);
    for device in &found.devices {
        let info = device.info();
        assert!(info.wave_size >= 1 && info.compute_units >= 1, "{info:?}");
        assert!(!info.arch.is_empty(), "{info:?}");
    }
    // Each vendor stack either contributed a device or says why not.
    for backend in ["rocm", "cuda"] {
        let has_device = found.devices.iter().any(|d| match d.id() {
            DeviceId::Rocm(_) => backend == "rocm",
            DeviceId::Cuda(_) => backend == "cuda",
            DeviceId::Cpu => false,
        });
        let explained = found
            .unavailable
            .iter()
            .any(|u| u.backend == backend && !u.reason.is_empty());
        assert!(has_device || explained, "{backend}: {found:?}");
    }
}

#[test]
fn gpu_test_helpers_list_the_enumerated_gpus() {
    let ids = |devices: &[Device]| devices.iter().map(Device::id).collect::<Vec<_>>();
    let enumerated: Vec<Device> = enumerate()
        .devices
        .into_iter()
        .filter(|d| !d.is_cpu())
        .collect();
    let found = gpus("gpu_test_helpers_list_the_enumerated_gpus");
    assert_eq!(ids(&found), ids(&enumerated));
    assert_eq!(
        first_gpu("gpu_test_helpers_list_the_enumerated_gpus").map(|d| d.id()),
        enumerated.first().map(Device::id)
    );
}

#[test]
fn device_strings_select_or_fail_with_typed_errors() {
    assert!(Device::parse_and_open("cpu").unwrap().is_cpu());
    assert!(Device::open(DeviceSpec::Auto).is_ok());
    assert!(matches!(Device::parse_and_open("gpu:0"), Err(Error::Spec(e)) if e.input == "gpu:0"));
    match Device::parse_and_open("cuda:4096") {
        Err(Error::NotAvailable { requested, reason }) => {
            assert_eq!(requested, "cuda:4096");
            assert!(!reason.is_empty());
        }
        other => panic!("expected NotAvailable, got {other:?}"),
    }
    assert!(matches!(
        Device::parse_and_open("rocm:4096"),
        Err(Error::NotAvailable { .. })
    ));
}

#[test]
fn cpu_buffers_copy_set_and_check_lengths() {
    let mut rng = fresh_rng();
    let cpu = Device::cpu();
    let data: Vec<f32> = (0..1000).map(|_| rng.random_range(-1.0..1.0)).collect();
    let source = cpu.upload(&data).unwrap();
    assert_eq!(source.as_host_slice(), Some(&data[..]));
    assert_eq!(source.to_vec().unwrap(), data);

    let mut copy = cpu.alloc_zeroed::<f32>(data.len()).unwrap();
    assert!(copy.to_vec().unwrap().iter().all(|&v| v == 0.0));
    let stream = cpu.create_stream().unwrap();
    copy.copy_from_async(&source, &stream).unwrap();
    stream.synchronize().unwrap();
    assert_eq!(copy.to_vec().unwrap(), data);

    copy.memset(0xff).unwrap();
    assert!(
        copy.to_vec()
            .unwrap()
            .iter()
            .all(|v| v.to_bits() == u32::MAX)
    );

    let mut short = vec![0f32; data.len() - 1];
    assert!(matches!(
        source.copy_to_host(&mut short),
        Err(Error::LengthMismatch {
            expected: 1000,
            found: 999,
            ..
        })
    ));

    // Prefix copies write and read the first elements only and refuse what does not fit.
    let head: Vec<f32> = (0..10).map(|_| rng.random_range(-1.0..1.0)).collect();
    copy.copy_from_async(&source, &stream).unwrap();
    copy.copy_prefix_from_host_async(&head, &stream).unwrap();
    let mut want = data.clone();
    want[..head.len()].copy_from_slice(&head);
    assert_eq!(copy.to_vec().unwrap(), want);
    let mut first = vec![0f32; 17];
    copy.copy_prefix_to_host(&mut first).unwrap();
    assert_eq!(first, want[..17]);
    let mut long = vec![0f32; data.len() + 1];
    assert!(matches!(
        copy.copy_prefix_to_host(&mut long),
        Err(Error::DoesNotFit {
            capacity: 1000,
            found: 1001,
            ..
        })
    ));
    assert!(matches!(
        copy.copy_prefix_from_host_async(&long, &stream),
        Err(Error::DoesNotFit { .. })
    ));
}

#[test]
fn cpu_events_measure_host_time() {
    let cpu = Device::cpu();
    let stream = cpu.default_stream();
    let start = stream.record_event().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let end = stream.record_event().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!((15.0..5000.0).contains(&ms), "{ms} ms");
}

#[test]
fn kernels_do_not_compile_for_the_cpu() {
    let source = KernelSource::new("k.hip", "extern \"C\" __global__ void k() {}");
    let err = Device::cpu().compile(&source, &Defines::new()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                device: DeviceId::Cpu,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn graphs_are_not_captured_on_the_cpu() {
    let stream = Device::cpu().create_stream().unwrap();
    let mut ran = false;
    let err = stream
        .capture(|_| {
            ran = true;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                device: DeviceId::Cpu,
                ..
            }
        ),
        "{err}"
    );
    assert!(!ran, "the closure ran although nothing could be captured");
}
