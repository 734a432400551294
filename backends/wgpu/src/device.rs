//! [`WgpuDevice`]: one adapter, one queue. `run` records dispatches into a command encoder
//! that is submitted in batches (when the parameter ring is full, before a host write, and
//! at `read`/`synchronize`), so ops are cheap to enqueue and run in call order.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use manychips_api::{
    BufferId, DType, Device, DeviceId, DeviceInfo, Error, Identity, MemoryInfo, Op, Result, checks,
};
use manychips_wgsl::{Features, MatmulKernel, Slot, lower};

use crate::errors::{Faults, convert};
use crate::pipelines::Pipelines;
use crate::spare::Spare;

/// Bytes of one parameter block (uniform offsets must be multiples of 256 anyway).
const PARAM_SLOT: u64 = 256;
/// Parameter blocks per batch: the batch is submitted when the ring is full.
const RING_SLOTS: u64 = 512;
/// Allocation granule (kernels may bind f32 data as `array<vec4<u32>>`).
const GRANULE: usize = 16;

/// A wgpu adapter as a manychips device.
pub struct WgpuDevice {
    info: DeviceInfo,
    label: String,
    device: wgpu::Device,
    queue: wgpu::Queue,
    features: Mutex<Features>,
    max_buffer: u64,
    max_binding: u64,
    faults: Arc<Faults>,
    state: Mutex<State>,
}

struct Buf {
    buffer: wgpu::Buffer,
    /// The size the caller asked for (the wgpu buffer is rounded up).
    size: usize,
}

struct State {
    buffers: HashMap<u64, Buf>,
    next: u64,
    allocated: u64,
    pipelines: Pipelines,
    encoder: Option<wgpu::CommandEncoder>,
    ring: wgpu::Buffer,
    ring_used: u64,
    status: wgpu::Buffer,
    /// Ops that may have flagged a bad index since the status was last checked.
    flagging: Vec<String>,
    /// The read-back staging buffer, kept and grown: a fresh one per read costs wgpu's zero
    /// fill and the page faults of a new allocation.
    readback: Option<wgpu::Buffer>,
    /// Freed buffers and finished temporaries, for reuse.
    spare: Spare,
}

impl WgpuDevice {
    /// Opens `adapter` with its own limits as the device's, as device `ordinal` of wgpu.
    pub fn open(adapter: wgpu::Adapter, ordinal: usize) -> Result<WgpuDevice> {
        let ai = adapter.get_info();
        let label = format!("wgpu:{ordinal}");
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some(&label),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::Unavailable { backend: "wgpu".into(), reason: format!("{}: {e}", ai.name) }
        })?;
        let faults = Arc::new(Faults::default());
        {
            let (faults, label) = (faults.clone(), label.clone());
            device.on_uncaptured_error(Arc::new(move |e| faults.record(&label, e)));
        }
        {
            let faults = faults.clone();
            device.set_device_lost_callback(move |reason, msg| {
                faults.set_lost(format!("{reason:?}: {msg}"));
            });
        }
        let matmul = if ai.device_type == wgpu::DeviceType::Cpu {
            MatmulKernel::RegisterBlocked
        } else {
            MatmulKernel::SharedTiles
        };
        let max_binding = limits.max_storage_buffer_binding_size;
        let features = Features {
            shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
            max_storage_binding: max_binding,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            matmul,
            cpu_backed: ai.device_type == wgpu::DeviceType::Cpu,
        };
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("manychips params"),
            size: PARAM_SLOT * RING_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let status = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("manychips status"),
            size: manychips_wgsl::STATUS_BYTES,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let pci = (!ai.device_pci_bus_id.is_empty()).then(|| ai.device_pci_bus_id.clone());
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "wgpu".into(),
            ordinal,
            name: ai.name.clone(),
            vendor: vendor_name(ai.vendor),
            driver_version: format!("{} {} ({:?})", ai.driver, ai.driver_info, ai.backend),
            identity: Identity {
                uuid: None,
                pci_bus_id: pci,
                other: Some(format!("{:04x}:{:04x}", ai.vendor, ai.device)),
            },
            memory_total: if ai.device_type == wgpu::DeviceType::Cpu { host_memory() } else { 0 },
            // All but I64: WGSL (and so every kernel) has no 64-bit integers.
            dtypes: manychips_wgsl::DTYPES.to_vec(),
            peer_copy: false,
        };
        tracing::debug!(device = %label, name = %ai.name, backend = ?ai.backend, "wgpu device up");
        Ok(WgpuDevice {
            info,
            label,
            device,
            queue,
            features: Mutex::new(features),
            max_buffer: limits.max_buffer_size,
            max_binding,
            faults,
            state: Mutex::new(State {
                buffers: HashMap::new(),
                next: 0,
                allocated: 0,
                pipelines: Pipelines::default(),
                encoder: None,
                ring,
                ring_used: 0,
                status,
                flagging: Vec::new(),
                readback: None,
                spare: Spare::default(),
            }),
        })
    }

    /// The matmul kernel this device runs (for benches and for testing every variant).
    pub fn matmul_kernel(&self) -> MatmulKernel {
        self.features.lock().unwrap_or_else(PoisonError::into_inner).matmul
    }

    /// Chooses the matmul kernel (e.g. after calibration).
    pub fn set_matmul_kernel(&self, kernel: MatmulKernel) {
        self.features.lock().unwrap_or_else(PoisonError::into_inner).matmul = kernel;
    }

    /// Keeps only `dtypes` (in the order given) among what the device claims.
    pub fn restrict_dtypes(&mut self, dtypes: &[DType]) {
        self.info.dtypes.retain(|d| dtypes.contains(d));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the table is a single insert or remove: still consistent after a
        // panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_alive(&self) -> Result<()> {
        match self.faults.lost() {
            Some(detail) => Err(Error::DeviceLost { device: self.label.clone(), detail }),
            None => Ok(()),
        }
    }

    fn buffer<'a>(&self, state: &'a State, op: &str, id: BufferId) -> Result<&'a Buf> {
        checks::check_owner(op, &self.label, self.info.id, id)?;
        state.buffers.get(&id.index).ok_or_else(|| checks::unknown_buffer(op, &self.label, id))
    }

    fn check_range(
        &self,
        op: &str,
        id: BufferId,
        size: usize,
        off: usize,
        len: usize,
    ) -> Result<()> {
        checks::check_byte_range(op, &self.label, id, size, off, len)
    }

    fn encoder<'a>(&self, state: &'a mut State) -> &'a mut wgpu::CommandEncoder {
        state.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("manychips batch"),
            })
        })
    }

    /// Submits what is recorded; the parameter ring is free again afterwards.
    fn flush(&self, state: &mut State) {
        if let Some(enc) = state.encoder.take() {
            self.queue.submit([enc.finish()]);
        }
        state.ring_used = 0;
    }

    /// Waits for everything submitted; reports faults raised meanwhile.
    fn wait(&self, op: &str) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Fault {
            op: op.into(),
            device: self.label.clone(),
            detail: format!("waiting for the queue: {e}"),
        })?;
        self.check_alive()?;
        match self.faults.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies `len` bytes at `offset` (both multiples of 4) of `src` to the host.
    fn download(
        &self,
        state: &mut State,
        op: &str,
        src: &wgpu::Buffer,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let mut bytes = vec![0; len as usize];
        self.download_into(state, op, src, offset, 0, &mut bytes)?;
        Ok(bytes)
    }

    /// Copies `dst.len()` bytes starting `skip` bytes past the 4-aligned `offset` of `src`
    /// into `dst`, through the reused staging buffer: one copy out of the mapping.
    fn download_into(
        &self,
        state: &mut State,
        op: &str,
        src: &wgpu::Buffer,
        offset: u64,
        skip: usize,
        dst: &mut [u8],
    ) -> Result<()> {
        let len = (skip + dst.len()).next_multiple_of(4).max(4) as u64;
        let staging = match &state.readback {
            Some(buffer) if buffer.size() >= len => buffer.clone(),
            _ => {
                let size = len.next_power_of_two().min(self.max_buffer).max(len);
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("manychips read"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                state.readback = Some(buffer.clone());
                buffer
            }
        };
        self.encoder(state).copy_buffer_to_buffer(src, offset, &staging, 0, len);
        self.flush(state);
        let (tx, rx) = mpsc::channel();
        staging.slice(..len).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(op)?;
        let mapped = rx.recv().map_err(|_| Error::Fault {
            op: op.into(),
            device: self.label.clone(),
            detail: "the read-back mapping never completed".into(),
        })?;
        mapped.map_err(|e| Error::Fault {
            op: op.into(),
            device: self.label.clone(),
            detail: format!("mapping the read-back buffer: {e}"),
        })?;
        let copied = match staging.slice(..len).get_mapped_range() {
            Ok(view) => {
                dst.copy_from_slice(&view[skip..skip + dst.len()]);
                Ok(())
            }
            Err(e) => Err(Error::Fault {
                op: op.into(),
                device: self.label.clone(),
                detail: format!("reading the mapped buffer: {e}"),
            }),
        };
        staging.unmap();
        copied
    }

    /// Reports (once) an out-of-range index flagged by a kernel since the last check.
    fn check_status(&self, state: &mut State) -> Result<()> {
        if state.flagging.is_empty() {
            return Ok(());
        }
        let status = state.status.clone();
        let words =
            self.download(state, "synchronize", &status, 0, manychips_wgsl::STATUS_BYTES)?;
        let ops = std::mem::take(&mut state.flagging);
        let Some(bad) = manychips_wgsl::bad_index(&words) else {
            return Ok(());
        };
        self.queue.write_buffer(&status, 0, &[0; manychips_wgsl::STATUS_BYTES as usize]);
        let first = ops.first().cloned().unwrap_or_default();
        Err(Error::IndexOutOfRange {
            op: first.split('(').next().unwrap_or("index").to_string(),
            device: self.label.clone(),
            detail: format!("{bad}; in one of: {}", ops.join("; ")),
        })
    }

    /// `len` bytes at `offset` of buffer `id`, after all enqueued work.
    fn read_into(
        &self,
        state: &mut State,
        id: BufferId,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<()> {
        let buffer = self.buffer(state, "read", id)?.buffer.clone();
        let start = offset & !3;
        self.download_into(state, "read", &buffer, start as u64, offset - start, dst)?;
        self.check_status(state)
    }

    fn write_bytes(
        &self,
        state: &mut State,
        id: BufferId,
        offset: usize,
        src: &[u8],
    ) -> Result<()> {
        let buffer = self.buffer(state, "write", id)?.buffer.clone();
        // Queue writes land before the next submission: submit what is recorded first.
        self.flush(state);
        if offset.is_multiple_of(4) && src.len().is_multiple_of(4) {
            self.queue.write_buffer(&buffer, offset as u64, src);
            return Ok(());
        }
        // Odd edges: patch the covering words (the queue is in order and we hold the lock).
        let start = offset & !3;
        let end = (offset + src.len()).next_multiple_of(4);
        let mut words =
            self.download(state, "write", &buffer, start as u64, (end - start) as u64)?;
        words[offset - start..offset - start + src.len()].copy_from_slice(src);
        self.queue.write_buffer(&buffer, start as u64, &words);
        Ok(())
    }

    fn enqueue(&self, state: &mut State, op: &Op) -> Result<()> {
        let name = op.name();
        let features = self.features.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let lowered = lower(op, &features).map_err(|e| relabel(e, &self.label))?;
        let temporaries: Vec<wgpu::Buffer> = lowered
            .temporaries
            .iter()
            .map(|&bytes| {
                let size = (bytes as usize).next_multiple_of(GRANULE).max(GRANULE) as u64;
                state.spare.take(size).unwrap_or_else(|| self.new_buffer(size))
            })
            .collect();
        let mut flags = false;
        for d in &lowered.dispatches {
            let pipeline = state.pipelines.get(&self.device, &self.label, &name, d)?;
            if state.ring_used == RING_SLOTS {
                self.flush(state);
            }
            let slot = state.ring_used * PARAM_SLOT;
            state.ring_used += 1;
            self.queue.write_buffer(&state.ring, slot, bytemuck::cast_slice(&d.params));
            let mut resources: Vec<(wgpu::Buffer, u64)> = Vec::new();
            for b in &d.bindings {
                let (buffer, size) = match b.slot {
                    Slot::Buffer(id) => {
                        let buf = self.buffer(state, &name, id)?;
                        (buf.buffer.clone(), buf.buffer.size())
                    }
                    Slot::Temporary(i) => {
                        let t = temporaries.get(i).ok_or_else(|| Error::Fault {
                            op: name.clone(),
                            device: self.label.clone(),
                            detail: format!("kernel {} binds missing temporary {i}", d.key),
                        })?;
                        (t.clone(), t.size())
                    }
                    Slot::Status => {
                        flags = true;
                        (state.status.clone(), manychips_wgsl::STATUS_BYTES)
                    }
                };
                // Views were checked to end inside the binding limit; a bigger buffer is
                // bound only as far as that.
                resources.push((buffer, size.min(self.max_binding & !15)));
            }
            let mut entries: Vec<wgpu::BindGroupEntry> = resources
                .iter()
                .enumerate()
                .map(|(i, (buffer, size))| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: NonZeroU64::new(*size),
                    }),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: resources.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &state.ring,
                    offset: slot,
                    size: NonZeroU64::new(PARAM_SLOT),
                }),
            });
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            });
            let [x, y, z] = d.workgroups;
            let enc = self.encoder(state);
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
        for t in temporaries {
            state.spare.keep(t);
        }
        if flags {
            state.flagging.push(op.describe());
        }
        Ok(())
    }

    /// A new buffer of `size` bytes with the usages every buffer here gets (storage, and
    /// copies both ways), so that a spare one serves any request of its size.
    fn new_buffer(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A buffer of `size` bytes: a spare one, else a new one; where the driver has no room,
    /// the spares go back to it and the allocation is tried once more.
    fn fresh_or_spare(&self, size: u64) -> Result<wgpu::Buffer> {
        if let Some(buffer) = self.lock().spare.take(size) {
            return Ok(buffer);
        }
        let attempt = || {
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buffer = self.new_buffer(size);
            match pollster::block_on(scope.pop()) {
                Some(e) => Err(convert(&self.label, "alloc", e)),
                None => Ok(buffer),
            }
        };
        attempt().or_else(|e| {
            let mut state = self.lock();
            if state.spare.bytes() == 0 {
                return Err(e);
            }
            state.spare.clear();
            drop(state);
            attempt()
        })
    }
}

/// Lowering errors name the device they happened on.
fn relabel(e: Error, label: &str) -> Error {
    e.on_device(label)
}

/// Host memory in bytes (what a CPU adapter such as lavapipe allocates from), or 0 where
/// unknown. wgpu does not report device memory at all.
fn host_memory() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 | 0x1022 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        other => format!("{other:#06x}"),
    }
}

impl Device for WgpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        // wgpu does not expose device memory: the total is the host's for a CPU adapter and
        // unknown (0) otherwise; what this device holds counts as used.
        let allocated = self.lock().allocated;
        let total = self.info.memory_total.max(allocated);
        Ok(MemoryInfo { total, free: total - allocated })
    }

    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.check_alive()?;
        let rounded = bytes.checked_next_multiple_of(GRANULE).map(|b| b.max(GRANULE));
        let size = match rounded {
            Some(s) if (s as u64) <= self.max_buffer => s as u64,
            _ => {
                return Err(Error::OutOfMemory {
                    op: "alloc".into(),
                    device: self.label.clone(),
                    detail: format!(
                        "{bytes} bytes requested; the largest buffer this adapter allows is {}",
                        self.max_buffer
                    ),
                });
            }
        };
        let buffer = self.fresh_or_spare(size)?;
        let mut state = self.lock();
        let index = state.next;
        state.next += 1;
        state.allocated += size;
        state.buffers.insert(index, Buf { buffer, size: bytes });
        Ok(BufferId { device: self.info.id, index })
    }

    fn free(&self, buffer: BufferId) -> Result<()> {
        self.check_alive()?;
        let mut state = self.lock();
        self.buffer(&state, "free", buffer)?;
        // wgpu keeps the memory alive until recorded work that uses it is done.
        if let Some(b) = state.buffers.remove(&buffer.index) {
            state.allocated = state.allocated.saturating_sub(b.buffer.size());
            state.spare.keep(b.buffer);
        }
        Ok(())
    }

    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.check_alive()?;
        let mut state = self.lock();
        let size = self.buffer(&state, "write", dst)?.size;
        self.check_range("write", dst, size, offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.write_bytes(&mut state, dst, offset, src)
    }

    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_alive()?;
        let mut state = self.lock();
        let size = self.buffer(&state, "read", src)?.size;
        self.check_range("read", src, size, offset, dst.len())?;
        if dst.is_empty() {
            self.flush(&mut state);
            self.wait("read")?;
            return self.check_status(&mut state);
        }
        self.read_into(&mut state, src, offset, dst)
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        self.check_alive()?;
        let mut state = self.lock();
        let src_size = self.buffer(&state, "copy", src)?.size;
        let dst_size = self.buffer(&state, "copy", dst)?.size;
        self.check_range("copy", src, src_size, src_offset, bytes)?;
        self.check_range("copy", dst, dst_size, dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        let aligned =
            src_offset.is_multiple_of(4) && dst_offset.is_multiple_of(4) && bytes.is_multiple_of(4);
        if aligned && src != dst {
            let s = self.buffer(&state, "copy", src)?.buffer.clone();
            let d = self.buffer(&state, "copy", dst)?.buffer.clone();
            self.encoder(&mut state).copy_buffer_to_buffer(
                &s,
                src_offset as u64,
                &d,
                dst_offset as u64,
                bytes as u64,
            );
            return Ok(());
        }
        // Unaligned or within one buffer: through the host, which also handles overlap.
        let mut data = vec![0; bytes];
        self.read_into(&mut state, src, src_offset, &mut data)?;
        self.write_bytes(&mut state, dst, dst_offset, &data)
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
        self.check_alive()?;
        op.validate(&self.label)?;
        let name = op.name();
        let mut state = self.lock();
        checks::check_op_views(op, &self.label, &self.info.dtypes, |b| {
            Ok(self.buffer(&state, &name, b)?.size)
        })?;
        let _span = tracing::trace_span!("wgpu.run", device = %self.label, op = %name).entered();
        self.enqueue(&mut state, op)
    }

    fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        let mut state = self.lock();
        self.flush(&mut state);
        self.wait("synchronize")?;
        self.check_status(&mut state)
    }
}

impl fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("label", &self.label)
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .finish()
    }
}
