//! [`SimDevice`]: a real device dressed up as a chip of a given profile.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use manychips_api::{
    BufferId, Device, DeviceId, DeviceInfo, Error, ErrorKind, Identity, MemoryInfo, Op, Result,
    checks,
};

use crate::clock::Clock;
use crate::faults::{Call, Faults};
use crate::profile::SimProfile;
use crate::relabel::relabel;
use crate::remap::remap;

/// A device that computes with an inner device and behaves like the chip of its
/// [`SimProfile`]: it has the profile's name and memory, and every call advances a virtual
/// clock ([`SimDevice::clock`]) by what it would cost on that chip.
///
/// Buffers get ids of their own, so a buffer of the inner device (or of any other) handed to
/// a `SimDevice` is a `DeviceMismatch`, exactly as between two real chips. The inner device
/// may be shared; what a `SimDevice` allocated on it is freed when the `SimDevice` drops.
pub struct SimDevice {
    info: DeviceInfo,
    label: String,
    profile: SimProfile,
    inner: Arc<dyn Device>,
    table: Mutex<Table>,
    clock: Clock,
    faults: Faults,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Our buffer index → the inner device's buffer and its size.
    buffers: HashMap<u64, (BufferId, usize)>,
    used: u64,
    /// The most `used` has been since the last reset.
    peak: u64,
}

impl SimDevice {
    /// A simulated `sim:<ordinal>` of `profile`, computing on `inner`. Its dtypes are the
    /// inner device's. A profile with a zero, negative or non-finite rate is refused.
    pub fn new(inner: Arc<dyn Device>, profile: SimProfile, ordinal: usize) -> Result<SimDevice> {
        profile.check()?;
        let label = format!("sim:{ordinal}");
        let inner_info = inner.info();
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "sim".into(),
            ordinal,
            name: profile.name.clone(),
            vendor: profile.vendor.clone(),
            driver_version: format!(
                "manychips-sim {} over {}",
                env!("CARGO_PKG_VERSION"),
                inner_info.label()
            ),
            identity: Identity {
                uuid: None,
                pci_bus_id: None,
                other: Some(format!("sim:{}:{ordinal}", profile.name)),
            },
            memory_total: profile.memory,
            dtypes: inner_info.dtypes.clone(),
            peer_copy: profile.peer_link_bytes_per_s.is_some(),
        };
        tracing::debug!(device = %label, name = %profile.name, inner = %inner_info.label(), "sim device up");
        Ok(SimDevice {
            info,
            label,
            profile,
            inner,
            table: Mutex::new(Table::default()),
            clock: Clock::new(),
            faults: Faults::default(),
        })
    }

    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }

    /// The device computing behind this one.
    pub fn inner(&self) -> &Arc<dyn Device> {
        &self.inner
    }

    /// Simulated busy time so far: the sum of every successful call's predicted cost at the
    /// slowdown in force when it was made.
    pub fn clock(&self) -> Duration {
        self.clock.now()
    }

    pub fn reset_clock(&self) {
        self.clock.reset();
    }

    /// The most memory its buffers have held at once since it was made or
    /// [`reset_peak_memory`](Self::reset_peak_memory) was called: what a memory plan is
    /// checked against.
    pub fn peak_memory(&self) -> u64 {
        self.lock().peak
    }

    /// Starts the peak over from the memory in use now.
    pub fn reset_peak_memory(&self) {
        let mut table = self.lock();
        table.peak = table.used;
    }

    /// From now on every call costs `k` times as much on the virtual clock (a throttled or
    /// sick chip); 1 is full speed. `k` must be positive and finite.
    pub fn set_slowdown(&self, k: f64) -> Result<()> {
        if !(k.is_finite() && k > 0.0) {
            return Err(Error::InvalidArgument {
                op: "set_slowdown".into(),
                device: self.label.clone(),
                detail: format!("slowdown {k}; it must be positive and finite"),
            });
        }
        tracing::debug!(device = %self.label, k, "sim: slowdown set");
        self.clock.set_slowdown(k);
        Ok(())
    }

    pub fn slowdown(&self) -> f64 {
        self.clock.slowdown()
    }

    /// When on, every call also sleeps for its simulated cost, so wall-clock measurements
    /// (a planner's calibration) see the profile's speed. Off by default.
    pub fn set_pacing(&self, on: bool) {
        self.clock.set_pacing(on);
    }

    /// Lets `n_ops` more `run` calls succeed, then fails the next one with an error of
    /// `kind`. `DeviceLost` is sticky (every later call fails too); other kinds fail once.
    pub fn fail_after(&self, n_ops: u64, kind: ErrorKind) {
        self.faults.fail_after(n_ops, kind);
    }

    /// Fails the next call of any kind (alloc, free, write, read, copy, run, synchronize)
    /// with an error of `kind`; `DeviceLost` is sticky.
    pub fn fail_now(&self, kind: ErrorKind) {
        self.faults.fail_now(kind);
    }

    /// From now on each `run` fails with probability `p` with an error of `kind`, drawn
    /// from a generator seeded with `seed` (reproducible).
    pub fn fail_randomly(&self, p: f64, kind: ErrorKind, seed: u64) {
        self.faults.fail_randomly(p, kind, seed);
    }

    /// From now on every call blocks (a chip that stopped answering) until [`heal`].
    ///
    /// [`heal`]: SimDevice::heal
    pub fn hang(&self) {
        self.faults.hang();
    }

    /// Clears pending failures, a lost state and a hang, as a driver reset would.
    pub fn heal(&self) {
        self.faults.heal();
    }

    pub fn is_lost(&self) -> bool {
        self.faults.is_lost()
    }

    /// How many failures have been injected so far.
    pub fn injected_failures(&self) -> u64 {
        self.faults.injected()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every update is a single insert or remove plus a counter, so a poisoned table is
        // still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn injected(&self, call: Call, op: &str) -> Result<()> {
        match self.faults.on_call(call, op, &self.label) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The inner buffer and size behind our `buf`, or why it cannot be used here.
    fn resolve(&self, table: &Table, op: &str, buf: BufferId) -> Result<(BufferId, usize)> {
        checks::check_owner(op, &self.label, self.info.id, buf)?;
        table
            .buffers
            .get(&buf.index)
            .copied()
            .ok_or_else(|| checks::unknown_buffer(op, &self.label, buf))
    }

    fn inner_buffer(&self, op: &str, buf: BufferId) -> Result<BufferId> {
        let table = self.lock();
        self.resolve(&table, op, buf).map(|(inner, _)| inner)
    }

    /// `to` as a chip this one copies to over their peer links: both have one, and they
    /// compute on one inner device or on two that reach each other.
    fn peer<'a>(&self, to: &'a dyn Device) -> Option<&'a SimDevice> {
        let to = (to as &dyn Any).downcast_ref::<SimDevice>()?;
        self.profile.peer_time(&to.profile, 0)?;
        let same = self.inner.info().id == to.inner.info().id;
        (same || self.inner.reaches(&*to.inner)).then_some(to)
    }
}

impl Device for SimDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let used = self.lock().used;
        Ok(MemoryInfo {
            total: self.profile.memory,
            free: self.profile.memory.saturating_sub(used),
        })
    }

    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.injected(Call::Other, "alloc")?;
        let mut table = self.lock();
        let free = self.profile.memory.saturating_sub(table.used);
        if bytes as u64 > free {
            return Err(Error::OutOfMemory {
                op: "alloc".into(),
                device: self.label.clone(),
                detail: format!(
                    "{bytes} bytes requested; {free} of {} bytes are free",
                    self.profile.memory
                ),
            });
        }
        let inner = self.inner.alloc(bytes).map_err(|e| relabel(e, &self.label))?;
        let index = table.next;
        table.next += 1;
        table.buffers.insert(index, (inner, bytes));
        table.used += bytes as u64;
        table.peak = table.peak.max(table.used);
        Ok(BufferId { device: self.info.id, index })
    }

    fn free(&self, buffer: BufferId) -> Result<()> {
        self.injected(Call::Other, "free")?;
        let mut table = self.lock();
        let (inner, bytes) = self.resolve(&table, "free", buffer)?;
        self.inner.free(inner).map_err(|e| relabel(e, &self.label))?;
        table.buffers.remove(&buffer.index);
        table.used = table.used.saturating_sub(bytes as u64);
        Ok(())
    }

    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.injected(Call::Other, "write")?;
        let inner = self.inner_buffer("write", dst)?;
        self.inner.write(inner, offset, src).map_err(|e| relabel(e, &self.label))?;
        self.clock.advance(self.profile.transfer_time(src.len()));
        Ok(())
    }

    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.injected(Call::Other, "read")?;
        let inner = self.inner_buffer("read", src)?;
        self.inner.read(inner, offset, dst).map_err(|e| relabel(e, &self.label))?;
        self.clock.advance(self.profile.transfer_time(dst.len()));
        Ok(())
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        self.injected(Call::Other, "copy")?;
        let (src_inner, dst_inner) = {
            let table = self.lock();
            (self.resolve(&table, "copy", src)?.0, self.resolve(&table, "copy", dst)?.0)
        };
        self.inner
            .copy(src_inner, src_offset, dst_inner, dst_offset, bytes)
            .map_err(|e| relabel(e, &self.label))?;
        self.clock.advance(self.profile.copy_time(bytes));
        Ok(())
    }

    fn reaches(&self, to: &dyn Device) -> bool {
        self.peer(to).is_some()
    }

    fn has_attention_kernel(&self) -> bool {
        self.inner.has_attention_kernel()
    }

    /// Over the two chips' peer links, where both have one (see [`SimDevice::peer`]): the
    /// inner device copies (or copies to the other inner device), and both clocks advance by
    /// [`SimProfile::peer_time`] once, where a copy through the host costs each chip a host
    /// transfer.
    fn copy_to_peer(
        &self,
        src: BufferId,
        src_offset: usize,
        to: &dyn Device,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<bool> {
        let op = "copy_to_peer";
        let Some(peer) = self.peer(to) else { return Ok(false) };
        self.injected(Call::Other, op)?;
        if !std::ptr::eq(self, peer) {
            peer.injected(Call::Other, op)?;
        }
        let src_inner = self.inner_buffer(op, src)?;
        let dst_inner = peer.inner_buffer(op, dst)?;
        if self.inner.info().id == peer.inner.info().id {
            self.inner
                .copy(src_inner, src_offset, dst_inner, dst_offset, bytes)
                .map_err(|e| relabel(e, &self.label))?;
        } else if !self
            .inner
            .copy_to_peer(src_inner, src_offset, &*peer.inner, dst_inner, dst_offset, bytes)
            .map_err(|e| relabel(e, &self.label))?
        {
            return Ok(false);
        }
        let took = self.profile.peer_time(&peer.profile, bytes).unwrap_or_default();
        // Both chips are busy for the copy; with pacing on, one of them sleeps for it.
        self.clock.advance(took);
        if !std::ptr::eq(self, peer) {
            peer.clock.advance_unpaced(took);
        }
        Ok(true)
    }

    fn run(&self, op: &Op) -> Result<()> {
        // Validated here first so that errors name this device and the op is priced only
        // once its shapes are known to be sound.
        op.validate(&self.label)?;
        self.injected(Call::Run, &op.name())?;
        let inner_op = {
            let table = self.lock();
            remap(op, |buf| self.resolve(&table, "run", buf).map(|(inner, _)| inner))?
        };
        self.inner.submit(inner_op).map_err(|e| relabel(e, &self.label))?;
        // Priced as the inner device runs it: attention without a kernel writes its scores.
        let cost = match self.inner.has_attention_kernel() {
            true => self.profile.op_time(op),
            false => self.profile.decomposed_op_time(op),
        };
        self.clock.advance(cost);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.injected(Call::Other, "synchronize")?;
        self.inner.synchronize().map_err(|e| relabel(e, &self.label))
    }

    fn virtual_time(&self) -> Option<Duration> {
        Some(self.clock.now())
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let table = std::mem::take(&mut *self.lock());
        for (inner, _) in table.buffers.into_values() {
            if let Err(err) = self.inner.free(inner) {
                tracing::debug!(device = %self.label, %err, "sim: could not free an inner buffer");
            }
        }
    }
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice")
            .field("label", &self.label)
            .field("name", &self.profile.name)
            .field("inner", &self.inner.info().label())
            .field("clock", &self.clock.now())
            .finish()
    }
}
