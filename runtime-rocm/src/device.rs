//! Devices: enumeration, selection from a [`DeviceSpec`], and what each device reports.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cpu;
use crate::cuda;
use crate::error::{Error, Result, Vendor};
use crate::gpu::{ApiError, GpuApi};
use crate::hip;
use crate::spec::DeviceSpec;

/// Identity of one device in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceId {
    /// The host CPU.
    Cpu,
    /// AMD GPU number `N` (HIP ordinal).
    Rocm(usize),
    /// NVIDIA GPU number `N` (CUDA ordinal).
    Cuda(usize),
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu => f.write_str("cpu"),
            DeviceId::Rocm(i) => write!(f, "rocm:{i}"),
            DeviceId::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What a device says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Which device this is.
    pub id: DeviceId,
    /// Marketing name (`NVIDIA H100 80GB HBM3`, `AMD Instinct MI300X`, the CPU model).
    pub name: String,
    /// Architecture: `sm_90`, `gfx942`, or the CPU's (`x86_64`).
    pub arch: String,
    /// Total memory in bytes (device memory, or host RAM for the CPU).
    pub total_memory: u64,
    /// Threads per wave/warp: 64 on CDNA, 32 on NVIDIA and RDNA, 1 on the CPU.
    pub wave_size: u32,
    /// Compute units (AMD CUs, NVIDIA SMs, CPU threads).
    pub compute_units: u32,
    /// Most shared memory (LDS) one block may use, static plus dynamic, in bytes; launches
    /// asking for more than the vendor's default limit opt in automatically (0 on the CPU).
    pub max_shared_memory_per_block: u32,
}

/// A handle to one device; cheap to clone, every clone refers to the same device.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    info: DeviceInfo,
    gpu: Option<Box<dyn GpuApi>>,
    /// Whether `// dependent-launch` kernels are launched as such (see
    /// [`Device::dependent_launch`]).
    dependent_launch: AtomicBool,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.inner.info)
            .finish()
    }
}

impl Device {
    /// The host CPU. Always available.
    pub fn cpu() -> Device {
        Device {
            inner: Arc::new(DeviceInner {
                info: cpu::info(),
                gpu: None,
                dependent_launch: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn from_gpu(gpu: Box<dyn GpuApi>) -> Device {
        Device {
            inner: Arc::new(DeviceInner {
                info: gpu.info().clone(),
                dependent_launch: AtomicBool::new(gpu.dependent_launch_supported()),
                gpu: Some(gpu),
            }),
        }
    }

    /// Opens the device a [`DeviceSpec`] names. `auto` never fails: it falls back to the CPU
    /// (and logs why no GPU was taken); `rocm:N` / `cuda:N` fail with
    /// [`Error::NotAvailable`] when that device is not present.
    pub fn open(spec: DeviceSpec) -> Result<Device> {
        match spec {
            DeviceSpec::Cpu => Ok(Device::cpu()),
            DeviceSpec::Rocm(index) => open_gpu(spec, hip::device_count, hip::open, index),
            DeviceSpec::Cuda(index) => open_gpu(spec, cuda::device_count, cuda::open, index),
            DeviceSpec::Auto => {
                for candidate in [DeviceSpec::Rocm(0), DeviceSpec::Cuda(0)] {
                    match Device::open(candidate) {
                        Ok(device) => return Ok(device),
                        Err(err) => tracing::info!("auto device: not using {candidate}: {err}"),
                    }
                }
                Ok(Device::cpu())
            }
        }
    }

    /// Parses a device string (`auto`, `cpu`, `rocm:N`, `cuda:N`) and opens that device.
    pub fn parse_and_open(spec: &str) -> Result<Device> {
        Device::open(spec.parse()?)
    }

    /// What this device reports about itself.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// This device's identity.
    pub fn id(&self) -> DeviceId {
        self.inner.info.id
    }

    /// Whether this is the CPU (kernels do not run here; callers use CPU implementations).
    pub fn is_cpu(&self) -> bool {
        self.inner.gpu.is_none()
    }

    /// Free and total device memory in bytes, as the driver reports them now.
    pub fn memory_info(&self) -> Result<(u64, u64)> {
        match &self.inner.gpu {
            None => Ok(cpu::memory_info()),
            Some(gpu) => {
                let (free, total) = self.check(gpu.mem_info(), "query free memory")?;
                Ok((free as u64, total as u64))
            }
        }
    }

    /// Waits until all work queued on every stream of this device has finished.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner.gpu {
            None => Ok(()),
            Some(gpu) => {
                let _legacy = crate::graph::legacy_stream_guard();
                self.check(gpu.synchronize(), "synchronize device")
            }
        }
    }

    /// Whether launches of kernels from `// dependent-launch` sources may overlap the end of
    /// the kernel before them (see [`KernelSource`](crate::KernelSource)). On by default where
    /// the device supports it: NVIDIA from compute capability 9.0; never on AMD or the CPU.
    pub fn dependent_launch(&self) -> bool {
        self.inner.dependent_launch.load(Ordering::Relaxed)
    }

    /// Turns dependent launch on or off for later launches (to compare the two); graphs
    /// captured earlier keep the launches they recorded. Turning it on where the device does
    /// not support it is refused.
    pub fn set_dependent_launch(&self, on: bool) -> Result<()> {
        let supported = self
            .gpu()
            .is_some_and(|gpu| gpu.dependent_launch_supported());
        if on && !supported {
            return Err(Error::Unsupported {
                operation: "dependent kernel launch".into(),
                device: self.id(),
            });
        }
        self.inner.dependent_launch.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn gpu(&self) -> Option<&dyn GpuApi> {
        self.inner.gpu.as_deref()
    }

    /// Turns a vendor result into a crate error naming the operation and this device.
    pub(crate) fn check<T>(
        &self,
        result: Result<T, ApiError>,
        operation: impl Into<String>,
    ) -> Result<T> {
        result.map_err(|err| Error::Driver {
            // Vendor results only come from GPU devices; the CPU has no vendor calls to fail.
            vendor: self.vendor().unwrap_or(Vendor::Cuda),
            operation: operation.into(),
            device: self.id(),
            code: err.code,
            message: err.message,
        })
    }

    fn vendor(&self) -> Option<Vendor> {
        self.inner.gpu.as_ref().map(|gpu| gpu.vendor())
    }

    pub(crate) fn same_device(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.id() == other.id()
    }
}

/// A vendor stack's two entry points: count devices, open one.
type CountFn = fn() -> Result<usize, String>;
type OpenFn = fn(usize) -> Result<Box<dyn GpuApi>, String>;

/// Both vendor stacks, AMD first (the product's target).
const STACKS: [(&str, CountFn, OpenFn); 2] = [
    ("rocm", hip::device_count, hip::open),
    ("cuda", cuda::device_count, cuda::open),
];

fn open_gpu(spec: DeviceSpec, count: CountFn, open: OpenFn, index: usize) -> Result<Device> {
    let not_available = |reason: String| Error::NotAvailable {
        requested: spec.to_string(),
        reason,
    };
    let present = count().map_err(not_available)?;
    if index >= present {
        return Err(not_available(format!(
            "{present} device(s) of this kind present"
        )));
    }
    open(index).map(Device::from_gpu).map_err(not_available)
}

/// A vendor stack that was looked for and not used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `rocm` or `cuda`.
    pub backend: &'static str,
    /// Why: library not found, no device, or the driver's error.
    pub reason: String,
}

/// Every device present, GPUs first and the CPU last, plus the stacks that were not usable.
#[derive(Debug, Clone)]
pub struct Enumeration {
    /// Usable devices; the CPU is always the last entry.
    pub devices: Vec<Device>,
    /// Vendor stacks that are missing or have no device; never an error.
    pub unavailable: Vec<Unavailable>,
}

impl Enumeration {
    /// Whether any GPU was found.
    pub fn has_gpu(&self) -> bool {
        self.devices.iter().any(|d| !d.is_cpu())
    }
}

/// Lists every device on this machine. Missing libraries or devices are reported in
/// [`Enumeration::unavailable`], never as errors.
pub fn enumerate() -> Enumeration {
    let mut devices = Vec::new();
    let mut unavailable = Vec::new();
    for (backend, count, open) in STACKS {
        match count() {
            Ok(0) => unavailable.push(Unavailable {
                backend,
                reason: "the runtime loaded but reports no device".into(),
            }),
            Ok(n) => {
                for index in 0..n {
                    match open(index) {
                        Ok(gpu) => devices.push(Device::from_gpu(gpu)),
                        Err(reason) => unavailable.push(Unavailable {
                            backend,
                            reason: format!("device {index}: {reason}"),
                        }),
                    }
                }
            }
            Err(reason) => unavailable.push(Unavailable { backend, reason }),
        }
    }
    devices.push(Device::cpu());
    Enumeration {
        devices,
        unavailable,
    }
}

/// Every GPU on this machine, for a GPU test that passes (doing nothing) where there is none:
/// then it prints `skipped: no GPU (<test>)` to stderr, so a pass on a machine without a GPU
/// says that nothing was checked.
pub fn gpus(test: &str) -> Vec<Device> {
    let gpus: Vec<Device> = enumerate()
        .devices
        .into_iter()
        .filter(|d| !d.is_cpu())
        .collect();
    if gpus.is_empty() {
        // Not `tracing`: a test binary has no subscriber, and this line must show.
        eprintln!("skipped: no GPU ({test})");
    }
    gpus
}

/// The first GPU of [`gpus`] (with its skip message where there is none).
pub fn first_gpu(test: &str) -> Option<Device> {
    gpus(test).into_iter().next()
}
