//! Graphs: the work a closure queues on a stream, captured once and replayed with a single
//! launch. A decode step is dozens of short kernels per layer; replaying them as one graph
//! removes the host's per-launch cost and the gaps between kernels.
//!
//! A captured launch keeps the argument values it was given, device pointers included, so a
//! replay reads and writes the same buffers: callers update their inputs in place (a copy
//! queued before the launch) rather than allocating new ones.

use std::cell::Cell;
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::Handle;
use crate::stream::Stream;

/// Work on the legacy default stream (every synchronous copy, memset, allocation, free and
/// device-wide synchronize) implicitly waits for the blocking streams, which the driver refuses
/// while any of them is being captured, from whatever thread. Such calls hold this lock shared
/// and a capture holds it exclusively, so in a process with several threads on the GPU they
/// wait for a capture to end instead of failing (or breaking the capture).
static CAPTURES: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this thread is inside [`Stream::capture`].
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// Held around an operation that touches the legacy default stream (see [`CAPTURES`]). None
/// on the capturing thread itself: there the driver refuses the call with a clear error, where
/// waiting would deadlock.
pub(crate) fn legacy_stream_guard() -> Option<RwLockReadGuard<'static, ()>> {
    if CAPTURING.get() {
        None
    } else {
        Some(CAPTURES.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Marks this thread as capturing until dropped (also on a panic in the recording closure).
struct CapturingThread;

impl CapturingThread {
    fn enter() -> Self {
        CAPTURING.set(true);
        CapturingThread
    }
}

impl Drop for CapturingThread {
    fn drop(&mut self) {
        CAPTURING.set(false);
    }
}

/// An instantiated graph, ready to launch on any stream of its device.
pub struct Graph {
    device: Device,
    exec: Handle,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("device", &self.device.id())
            .finish()
    }
}

impl Stream {
    /// Runs `record`, capturing (not running) the work it queues on this stream, and returns
    /// it as a [`Graph`]. Synchronous copies, allocations that synchronize, and work queued
    /// on other streams are not captured: a synchronous call from this thread during the
    /// capture fails, and so does the capture. Not available on the CPU device (nothing is
    /// queued there) nor on a device's default stream (it cannot be captured). `record` may
    /// fail with its caller's own error type; that error is returned as it is.
    pub fn capture<E: From<Error>>(
        &self,
        record: impl FnOnce(&Stream) -> std::result::Result<(), E>,
    ) -> std::result::Result<Graph, E> {
        let device = self.device().clone();
        let Some(gpu) = device.gpu() else {
            return Err(Error::Unsupported {
                operation: "graph capture".into(),
                device: device.id(),
            }
            .into());
        };
        if self.raw() == 0 {
            return Err(Error::Unsupported {
                operation: "graph capture on the default stream".into(),
                device: device.id(),
            }
            .into());
        }
        if CAPTURING.get() {
            return Err(Error::Unsupported {
                operation: "graph capture inside another capture".into(),
                device: device.id(),
            }
            .into());
        }
        let _exclusive = CAPTURES.write().unwrap_or_else(PoisonError::into_inner);
        let capturing = CapturingThread::enter();
        // SAFETY: `raw` is a live stream of this device (not the default one).
        device.check(
            unsafe { gpu.stream_begin_capture(self.raw()) },
            "begin graph capture",
        )?;
        let recorded = record(self);
        // The capture is always ended, so the stream is usable again whatever happened.
        // SAFETY: the stream is capturing.
        let ended = device.check(
            unsafe { gpu.stream_end_capture(self.raw()) },
            "end graph capture",
        );
        drop(capturing);
        let graph = match (recorded, ended) {
            (Ok(()), Ok(graph)) => graph,
            (Err(e), ended) => {
                if let Ok(graph) = ended {
                    // SAFETY: the graph was just created and is not used again.
                    let _ = unsafe { gpu.graph_destroy(graph) };
                }
                return Err(e);
            }
            (Ok(()), Err(e)) => return Err(e.into()),
        };
        // SAFETY: `graph` is live; it is destroyed once instantiated (the executable graph
        // does not depend on it).
        let exec = device.check(unsafe { gpu.graph_instantiate(graph) }, "instantiate graph");
        // SAFETY: as above.
        let destroyed = device.check(unsafe { gpu.graph_destroy(graph) }, "destroy graph");
        let graph = Graph {
            device,
            exec: exec?,
        };
        destroyed?;
        Ok(graph)
    }
}

impl Graph {
    /// Queues one replay of the captured work on `stream`.
    ///
    /// # Safety
    /// Every buffer the captured work reads or writes must still be alive (the graph holds
    /// raw device pointers, as a kernel launch does until it finishes).
    pub unsafe fn launch(&self, stream: &Stream) -> Result<()> {
        if stream.device().id() != self.device.id() {
            return Err(Error::WrongDevice {
                operation: "graph launch".into(),
                expected: self.device.id(),
                found: stream.device().id(),
            });
        }
        let gpu = self.device.gpu().expect("graphs exist only on GPUs");
        // SAFETY: `exec` is live; the caller keeps the captured buffers alive.
        self.device.check(
            unsafe { gpu.graph_launch(self.exec, stream.raw()) },
            "graph launch",
        )
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if let Some(gpu) = self.device.gpu() {
            // SAFETY: `exec` is live and dropped once. A replay still running keeps its own
            // reference in the driver.
            if let Err(e) = unsafe { gpu.graph_exec_destroy(self.exec) } {
                tracing::warn!(error = %e.message, "destroying a graph failed");
            }
        }
    }
}
