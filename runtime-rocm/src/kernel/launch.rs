//! Loaded modules, kernel functions and launches with typed arguments.

use std::ffi::{CString, c_void};
use std::fmt;
use std::sync::Arc;

use bytemuck::Pod;

use crate::buffer::DeviceBuffer;
use crate::device::{Device, DeviceId};
use crate::error::{Error, Result};
use crate::gpu::Handle;
use crate::stream::Stream;

/// Compiled code loaded on one device; unloaded when the last [`Module`] or [`Function`]
/// referring to it is dropped.
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) device: Device,
    pub(crate) raw: Handle,
    pub(crate) source_name: String,
    pub(crate) cache_hit: bool,
    /// The source declared `// dependent-launch` (and every kernel in it waits first).
    pub(crate) dependent_launch: bool,
}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        if let Some(gpu) = self.device.gpu() {
            // SAFETY: loaded by `load_module`, unloaded once, after every Function is gone.
            if let Err(err) = unsafe { gpu.module_unload(self.raw) } {
                tracing::error!("unloading {} failed: {}", self.source_name, err.message);
            }
        }
    }
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("source", &self.inner.source_name)
            .field("device", &self.inner.device.id())
            .field("cache_hit", &self.inner.cache_hit)
            .finish()
    }
}

impl Module {
    /// Looks up an `extern "C"` kernel by name.
    pub fn function(&self, name: &str) -> Result<Function> {
        let device = &self.inner.device;
        let gpu = device.gpu().expect("modules exist only on GPU devices");
        let operation = format!("look up kernel {name} in {}", self.inner.source_name);
        let c_name = CString::new(name).map_err(|_| Error::InvalidLaunch {
            kernel: name.to_owned(),
            reason: "the kernel name contains a NUL byte".into(),
        })?;
        // SAFETY: the module is alive while `self` is.
        let raw = device.check(
            unsafe { gpu.module_function(self.inner.raw, &c_name) },
            operation,
        )?;
        Ok(Function {
            module: self.inner.clone(),
            raw,
            name: name.to_owned(),
        })
    }

    /// Whether the code came from the disk cache rather than the compiler.
    pub fn cache_hit(&self) -> bool {
        self.inner.cache_hit
    }

    /// The kernel source's name.
    pub fn source_name(&self) -> &str {
        &self.inner.source_name
    }
}

/// One kernel of a loaded [`Module`].
#[derive(Clone)]
pub struct Function {
    module: Arc<ModuleInner>,
    raw: Handle,
    name: String,
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("source", &self.module.source_name)
            .finish()
    }
}

impl Function {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Grid and block sizes (x, y, z) and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks per grid.
    pub grid: [u32; 3],
    /// Threads per block.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch with `threads_per_block` threads and enough blocks to cover `elements`.
    /// A block count beyond `u32` saturates, which every driver rejects at launch.
    pub fn linear(elements: usize, threads_per_block: u32) -> LaunchConfig {
        let per_block = threads_per_block.max(1) as usize;
        let blocks = elements.div_ceil(per_block).max(1);
        LaunchConfig {
            grid: [u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1],
            block: [threads_per_block, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_shared_mem(self, bytes: u32) -> LaunchConfig {
        LaunchConfig {
            shared_mem_bytes: bytes,
            ..self
        }
    }
}

/// A value passed to a kernel: a device buffer (as a pointer) or a scalar.
#[derive(Debug, Clone, Copy)]
pub struct ArgValue(ArgRepr);

#[derive(Debug, Clone, Copy)]
enum ArgRepr {
    /// Scalar bits, little-endian in the low bytes of an 8-byte-aligned slot.
    Scalar(u64),
    Pointer {
        ptr: Option<u64>,
        device: DeviceId,
    },
}

/// Something that can be a kernel argument. Implemented for device buffers (passed as
/// `T*`) and for the scalar types kernels take by value.
pub trait KernelArg {
    /// The value to pass.
    fn kernel_arg(&self) -> ArgValue;
}

impl<T: Pod> KernelArg for DeviceBuffer<T> {
    fn kernel_arg(&self) -> ArgValue {
        ArgValue(ArgRepr::Pointer {
            ptr: self.device_ptr(),
            device: self.device().id(),
        })
    }
}

macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn kernel_arg(&self) -> ArgValue {
                let mut slot = [0u8; 8];
                slot[..size_of::<$t>()].copy_from_slice(bytemuck::bytes_of(self));
                ArgValue(ArgRepr::Scalar(u64::from_ne_bytes(slot)))
            }
        }
    )*};
}
scalar_arg!(
    i8,
    u8,
    i16,
    u16,
    i32,
    u32,
    i64,
    u64,
    f32,
    f64,
    half::f16,
    half::bf16
);

impl Stream {
    /// Queues `function` on this stream. Buffers must belong to this stream's device. Errors
    /// the driver detects at launch (too many threads per block, too much shared memory)
    /// are returned here; faults inside the kernel surface at the next synchronisation.
    pub fn launch(
        &self,
        function: &Function,
        config: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let device = self.device();
        let operation = format!("launch of {}", function.name);
        if !device.same_device(&function.module.device) {
            return Err(Error::WrongDevice {
                operation,
                expected: device.id(),
                found: function.module.device.id(),
            });
        }
        if config.grid.contains(&0) || config.block.contains(&0) {
            return Err(Error::InvalidLaunch {
                kernel: function.name.clone(),
                reason: format!(
                    "zero-sized grid {:?} or block {:?}",
                    config.grid, config.block
                ),
            });
        }
        let mut slots: Vec<u64> = Vec::with_capacity(args.len());
        for (index, arg) in args.iter().enumerate() {
            match arg.kernel_arg().0 {
                ArgRepr::Scalar(bits) => slots.push(bits),
                ArgRepr::Pointer {
                    ptr: Some(ptr),
                    device: owner,
                } if owner == device.id() => slots.push(ptr),
                ArgRepr::Pointer { device: owner, .. } => {
                    return Err(Error::WrongDevice {
                        operation: format!("{operation}, argument {index}"),
                        expected: device.id(),
                        found: owner,
                    });
                }
            }
        }
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|slot| slot as *mut u64 as *mut c_void)
            .collect();
        let gpu = device.gpu().expect("functions exist only on GPU devices");
        // A launch on the legacy default stream must wait out other threads' captures.
        let _legacy = (self.raw() == 0)
            .then(crate::graph::legacy_stream_guard)
            .flatten();
        // SAFETY: function and stream belong to this device and are alive; `params` holds one
        // pointer per argument into `slots`, which outlives the call (the driver copies them).
        let result = unsafe {
            gpu.launch(
                function.raw,
                config.grid,
                config.block,
                config.shared_mem_bytes,
                self.raw(),
                &mut params,
                function.module.dependent_launch && device.dependent_launch(),
            )
        };
        device.check(result, operation)
    }
}
