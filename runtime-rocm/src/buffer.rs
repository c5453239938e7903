//! `DeviceBuffer<T>`: memory owned by one device, freed on drop.

use std::fmt;
use std::marker::PhantomData;
use std::sync::RwLockReadGuard;

use bytemuck::Pod;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::DevicePtr;
use crate::graph::legacy_stream_guard;
use crate::stream::Stream;

/// A typed array in one device's memory. On the CPU device it is a host vector, so code that
/// stores tensors needs no special case; on a GPU it is a device allocation freed on drop.
///
/// Asynchronous copies take ordinary (pageable) host slices. Both CUDA and HIP finish reading
/// or writing pageable host memory before such a call returns (only the device side may still
/// be in flight), so the borrow of the host slice is sound.
pub struct DeviceBuffer<T: Pod> {
    device: Device,
    storage: Storage<T>,
}

enum Storage<T> {
    Host(Vec<T>),
    Gpu {
        ptr: DevicePtr,
        len: usize,
        _marker: PhantomData<T>,
    },
}

impl<T: Pod> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("device", &self.device.id())
            .field("len", &self.len())
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// The capture guard for a copy or memset on `stream`, or synchronous (`None`): work on the
/// legacy default stream must not run while another thread captures (see `graph`).
fn legacy_guard_for(stream: Option<&Stream>) -> Option<RwLockReadGuard<'static, ()>> {
    match stream {
        Some(s) if s.raw() != 0 => None,
        _ => legacy_stream_guard(),
    }
}

fn byte_len<T>(len: usize) -> usize {
    len * size_of::<T>()
}

impl Device {
    /// Allocates `len` zero-initialised elements.
    pub fn alloc_zeroed<T: Pod>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let mut buffer = self.alloc_uninit::<T>(len)?;
        buffer.memset(0)?;
        Ok(buffer)
    }

    /// Allocates `len` elements whose contents are unspecified (but valid for `T: Pod`) until
    /// written: for outputs a kernel fills completely.
    pub fn alloc_uninit<T: Pod>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let storage = match self.gpu() {
            None => Storage::Host(vec![T::zeroed(); len]),
            Some(gpu) => {
                let bytes = byte_len::<T>(len);
                let _legacy = legacy_stream_guard();
                let ptr = self.check(gpu.malloc(bytes), format!("allocate {bytes} bytes"))?;
                Storage::Gpu {
                    ptr,
                    len,
                    _marker: PhantomData,
                }
            }
        };
        Ok(DeviceBuffer {
            device: self.clone(),
            storage,
        })
    }

    /// Allocates a buffer holding a copy of `data` (synchronous).
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        let mut buffer = self.alloc_uninit::<T>(data.len())?;
        buffer.copy_from_host(data)?;
        Ok(buffer)
    }
}

impl<T: Pod> DeviceBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(v) => v.len(),
            Storage::Gpu { len, .. } => *len,
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> usize {
        byte_len::<T>(self.len())
    }

    /// The device that owns this memory.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The contents, when the buffer lives on the CPU device.
    pub fn as_host_slice(&self) -> Option<&[T]> {
        match &self.storage {
            Storage::Host(v) => Some(v),
            Storage::Gpu { .. } => None,
        }
    }

    /// The contents, mutably, when the buffer lives on the CPU device.
    pub fn as_host_slice_mut(&mut self) -> Option<&mut [T]> {
        match &mut self.storage {
            Storage::Host(v) => Some(v),
            Storage::Gpu { .. } => None,
        }
    }

    pub(crate) fn device_ptr(&self) -> Option<DevicePtr> {
        match &self.storage {
            Storage::Host(_) => None,
            Storage::Gpu { ptr, .. } => Some(*ptr),
        }
    }

    fn check_len(&self, operation: &'static str, found: usize) -> Result<()> {
        if found == self.len() {
            Ok(())
        } else {
            Err(Error::LengthMismatch {
                operation,
                expected: self.len(),
                found,
            })
        }
    }

    fn check_stream(&self, operation: &str, stream: &Stream) -> Result<()> {
        if self.device.same_device(stream.device()) {
            Ok(())
        } else {
            Err(Error::WrongDevice {
                operation: operation.to_owned(),
                expected: self.device.id(),
                found: stream.device().id(),
            })
        }
    }

    /// Copies `src` into this buffer and waits for the copy.
    pub fn copy_from_host(&mut self, src: &[T]) -> Result<()> {
        self.htod("copy host to device", src, None)
    }

    /// Queues a copy of `src` into this buffer on `stream`.
    pub fn copy_from_host_async(&mut self, src: &[T], stream: &Stream) -> Result<()> {
        self.check_stream("copy host to device (async)", stream)?;
        self.htod("copy host to device (async)", src, Some(stream))
    }

    /// Queues a copy of `src` into the first `src.len()` elements of this buffer on `stream`,
    /// leaving the rest as it is: for a buffer sized for the largest call and filled per call
    /// in place (a captured graph keeps its address).
    pub fn copy_prefix_from_host_async(&mut self, src: &[T], stream: &Stream) -> Result<()> {
        const OPERATION: &str = "copy host to device prefix (async)";
        self.check_stream(OPERATION, stream)?;
        self.check_fits(OPERATION, src.len())?;
        self.write_from_host(OPERATION, src, Some(stream))
    }

    fn check_fits(&self, operation: &'static str, found: usize) -> Result<()> {
        if found <= self.len() {
            Ok(())
        } else {
            Err(Error::DoesNotFit {
                operation,
                capacity: self.len(),
                found,
            })
        }
    }

    fn htod(&mut self, operation: &'static str, src: &[T], stream: Option<&Stream>) -> Result<()> {
        self.check_len(operation, src.len())?;
        self.write_from_host(operation, src, stream)
    }

    /// Copies `src` to the first `src.len()` elements (checked to fit by the caller).
    fn write_from_host(
        &mut self,
        operation: &'static str,
        src: &[T],
        stream: Option<&Stream>,
    ) -> Result<()> {
        let device = self.device.clone();
        let _legacy = legacy_guard_for(stream);
        match (&mut self.storage, device.gpu()) {
            (Storage::Host(v), _) => v[..src.len()].copy_from_slice(src),
            (Storage::Gpu { ptr, .. }, Some(gpu)) => {
                // SAFETY: `src` is readable for its byte length, which the allocation holds
                // (checked by the callers).
                let result = unsafe {
                    gpu.copy_htod(
                        *ptr,
                        src.as_ptr() as *const u8,
                        byte_len::<T>(src.len()),
                        stream.map(Stream::raw),
                    )
                };
                device.check(result, operation)?;
            }
            (Storage::Gpu { .. }, None) => unreachable!("GPU storage always has a GPU device"),
        }
        Ok(())
    }

    /// Copies this buffer into `dst` and waits for the copy.
    pub fn copy_to_host(&self, dst: &mut [T]) -> Result<()> {
        self.dtoh("copy device to host", dst, None)
    }

    /// Queues a copy of this buffer into `dst` on `stream`; `dst` holds the data once the
    /// stream has been synchronised.
    pub fn copy_to_host_async(&self, dst: &mut [T], stream: &Stream) -> Result<()> {
        self.check_stream("copy device to host (async)", stream)?;
        self.dtoh("copy device to host (async)", dst, Some(stream))
    }

    /// Copies the first `dst.len()` elements of this buffer into `dst` and waits for the copy:
    /// the part of a buffer sized for the largest call that one call wrote.
    pub fn copy_prefix_to_host(&self, dst: &mut [T]) -> Result<()> {
        const OPERATION: &str = "copy device prefix to host";
        self.check_fits(OPERATION, dst.len())?;
        self.read_to_host(OPERATION, dst, None)
    }

    fn dtoh(&self, operation: &'static str, dst: &mut [T], stream: Option<&Stream>) -> Result<()> {
        self.check_len(operation, dst.len())?;
        self.read_to_host(operation, dst, stream)
    }

    /// Copies the first `dst.len()` elements (checked to fit by the caller) into `dst`.
    fn read_to_host(
        &self,
        operation: &'static str,
        dst: &mut [T],
        stream: Option<&Stream>,
    ) -> Result<()> {
        let _legacy = legacy_guard_for(stream);
        match (&self.storage, self.device.gpu()) {
            (Storage::Host(v), _) => dst.copy_from_slice(&v[..dst.len()]),
            (Storage::Gpu { ptr, .. }, Some(gpu)) => {
                // SAFETY: `dst` is writable for its byte length, which the allocation holds
                // (checked by the callers).
                let result = unsafe {
                    gpu.copy_dtoh(
                        dst.as_mut_ptr() as *mut u8,
                        *ptr,
                        byte_len::<T>(dst.len()),
                        stream.map(Stream::raw),
                    )
                };
                self.device.check(result, operation)?;
            }
            (Storage::Gpu { .. }, None) => unreachable!("GPU storage always has a GPU device"),
        }
        Ok(())
    }

    /// Copies the whole buffer to a new host vector (synchronous).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len()];
        self.copy_to_host(&mut out)?;
        Ok(out)
    }

    /// Copies `src` (same device, same length) into this buffer and waits for the copy.
    pub fn copy_from(&mut self, src: &DeviceBuffer<T>) -> Result<()> {
        self.dtod("copy device to device", src, None)
    }

    /// Queues a device-to-device copy of `src` into this buffer on `stream`.
    pub fn copy_from_async(&mut self, src: &DeviceBuffer<T>, stream: &Stream) -> Result<()> {
        self.check_stream("copy device to device (async)", stream)?;
        self.dtod("copy device to device (async)", src, Some(stream))
    }

    fn dtod(
        &mut self,
        operation: &'static str,
        src: &DeviceBuffer<T>,
        stream: Option<&Stream>,
    ) -> Result<()> {
        self.check_len(operation, src.len())?;
        if !self.device.same_device(&src.device) {
            return Err(Error::WrongDevice {
                operation: operation.to_owned(),
                expected: self.device.id(),
                found: src.device.id(),
            });
        }
        let device = self.device.clone();
        let _legacy = legacy_guard_for(stream);
        match (&mut self.storage, &src.storage, device.gpu()) {
            (Storage::Host(dst), Storage::Host(s), _) => dst.copy_from_slice(s),
            (Storage::Gpu { ptr: dst, .. }, Storage::Gpu { ptr: s, .. }, Some(gpu)) => {
                // SAFETY: both allocations hold at least `size_bytes` (lengths checked).
                let result =
                    unsafe { gpu.copy_dtod(*dst, *s, src.size_bytes(), stream.map(Stream::raw)) };
                device.check(result, operation)?;
            }
            _ => unreachable!("buffers of one device share a storage kind"),
        }
        Ok(())
    }

    /// Sets every byte of the buffer to `value` and waits.
    pub fn memset(&mut self, value: u8) -> Result<()> {
        self.memset_on("memset", value, None)
    }

    /// Queues setting every byte of the buffer to `value` on `stream`.
    pub fn memset_async(&mut self, value: u8, stream: &Stream) -> Result<()> {
        self.check_stream("memset (async)", stream)?;
        self.memset_on("memset (async)", value, Some(stream))
    }

    fn memset_on(
        &mut self,
        operation: &'static str,
        value: u8,
        stream: Option<&Stream>,
    ) -> Result<()> {
        let device = self.device.clone();
        let _legacy = legacy_guard_for(stream);
        let bytes = self.size_bytes();
        match (&mut self.storage, device.gpu()) {
            (Storage::Host(v), _) => bytemuck::cast_slice_mut::<T, u8>(v).fill(value),
            (Storage::Gpu { ptr, .. }, Some(gpu)) => {
                // SAFETY: the allocation holds `bytes`.
                let result = unsafe { gpu.memset_d8(*ptr, value, bytes, stream.map(Stream::raw)) };
                device.check(result, operation)?;
            }
            (Storage::Gpu { .. }, None) => unreachable!("GPU storage always has a GPU device"),
        }
        Ok(())
    }
}

impl<T: Pod> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if let (Storage::Gpu { ptr, .. }, Some(gpu)) = (&self.storage, self.device.gpu()) {
            let _legacy = legacy_stream_guard();
            // SAFETY: allocated by this device's `malloc`, freed exactly once. Both vendors'
            // free waits for work that may still use the memory.
            if let Err(err) = unsafe { gpu.free(*ptr) } {
                tracing::error!(
                    "freeing {} bytes on {} failed: {}",
                    self.size_bytes(),
                    self.device.id(),
                    err.message
                );
            }
        }
    }
}
