//! [`VulkanDevice`]: one Vulkan physical device behind the manychips [`Device`] contract.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ash::vk;
use gpu_allocator::vulkan::{Allocator, AllocatorCreateDesc};
use manychips_api::{
    BufferId, Device, DeviceId, DeviceInfo, Error, ErrorKind, Identity, MemoryInfo, Op, Result,
    checks,
};
use manychips_wgsl::{Features, MatmulKernel};

use crate::discover::{Adapter, Instance};
use crate::error::vk_error;
use crate::memory::{Buffer, Kind};
use crate::pipeline::Cache;
use crate::queue::{Ctx, Queue, discard};
use crate::status::{check_status, new_status};

/// A Vulkan device: buffers from gpu-allocator, kernels from the shared WGSL library compiled
/// to SPIR-V by naga, one compute queue.
///
/// `run`, `write`, `copy` and `free` record into a command buffer that is submitted in
/// batches; `read` and `synchronize` submit and wait. Calls are serialised by one lock.
pub struct VulkanDevice {
    pub(crate) info: DeviceInfo,
    pub(crate) label: String,
    pub(crate) features: Mutex<Features>,
    pub(crate) limits: vk::PhysicalDeviceLimits,
    /// Whether the host may touch host-visible device memory directly (unified memory);
    /// off with [`crate::STAGING_ENV`].
    pub(crate) direct: bool,
    /// robustBufferAccess is enabled: kernels are compiled without bounds checks.
    pub(crate) robust: bool,
    pub(crate) state: Mutex<State>,
    pub(crate) device: ash::Device,
    /// Dropped last: the instance outlives the device.
    _instance: Arc<Instance>,
}

pub(crate) struct State {
    /// `None` only while dropping.
    pub(crate) allocator: Option<Allocator>,
    pub(crate) buffers: HashMap<u64, Buffer>,
    pub(crate) next: u64,
    pub(crate) pipelines: Cache,
    pub(crate) queue: Queue,
    /// The status buffer kernels flag out-of-range index values in (`Slot::Status`);
    /// `None` only while dropping.
    pub(crate) status: Option<Buffer>,
    /// The ops that bound the status buffer since it was last checked.
    pub(crate) status_users: Vec<String>,
    /// Set once the device is lost; every later call fails with it.
    pub(crate) lost: Option<String>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update of the state is completed before anything can fail, so a poisoned lock
    // still guards a consistent state.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VulkanDevice {
    pub(crate) fn new(
        instance: Arc<Instance>,
        adapter: Adapter,
        ordinal: usize,
    ) -> Result<VulkanDevice> {
        let label = format!("vulkan:{ordinal}");
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(adapter.queue_family)
            .queue_priorities(&priorities)];
        let extensions: Vec<*const std::ffi::c_char> =
            adapter.extensions.iter().map(|e| e.as_ptr()).collect();
        let mut f16 = vk::PhysicalDeviceShaderFloat16Int8Features::default().shader_float16(true);
        let mut storage16 =
            vk::PhysicalDevice16BitStorageFeatures::default().storage_buffer16_bit_access(true);
        let base = vk::PhysicalDeviceFeatures::default().robust_buffer_access(adapter.robust);
        let mut create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_features(&base)
            .enabled_extension_names(&extensions);
        if adapter.shader_f16 {
            create = create.push_next(&mut f16).push_next(&mut storage16);
        }
        // SAFETY: the create info and everything it points to live until the call returns;
        // the features and extensions enabled were reported as supported.
        let device = unsafe { instance.raw.create_device(adapter.physical, &create, None) }
            .map_err(|e| vk_error("new", &label, "vkCreateDevice", e))?;
        // SAFETY: the family was requested with one queue above.
        let queue = unsafe { device.get_device_queue(adapter.queue_family, 0) };
        let allocator = Allocator::new(&AllocatorCreateDesc {
            instance: instance.raw.clone(),
            device: device.clone(),
            physical_device: adapter.physical,
            debug_settings: Default::default(),
            buffer_device_address: false,
            allocation_sizes: Default::default(),
        });
        let mut allocator = match allocator {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: nothing was created on the device yet.
                unsafe { device.destroy_device(None) };
                return Err(crate::error::alloc_error("new", &label, 0, e));
            }
        };
        let mut queue = Queue::new(queue, adapter.queue_family);
        let status = match new_status(&device, &mut allocator, &mut queue, &label) {
            Ok(s) => s,
            Err(e) => {
                queue.destroy(&device, &mut allocator);
                drop(allocator);
                // SAFETY: everything created on the device was destroyed (`new_status` waits
                // for the device before it fails).
                unsafe { device.destroy_device(None) };
                return Err(e);
            }
        };
        let features = Features {
            shader_f16: adapter.shader_f16,
            max_storage_binding: u64::from(adapter.limits.max_storage_buffer_range),
            max_workgroups_per_dim: adapter.limits.max_compute_work_group_count[0],
            matmul: if adapter.is_cpu {
                MatmulKernel::RegisterBlocked
            } else {
                MatmulKernel::SharedTiles
            },
            cpu_backed: adapter.is_cpu,
        };
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "vulkan".into(),
            ordinal,
            name: adapter.name.clone(),
            vendor: adapter.vendor.clone(),
            driver_version: adapter.driver_version.clone(),
            identity: Identity {
                uuid: Some(adapter.uuid),
                pci_bus_id: adapter.pci_bus_id.clone(),
                other: None,
            },
            memory_total: adapter.memory_total,
            dtypes: crate::dtypes(),
            peer_copy: false,
        };
        tracing::debug!(
            device = %label,
            name = %info.name,
            driver = %info.driver_version,
            shader_f16 = features.shader_f16,
            "vulkan device up"
        );
        Ok(VulkanDevice {
            info,
            label,
            features: Mutex::new(features),
            limits: adapter.limits,
            direct: adapter.unified && std::env::var_os(crate::STAGING_ENV).is_none(),
            robust: adapter.robust,
            state: Mutex::new(State {
                allocator: Some(allocator),
                buffers: HashMap::new(),
                next: 0,
                pipelines: Cache::default(),
                queue,
                status: Some(status),
                status_users: Vec::new(),
                lost: None,
            }),
            device,
            _instance: instance,
        })
    }

    /// What the kernels are lowered for on this device.
    pub fn features(&self) -> Features {
        self.features.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Picks the matmul kernel (calibration measures which is fastest here; the default is
    /// register blocking on CPU drivers and shared-memory tiles elsewhere).
    pub fn set_matmul_kernel(&self, kernel: MatmulKernel) {
        self.features.lock().unwrap_or_else(PoisonError::into_inner).matmul = kernel;
    }

    fn lost_error(&self, detail: &str) -> Error {
        Error::DeviceLost { device: self.label.clone(), detail: detail.into() }
    }

    fn check_alive(&self, state: &State) -> Result<()> {
        match &state.lost {
            Some(detail) => Err(self.lost_error(detail)),
            None => Ok(()),
        }
    }

    /// Passes `result` through, remembering a lost device.
    fn note<T>(&self, state: &mut State, result: Result<T>) -> Result<T> {
        if let Err(Error::DeviceLost { detail, .. }) = &result
            && state.lost.is_none()
        {
            tracing::error!(device = %self.label, %detail, "vulkan device lost");
            state.lost = Some(detail.clone());
        }
        result
    }

    /// A user buffer. Out of memory, it waits for queued work first (buffers freed while
    /// work was queued are released when it completes) and tries once more.
    fn create_storage(&self, state: &mut State, bytes: usize) -> Result<Buffer> {
        let State { allocator, queue, .. } = state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("alloc"))?;
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: "alloc" };
        let bytes = bytes as u64;
        let create = |ctx: &mut Ctx<'_>| {
            Buffer::new(ctx.device, ctx.allocator, ctx.label, "alloc", bytes, Kind::Storage)
        };
        match create(&mut ctx) {
            Err(e) if e.kind() == ErrorKind::OutOfMemory => {
                queue.finish(&mut ctx)?;
                create(&mut ctx)
            }
            other => other,
        }
    }

    /// An error of the kernel library, naming this device.
    fn relabel(&self, e: Error) -> Error {
        e.on_device(&self.label)
    }

    /// A broken internal invariant (a buffer validated under the lock vanished, or the
    /// allocator is gone while dropping): a fault, never a panic.
    pub(crate) fn internal(&self, op: &str) -> Error {
        Error::Fault {
            op: op.into(),
            device: self.label.clone(),
            detail: "internal bookkeeping of the Vulkan backend is inconsistent".into(),
        }
    }

    /// The buffer `id` names, or why it cannot be used here.
    pub(crate) fn buffer<'s>(
        &self,
        state: &'s State,
        op: &str,
        id: BufferId,
    ) -> Result<&'s Buffer> {
        checks::check_owner(op, &self.label, self.info.id, id)?;
        state.buffers.get(&id.index).ok_or_else(|| checks::unknown_buffer(op, &self.label, id))
    }

    /// The user-visible size of a buffer is recorded separately from the padded Vulkan size.
    fn check_range(
        &self,
        state: &State,
        op: &str,
        id: BufferId,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        self.buffer(state, op, id)?;
        let size = state.sizes_of(id.index);
        checks::check_byte_range(op, &self.label, id, size, offset, len)
    }

    fn write_locked(
        &self,
        state: &mut State,
        dst: BufferId,
        offset: usize,
        src: &[u8],
    ) -> Result<()> {
        let State { allocator, buffers, queue, .. } = state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("write"))?;
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: "write" };
        let direct = self.direct
            && buffers.get(&dst.index).is_some_and(Buffer::is_mapped)
            && queue.idle(&mut ctx)?;
        if direct && let Some(mapped) = buffers.get_mut(&dst.index).and_then(Buffer::mapped_mut) {
            mapped[offset..offset + src.len()].copy_from_slice(src);
            return Ok(());
        }
        let dst_raw =
            buffers.get(&dst.index).map(|b| b.raw).ok_or_else(|| self.internal("write"))?;
        let mut staging = Buffer::new(
            &self.device,
            ctx.allocator,
            &self.label,
            "write",
            src.len() as u64,
            Kind::Upload,
        )?;
        match staging.mapped_mut() {
            Some(mapped) => mapped[..src.len()].copy_from_slice(src),
            None => {
                staging.destroy(&self.device, ctx.allocator);
                return Err(Error::Fault {
                    op: "write".into(),
                    device: self.label.clone(),
                    detail: "staging memory is not host-visible".into(),
                });
            }
        }
        let frame = match queue.frame(&ctx) {
            Ok(f) => f,
            Err(e) => {
                staging.destroy(&self.device, ctx.allocator);
                return Err(e);
            }
        };
        frame.copy(&self.device, staging.raw, 0, dst_raw, offset as u64, src.len() as u64);
        frame.keep(staging);
        frame.staged(src.len() as u64);
        queue.maybe_submit(&mut ctx)
    }

    fn read_locked(
        &self,
        state: &mut State,
        src: BufferId,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<()> {
        let State { allocator, buffers, queue, status, status_users, .. } = state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("read"))?;
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: "read" };
        queue.finish(&mut ctx)?;
        check_status(&mut ctx, queue, status, status_users, self.direct)?;
        if dst.is_empty() {
            return Ok(());
        }
        let buffer = buffers.get(&src.index).ok_or_else(|| self.internal("read"))?;
        if let Some(mapped) = buffer.mapped().filter(|_| self.direct) {
            dst.copy_from_slice(&mapped[offset..offset + dst.len()]);
            return Ok(());
        }
        let src_raw = buffer.raw;
        let staging = Buffer::new(
            &self.device,
            ctx.allocator,
            &self.label,
            "read",
            dst.len() as u64,
            Kind::Download,
        )?;
        let recorded = queue.frame(&ctx).map(|frame| {
            frame.copy(&self.device, src_raw, offset as u64, staging.raw, 0, dst.len() as u64);
        });
        let done = recorded.and_then(|()| queue.finish(&mut ctx));
        let copied = done.and_then(|()| match staging.mapped() {
            Some(mapped) => {
                dst.copy_from_slice(&mapped[..dst.len()]);
                Ok(())
            }
            None => Err(Error::Fault {
                op: "read".into(),
                device: self.label.clone(),
                detail: "download memory is not host-visible".into(),
            }),
        });
        match &copied {
            Ok(()) => staging.destroy(&self.device, ctx.allocator),
            Err(_) => discard(&mut ctx, queue, staging),
        }
        copied
    }

    fn copy_locked(
        &self,
        state: &mut State,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let State { allocator, buffers, queue, .. } = state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("copy"))?;
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: "copy" };
        let missing = || self.internal("copy");
        let src_raw = buffers.get(&src.index).map(|b| b.raw).ok_or_else(missing)?;
        let dst_raw = buffers.get(&dst.index).map(|b| b.raw).ok_or_else(missing)?;
        let (src_offset, dst_offset, len) = (src_offset as u64, dst_offset as u64, bytes as u64);
        let overlap = src == dst && src_offset < dst_offset + len && dst_offset < src_offset + len;
        if overlap {
            // vkCmdCopyBuffer forbids overlapping regions: go through a temporary.
            let temp =
                Buffer::new(&self.device, ctx.allocator, &self.label, "copy", len, Kind::Storage)?;
            let frame = match queue.frame(&ctx) {
                Ok(f) => f,
                Err(e) => {
                    temp.destroy(&self.device, ctx.allocator);
                    return Err(e);
                }
            };
            frame.copy(&self.device, src_raw, src_offset, temp.raw, 0, len);
            frame.copy(&self.device, temp.raw, 0, dst_raw, dst_offset, len);
            frame.keep(temp);
        } else {
            queue.frame(&ctx)?.copy(&self.device, src_raw, src_offset, dst_raw, dst_offset, len);
        }
        queue.maybe_submit(&mut ctx)
    }
}

impl State {
    /// The size the user asked for (`Buffer::size` is padded).
    pub(crate) fn sizes_of(&self, index: u64) -> usize {
        self.buffers.get(&index).map(|b| b.requested).unwrap_or(0)
    }
}

impl Device for VulkanDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let state = lock(&self.state);
        self.check_alive(&state)?;
        let used = state.allocator.as_ref().map(|a| a.capacity()).unwrap_or(0);
        Ok(MemoryInfo {
            total: self.info.memory_total,
            free: self.info.memory_total.saturating_sub(used),
        })
    }

    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        if bytes as u64 > self.info.memory_total || bytes > isize::MAX as usize {
            return Err(Error::OutOfMemory {
                op: "alloc".into(),
                device: self.label.clone(),
                detail: format!(
                    "{bytes} bytes requested; the device has {} bytes in all",
                    self.info.memory_total
                ),
            });
        }
        let created = self.create_storage(&mut state, bytes);
        let buffer = self.note(&mut state, created)?;
        let index = state.next;
        state.next += 1;
        state.buffers.insert(index, buffer);
        Ok(BufferId { device: self.info.id, index })
    }

    fn free(&self, buffer: BufferId) -> Result<()> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        self.buffer(&state, "free", buffer)?;
        let State { allocator, buffers, queue, .. } = &mut *state;
        let Some(buf) = buffers.remove(&buffer.index) else { return Ok(()) };
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("free"))?;
        let mut ctx = Ctx { device: &self.device, allocator, label: &self.label, op: "free" };
        let result = match queue.idle(&mut ctx) {
            Ok(true) => {
                buf.destroy(&self.device, ctx.allocator);
                Ok(())
            }
            Ok(false) => queue.frame(&ctx).map(|frame| frame.keep(buf)),
            Err(e) => Err(e),
        };
        self.note(&mut state, result)
    }

    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        self.check_range(&state, "write", dst, offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let result = self.write_locked(&mut state, dst, offset, src);
        self.note(&mut state, result)
    }

    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        self.check_range(&state, "read", src, offset, dst.len())?;
        let result = self.read_locked(&mut state, src, offset, dst);
        self.note(&mut state, result)
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        self.check_range(&state, "copy", src, src_offset, bytes)?;
        self.check_range(&state, "copy", dst, dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        let result = self.copy_locked(&mut state, src, src_offset, dst, dst_offset, bytes);
        self.note(&mut state, result)
    }

    fn run(&self, op: &Op) -> Result<()> {
        // A fused program with more inputs than one kernel takes runs in parts that fit; a
        // fused reduction of that many, as its program into a temporary, then the reduction.
        if matches!(op, Op::Attention { .. } | Op::AttentionBackward { .. }) {
            return manychips_api::attention::decompose(self, op);
        }
        if matches!(op, Op::Fused { .. } | Op::FusedReduce { .. }) && !manychips_wgsl::fuses(op) {
            return match op {
                Op::Fused { .. } => {
                    manychips_api::fused::decompose_in_parts(self, op, manychips_wgsl::FUSED_INPUTS)
                }
                _ => manychips_api::fused::decompose(self, op),
            };
        }
        {
            let state = lock(&self.state);
            self.check_alive(&state)?;
        }
        op.validate(&self.label)?;
        let name = op.name();
        let output = op.output();
        {
            let state = lock(&self.state);
            checks::check_op_views(op, &self.label, &self.info.dtypes, |b| {
                self.buffer(&state, &name, b)?;
                Ok(state.sizes_of(b.index))
            })?;
        }
        if output.numel() == 0 {
            return Ok(());
        }
        // Lowering is pure: done outside the lock.
        let lowered = manychips_wgsl::lower(op, &self.features()).map_err(|e| self.relabel(e))?;
        let span = tracing::trace_span!("vulkan run", device = %self.label, op = %name);
        let _guard = span.enter();
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        let result = self.run_locked(&mut state, op, &lowered);
        self.note(&mut state, result)
    }

    fn synchronize(&self) -> Result<()> {
        let mut state = lock(&self.state);
        self.check_alive(&state)?;
        let State { allocator, queue, status, status_users, .. } = &mut *state;
        let allocator = allocator.as_mut().ok_or_else(|| self.internal("synchronize"))?;
        let mut ctx =
            Ctx { device: &self.device, allocator, label: &self.label, op: "synchronize" };
        let result = queue
            .finish(&mut ctx)
            .and_then(|()| check_status(&mut ctx, queue, status, status_users, self.direct));
        self.note(&mut state, result)
    }
}

impl fmt::Debug for VulkanDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VulkanDevice")
            .field("label", &self.label)
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("driver", &self.info.driver_version)
            .field("features", &self.features())
            .finish()
    }
}

impl Drop for VulkanDevice {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the device is live; waiting for idle makes every object below unused.
        if let Err(e) = unsafe { self.device.device_wait_idle() } {
            tracing::warn!(device = %self.label, error = ?e, "vkDeviceWaitIdle failed in drop");
        }
        if let Some(mut allocator) = state.allocator.take() {
            state.queue.destroy(&self.device, &mut allocator);
            for (_, buf) in state.buffers.drain() {
                buf.destroy(&self.device, &mut allocator);
            }
            if let Some(status) = state.status.take() {
                status.destroy(&self.device, &mut allocator);
            }
            drop(allocator);
        }
        state.pipelines.destroy(&self.device);
        // SAFETY: every object created on the device was destroyed above; the instance is
        // still alive (held by `_instance`, dropped after this).
        unsafe { self.device.destroy_device(None) };
    }
}

#[cfg(test)]
mod tests {
    use manychips_api::{BinaryOp, DType, Device, Layout, Op, View};

    use super::{VulkanDevice, lock};

    fn live_allocations(dev: &VulkanDevice) -> usize {
        let state = lock(&dev.state);
        // Frames keep their uniform blocks for reuse; how many frames exist depends on timing.
        let report = state.allocator.as_ref().map(|a| a.generate_report());
        report
            .map_or(0, |r| r.allocations.iter().filter(|a| a.name != "manychips uniforms").count())
    }

    /// Allocates, writes, runs, copies, reads and frees; leaves nothing behind.
    fn workload(dev: &VulkanDevice) {
        let n = 4099;
        let bufs: Vec<_> = (0..3).map(|_| dev.alloc(n * 4).unwrap()).collect();
        let view = |i: usize| View::new(bufs[i], Layout::contiguous(vec![n]), DType::F32);
        for round in 0..300 {
            dev.write(bufs[0], 0, &vec![1u8; n * 4]).unwrap();
            dev.run(&Op::Fill { out: view(1), value: f64::from(round) }).unwrap();
            let add = Op::Binary { op: BinaryOp::Add, lhs: view(0), rhs: view(1), out: view(2) };
            dev.run(&add).unwrap();
            dev.copy(bufs[2], 1, bufs[0], 3, 101).unwrap();
        }
        dev.read(bufs[2], 0, &mut vec![0u8; n * 4]).unwrap();
        for b in bufs {
            dev.free(b).unwrap();
        }
        dev.synchronize().unwrap();
    }

    #[test]
    fn repeated_work_leaks_no_memory() {
        let devices = match crate::discover() {
            Ok(devices) if !devices.is_empty() => devices,
            found => {
                let why = found.err().map_or_else(|| "none found".into(), |e| e.to_string());
                assert!(std::env::var_os("CI").is_none(), "CI is set but no Vulkan device: {why}");
                println!("skipped: no Vulkan device ({why})");
                return;
            }
        };
        for dev in &devices {
            workload(dev);
            let after_one = live_allocations(dev);
            for _ in 0..3 {
                workload(dev);
            }
            // Only the status buffer stays.
            assert_eq!(live_allocations(dev), after_one);
            assert_eq!(after_one, 1, "allocations alive after the work is done");
        }
    }
}
