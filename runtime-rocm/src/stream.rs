//! Streams (ordered queues of device work) and events (points in a stream, with timing).

use std::fmt;
use std::time::Instant;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::Handle;

/// An ordered queue of device work. On the CPU device every operation runs at once, so a CPU
/// stream is always idle.
pub struct Stream {
    device: Device,
    /// Vendor handle; 0 is the device's default stream (never destroyed).
    raw: Handle,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("device", &self.device.id())
            .field("default", &(self.raw == 0))
            .finish()
    }
}

impl Device {
    /// Creates a new stream that does not synchronise with the default stream.
    pub fn create_stream(&self) -> Result<Stream> {
        let raw = match self.gpu() {
            None => 0,
            Some(gpu) => self.check(gpu.stream_create(), "create stream")?,
        };
        Ok(Stream {
            device: self.clone(),
            raw,
        })
    }

    /// The device's default stream (synchronous copies are ordered on it).
    pub fn default_stream(&self) -> Stream {
        Stream {
            device: self.clone(),
            raw: 0,
        }
    }
}

impl Stream {
    /// The device this stream queues work on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn raw(&self) -> Handle {
        self.raw
    }

    /// Waits until all work queued on this stream has finished. Errors of earlier
    /// asynchronous work (a kernel fault) surface here.
    pub fn synchronize(&self) -> Result<()> {
        match self.device.gpu() {
            None => Ok(()),
            // SAFETY: `raw` is this device's live stream or its default stream.
            Some(gpu) => self.device.check(
                unsafe { gpu.stream_synchronize(self.raw) },
                "synchronize stream",
            ),
        }
    }

    /// Records an event at the current end of this stream.
    pub fn record_event(&self) -> Result<Event> {
        let kind = match self.device.gpu() {
            None => EventKind::Host(Instant::now()),
            Some(gpu) => {
                let raw = self.device.check(gpu.event_create(), "create event")?;
                let event = Event {
                    device: self.device.clone(),
                    kind: EventKind::Gpu(raw),
                };
                // SAFETY: live event and stream of this device.
                self.device
                    .check(unsafe { gpu.event_record(raw, self.raw) }, "record event")?;
                return Ok(event);
            }
        };
        Ok(Event {
            device: self.device.clone(),
            kind,
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let (Some(gpu), true) = (self.device.gpu(), self.raw != 0) {
            // SAFETY: created by `create_stream`, destroyed once.
            if let Err(err) = unsafe { gpu.stream_destroy(self.raw) } {
                tracing::error!(
                    "destroying a stream on {} failed: {}",
                    self.device.id(),
                    err.message
                );
            }
        }
    }
}

/// A recorded point in a stream; two of them give the device time between them.
pub struct Event {
    device: Device,
    kind: EventKind,
}

enum EventKind {
    Host(Instant),
    Gpu(Handle),
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("device", &self.device.id())
            .finish()
    }
}

impl Event {
    /// Waits until the work before this event has finished.
    pub fn synchronize(&self) -> Result<()> {
        match (&self.kind, self.device.gpu()) {
            // SAFETY: live event of this device.
            (EventKind::Gpu(raw), Some(gpu)) => self
                .device
                .check(unsafe { gpu.event_synchronize(*raw) }, "synchronize event"),
            _ => Ok(()),
        }
    }

    /// Milliseconds of device time from `self` to `later` (waits for `later`).
    pub fn elapsed_ms(&self, later: &Event) -> Result<f32> {
        if !self.device.same_device(&later.device) {
            return Err(Error::WrongDevice {
                operation: "event elapsed time".into(),
                expected: self.device.id(),
                found: later.device.id(),
            });
        }
        match (&self.kind, &later.kind, self.device.gpu()) {
            (EventKind::Host(start), EventKind::Host(end), _) => {
                Ok(end.saturating_duration_since(*start).as_secs_f32() * 1e3)
            }
            (EventKind::Gpu(start), EventKind::Gpu(end), Some(gpu)) => {
                later.synchronize()?;
                // SAFETY: two live, recorded events of this device.
                self.device.check(
                    unsafe { gpu.event_elapsed_ms(*start, *end) },
                    "event elapsed time",
                )
            }
            _ => unreachable!("events of one device share a kind"),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let (EventKind::Gpu(raw), Some(gpu)) = (&self.kind, self.device.gpu()) {
            // SAFETY: created in `record_event`, destroyed once.
            if let Err(err) = unsafe { gpu.event_destroy(*raw) } {
                tracing::error!(
                    "destroying an event on {} failed: {}",
                    self.device.id(),
                    err.message
                );
            }
        }
    }
}
