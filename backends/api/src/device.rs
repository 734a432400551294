//! The device contract: the one trait a new chip implements.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{DType, Op, Result};

/// A process-wide unique id of one device instance, so that a buffer handed to the wrong
/// device is caught rather than misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(u64);

impl DeviceId {
    /// A fresh id, never returned before in this process.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        DeviceId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A handle to one buffer, valid only on the device that allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId {
    pub device: DeviceId,
    pub index: u64,
}

/// A stable name for the physical chip behind a device, so the fleet can tell that a CUDA,
/// a Vulkan and a wgpu device are views of one card.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The 16-byte device UUID (CUDA's and Vulkan's `deviceUUID` agree).
    pub uuid: Option<[u8; 16]>,
    /// PCI bus id as `dddd:bb:dd.f`.
    pub pci_bus_id: Option<String>,
    /// A fallback name where the hardware offers neither (e.g. the CPU model and host).
    pub other: Option<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(uuid) = &self.uuid {
            let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
            parts.push(format!("uuid {hex}"));
        }
        if let Some(pci) = &self.pci_bus_id {
            parts.push(format!("pci {pci}"));
        }
        if let Some(other) = &self.other {
            parts.push(other.clone());
        }
        if parts.is_empty() { f.write_str("-") } else { f.write_str(&parts.join(", ")) }
    }
}

/// What a device says about itself. Fixed for the device's lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub id: DeviceId,
    /// Backend name: `cpu`, `vulkan`, `wgpu`, `cuda`, `sim`, or a third party's.
    pub backend: String,
    /// Index among the devices of this backend (`cuda:1` has ordinal 1).
    pub ordinal: usize,
    pub name: String,
    pub vendor: String,
    pub driver_version: String,
    pub identity: Identity,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// The dtypes this device computes; ops on any other dtype are refused with
    /// `UnsupportedDType`.
    pub dtypes: Vec<DType>,
    /// True when this device can move data to another device of the same backend without a
    /// trip through the host (CUDA peer access; simulated chips given a peer link). Which
    /// devices it reaches: [`Device::reaches`]; copies between any others go through the
    /// host.
    pub peer_copy: bool,
}

impl DeviceInfo {
    /// `backend:ordinal`, the name users select devices by (e.g. `cuda:1`).
    pub fn label(&self) -> String {
        format!("{}:{}", self.backend, self.ordinal)
    }

    pub fn supports(&self, dtype: DType) -> bool {
        self.dtypes.contains(&dtype)
    }
}

/// Memory in use and available, in bytes, at the time of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryInfo {
    pub total: u64,
    pub free: u64,
}

/// One accelerator (or the CPU) behind one object-safe interface.
///
/// Ordering: calls made from one thread take effect in order. `run`, `write`, `copy` and
/// `free` may return before the work is done (they enqueue); `read` and `synchronize` wait for
/// everything enqueued before them. An error found while executing enqueued work (a device
/// fault, an index value out of range) is returned by the next `read` or `synchronize`.
///
/// A buffer of one device passed to another is an `Err` (`DeviceMismatch`), never undefined
/// behaviour. Every method returns `Result`; none panics on bad input.
pub trait Device: Any + Send + Sync + fmt::Debug {
    fn info(&self) -> &DeviceInfo;

    fn memory(&self) -> Result<MemoryInfo>;

    /// Allocates `bytes` of device memory. Contents are unspecified until written.
    fn alloc(&self, bytes: usize) -> Result<BufferId>;

    /// Releases a buffer once the work enqueued before this call is done with it.
    fn free(&self, buffer: BufferId) -> Result<()>;

    /// Copies host bytes into `dst` starting at byte `offset`.
    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()>;

    /// Waits for enqueued work, then copies `dst.len()` bytes from byte `offset` of `src`.
    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()>;

    /// Copies `bytes` bytes between two buffers of this device.
    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()>;

    /// Whether [`copy_to_peer`](Self::copy_to_peer) from this device to `to` goes device to
    /// device, without a trip through the host: what a planner prices a copy by. The
    /// default, and any pair a backend cannot link: `false`.
    fn reaches(&self, to: &dyn Device) -> bool {
        let _ = to;
        false
    }

    /// Copies `bytes` bytes from `src` (a buffer of this device) into `dst`, a buffer of
    /// `to`, device to device where this backend can ([`reaches`](Self::reaches)), and
    /// returns `Ok(true)`: the copy comes after the work either device had enqueued and
    /// before any enqueued on either after the call. `Ok(false)`, having done nothing, where
    /// it cannot: the caller stages the bytes through host memory (`read`, then `write`).
    ///
    /// A backend finds its own kind among the devices by downcasting `to` (`Device` is
    /// `Any`); the default says no to every device.
    fn copy_to_peer(
        &self,
        src: BufferId,
        src_offset: usize,
        to: &dyn Device,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<bool> {
        let _ = (src, src_offset, to, dst, dst_offset, bytes);
        Ok(false)
    }

    /// Whether [`Op::Attention`] and [`Op::AttentionBackward`] run here as kernels of their
    /// own, never storing the `[time, time]` scores, rather than as
    /// [`crate::attention::decompose`]: what a planner prices their memory by. Default: no.
    fn has_attention_kernel(&self) -> bool {
        false
    }

    /// Enqueues one op. Validation errors (see [`Op::validate`]) are returned at once.
    fn run(&self, op: &Op) -> Result<()>;

    /// [`run`](Self::run) for a caller that is done with `op`: a backend that keeps the op
    /// until it executes (a queue) takes it as it is instead of copying it. Tensors enqueue
    /// through this; the default runs `run(&op)`.
    fn submit(&self, op: Op) -> Result<()> {
        self.run(&op)
    }

    /// Waits until all enqueued work is done; returns the first error it raised.
    fn synchronize(&self) -> Result<()>;

    /// Time on the device's own clock, where it keeps one: a simulated chip's virtual clock.
    /// Schedulers that learn from how long work took read it instead of the wall clock, so
    /// what they learn about a simulated chip does not depend on how busy the machine
    /// simulating it is. `None` (the default, and every real chip): time it by the wall clock.
    fn virtual_time(&self) -> Option<std::time::Duration> {
        None
    }
}
