//! [`CudaDevice`]: one CUDA device (or the emulator) behind the manychips [`Device`] contract.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use manychips_api::{
    BufferId, Device, DeviceId, DeviceInfo, Error, Identity, MemoryInfo, Op, Result, checks,
};

use crate::emulator::{Emulator, EmulatorConfig};
use crate::engine::{Engine, GemmArgs, LaunchCall, Ptr};
use crate::error::CuError;
use crate::kernels::Source;
use crate::lower::{self, Arg, Config, MatmulPath, Plan, ScatterKernel, Step};
use crate::nvrtc::{self, Target};

/// How host transfers move data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Staging {
    /// Through pinned host buffers, overlapping the host copy with the DMA (the default).
    Pinned,
    /// Straight from and to the caller's (pageable) memory; each transfer waits.
    Pageable,
}

/// Choices a device's user can change at any time.
#[derive(Clone, Copy, Debug)]
struct Options {
    matmul: MatmulPath,
    tf32: bool,
    scatter: ScatterKernel,
}

struct Buf {
    ptr: Ptr,
    size: usize,
}

struct State {
    engine: Box<dyn Engine>,
    buffers: HashMap<u64, Buf>,
    next: u64,
    /// Two u32 words where indexed kernels flag an out-of-range index value.
    status: Ptr,
    /// The ops that used the status words since they were last checked.
    status_users: Vec<String>,
    /// Set by a sticky CUDA error: every later call returns it without touching the context.
    failed: Option<Error>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of the state completes before anything can fail, so a poisoned lock still
    // guards a consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A CUDA device: kernels/cuda compiled by NVRTC for its compute capability, GEMMs by cuBLAS,
/// one stream for compute and one for host transfers.
///
/// `run`, `write`, `copy` and `free` enqueue and return; `read` and `synchronize` wait, and
/// report errors raised by the work they waited for (an out-of-range index value, a fault).
/// A sticky CUDA error (illegal address, launch failure, ...) leaves the context unusable:
/// the device then answers every call with that `DeviceLost` error at once.
pub struct CudaDevice {
    info: DeviceInfo,
    label: String,
    /// What kernels are compiled for; `None` for the emulator (which interprets them).
    target: Option<Target>,
    /// Compute capability as 10 · major + minor (0 for the emulator).
    cc: u32,
    sm_count: u32,
    /// CUDA ordinals this device reaches by peer access.
    peers: Vec<usize>,
    options: Mutex<Options>,
    state: Mutex<State>,
}

/// Everything [`CudaDevice::open`] needs to know about the device.
pub(crate) struct Opening {
    pub ordinal: usize,
    pub described: crate::driver::Described,
    pub target: Target,
    pub driver_version: String,
    pub peers: Vec<usize>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

impl CudaDevice {
    fn with_engine(
        info: DeviceInfo,
        mut engine: Box<dyn Engine>,
        target: Option<Target>,
        cc: u32,
        sm_count: u32,
        peers: Vec<usize>,
    ) -> Result<CudaDevice> {
        let label = info.label();
        let op = "new";
        let status = engine.alloc(STATUS_BYTES).map_err(|e| e.to_error(op, &label))?;
        engine.zero(status, 0, STATUS_BYTES).map_err(|e| e.to_error(op, &label))?;
        engine.synchronize().map_err(|e| e.to_error(op, &label))?;
        let options = Options {
            matmul: if engine.has_blas() { MatmulPath::Cublas } else { MatmulPath::Tiled },
            tf32: env_flag(crate::TF32_ENV),
            scatter: ScatterKernel::Auto,
        };
        if env_flag(crate::PAGEABLE_ENV) {
            engine.set_pageable(true);
        }
        Ok(CudaDevice {
            info,
            label,
            target,
            cc,
            sm_count,
            peers,
            options: Mutex::new(options),
            state: Mutex::new(State {
                engine,
                buffers: HashMap::new(),
                next: 0,
                status,
                status_users: Vec::new(),
                failed: None,
            }),
        })
    }

    /// Opens a real device (discovery has checked the libraries and described it).
    pub(crate) fn open(o: Opening) -> Result<CudaDevice> {
        let label = format!("cuda:{}", o.ordinal);
        let d = &o.described;
        let engine = crate::driver::CudaEngine::new(d.dev, o.target, false)
            .map_err(|e| e.to_error("new", &label))?;
        let blas = if engine.has_blas() { "cuBLAS" } else { "no cuBLAS" };
        let nvrtc = crate::libs::nvrtc().map(|(a, b)| format!("NVRTC {a}.{b}")).unwrap_or_default();
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "cuda".into(),
            ordinal: o.ordinal,
            name: d.name.clone(),
            vendor: "NVIDIA".into(),
            driver_version: format!("CUDA {}, {nvrtc}, {blas}", o.driver_version),
            identity: Identity {
                uuid: Some(d.uuid),
                pci_bus_id: Some(d.pci_bus_id.clone()),
                other: None,
            },
            memory_total: d.memory_total,
            dtypes: crate::dtypes(),
            peer_copy: !o.peers.is_empty(),
        };
        let device = CudaDevice::with_engine(
            info,
            Box::new(engine),
            Some(o.target),
            d.cc,
            d.sm_count,
            o.peers,
        )?;
        tracing::debug!(
            device = %device.label,
            name = %device.info.name,
            driver = %device.info.driver_version,
            sm = format!("{}.{}", d.cc / 10, d.cc % 10),
            target = %o.target.flag(),
            "cuda device up"
        );
        Ok(device)
    }

    /// A CUDA device without a GPU: this backend's whole host side (validation, lowering to
    /// kernel launches and cuBLAS calls, buffers, status words, errors) over host memory,
    /// with the kernels of kernels/cuda and cuBLAS's GEMM interpreted on the CPU, strictly
    /// (an access outside its allocation is an illegal address). For testing the backend
    /// where no NVIDIA GPU is; slow, and never found by [`discover`](crate::discover). Its
    /// backend name is `cuda-emulator`.
    pub fn emulated() -> Result<CudaDevice> {
        CudaDevice::emulated_with(EmulatorConfig::default())
    }

    pub(crate) fn emulated_with(config: EmulatorConfig) -> Result<CudaDevice> {
        let id = DeviceId::fresh();
        let info = DeviceInfo {
            id,
            backend: "cuda-emulator".into(),
            ordinal: 0,
            name: "CUDA emulator (host memory, interpreted kernels)".into(),
            vendor: "manychips".into(),
            driver_version: "emulated".into(),
            identity: Identity {
                uuid: None,
                pci_bus_id: None,
                other: Some(format!("cuda-emulator #{}", id.as_u64())),
            },
            memory_total: config.memory,
            dtypes: crate::dtypes(),
            peer_copy: false,
        };
        CudaDevice::with_engine(info, Box::new(Emulator::new(config)), None, 0, 4, Vec::new())
    }

    /// True for [`CudaDevice::emulated`] devices.
    pub fn is_emulated(&self) -> bool {
        self.target.is_none()
    }

    /// The compute capability `(major, minor)`; `None` for the emulator.
    pub fn compute_capability(&self) -> Option<(u32, u32)> {
        self.target.map(|_| (self.cc / 10, self.cc % 10))
    }

    /// The NVRTC option kernels are built with (`--gpu-architecture=sm_90`); `None` for the
    /// emulator.
    pub fn kernel_target(&self) -> Option<String> {
        self.target.map(|t| t.flag())
    }

    /// Whether GEMMs can go to cuBLAS (libcublas was found and opened).
    pub fn has_cublas(&self) -> bool {
        lock(&self.state).engine.has_blas()
    }

    /// How matmul runs: cuBLAS (where it takes the layout, the default when available) or the
    /// tiled kernel always.
    pub fn matmul_path(&self) -> MatmulPath {
        lock(&self.options).matmul
    }

    /// Picks the matmul path; cuBLAS is refused (stays tiled) where it is not available.
    pub fn set_matmul_path(&self, path: MatmulPath) {
        let path =
            if path == MatmulPath::Cublas && !self.has_cublas() { MatmulPath::Tiled } else { path };
        lock(&self.options).matmul = path;
    }

    /// Whether f32 GEMMs run on tensor cores in TF32 (about 10 bits of mantissa: much faster,
    /// far less accurate, so off unless asked for with this or [`crate::TF32_ENV`]).
    pub fn tf32(&self) -> bool {
        lock(&self.options).tf32
    }

    pub fn set_tf32(&self, on: bool) {
        lock(&self.options).tf32 = on;
    }

    /// Picks the index_add / scatter_add kernels (see [`ScatterKernel`]).
    pub fn set_scatter_kernel(&self, kernel: ScatterKernel) {
        lock(&self.options).scatter = kernel;
    }

    /// Picks how host transfers move data (see [`Staging`]); the emulator ignores it.
    pub fn set_staging(&self, staging: Staging) {
        lock(&self.state).engine.set_pageable(staging == Staging::Pageable);
    }

    /// Compiles (or loads from the disk cache) and loads every kernel source now, rather than
    /// on the first op of each family; NVRTC takes seconds for the elementwise kernels.
    pub fn warm_up(&self) -> Result<()> {
        let Some(target) = self.target else { return Ok(()) };
        let results: Vec<std::result::Result<(), CuError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = Source::ALL
                .iter()
                .map(|&s| scope.spawn(move || nvrtc::image(s, target).map(|_| ())))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CuError::Compile { detail: "an NVRTC thread panicked".into() })
                    })
                })
                .collect()
        });
        for r in results {
            r.map_err(|e| e.to_error("warm_up", &self.label))?;
        }
        let mut state = lock(&self.state);
        self.alive(&state)?;
        for source in Source::ALL {
            let kernel = crate::kernels::all_kernels().into_iter().find(|k| k.source() == source);
            if let Some(kernel) = kernel {
                let prepared = state.engine.prepare(kernel);
                self.note(&mut state, "warm_up", prepared)?;
            }
        }
        Ok(())
    }

    /// Whether this device copies to `to` device to device: the same device, or another
    /// real one that can access its memory (`cuDeviceCanAccessPeer`).
    fn reaches_cuda(&self, to: &CudaDevice) -> bool {
        to.info.id == self.info.id
            || (self.target.is_some()
                && to.target.is_some()
                && to.peers.contains(&self.info.ordinal))
    }

    /// [`Device::copy_to_peer`] to another CUDA device: over NVLink/PCIe where the two can
    /// access each other's memory; `Ok(false)` otherwise (the caller stages through the
    /// host). Returns when the copy is done; both devices finish their queued work first.
    fn copy_to_cuda(
        &self,
        src: BufferId,
        src_offset: usize,
        to: &CudaDevice,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<bool> {
        let op = "copy_to_peer";
        if to.info.id == self.info.id {
            self.copy(src, src_offset, dst, dst_offset, bytes)?;
            self.synchronize()?;
            return Ok(true);
        }
        if !self.reaches_cuda(to) {
            return Ok(false);
        }
        // Two locks, always taken in the order of the device ids.
        let (mut mine, mut theirs) = if self.info.id < to.info.id {
            let a = lock(&self.state);
            (a, lock(&to.state))
        } else {
            let b = lock(&to.state);
            (lock(&self.state), b)
        };
        self.alive(&mine)?;
        to.alive(&theirs)?;
        let src_ptr = self.range(&mine, op, src, src_offset, bytes)?;
        let dst_ptr = to.range(&theirs, op, dst, dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(true);
        }
        // Index errors of queued work are reported as at any wait.
        self.check_status_locked(&mut mine)?;
        to.check_status_locked(&mut theirs)?;
        let (Some(from), Some(into)) = (mine.engine.as_driver(), theirs.engine.as_driver()) else {
            return Err(self.internal(op));
        };
        let (dst_at, src_at) = (dst_ptr + dst_offset as u64, src_ptr + src_offset as u64);
        into.copy_from_peer(dst_at, from, src_at, bytes)
            .map_err(|e| e.to_error(op, &self.label))?;
        Ok(true)
    }

    fn alive(&self, state: &State) -> Result<()> {
        match &state.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The contract's error for an engine failure during `op`; a sticky one fails the device.
    fn fail(&self, state: &mut State, op: &str, e: CuError) -> Error {
        let err = e.to_error(op, &self.label);
        if e.is_sticky() && state.failed.is_none() {
            tracing::error!(device = %self.label, error = %err, "cuda device failed");
            state.failed = Some(err.clone());
        }
        err
    }

    fn note<T>(
        &self,
        state: &mut State,
        op: &str,
        r: std::result::Result<T, CuError>,
    ) -> Result<T> {
        r.map_err(|e| self.fail(state, op, e))
    }

    /// A broken internal invariant: a fault, never a panic.
    fn internal(&self, op: &str) -> Error {
        Error::Fault {
            op: op.into(),
            device: self.label.clone(),
            detail: "internal bookkeeping of the CUDA backend is inconsistent".into(),
        }
    }

    fn buffer<'s>(&self, state: &'s State, op: &str, id: BufferId) -> Result<&'s Buf> {
        checks::check_owner(op, &self.label, self.info.id, id)?;
        state.buffers.get(&id.index).ok_or_else(|| checks::unknown_buffer(op, &self.label, id))
    }

    /// The start of buffer `id` after checking that `offset..offset + len` lies inside it.
    fn range(
        &self,
        state: &State,
        op: &str,
        id: BufferId,
        offset: usize,
        len: usize,
    ) -> Result<Ptr> {
        let buf = self.buffer(state, op, id)?;
        checks::check_byte_range(op, &self.label, id, buf.size, offset, len)?;
        Ok(buf.ptr)
    }

    /// Reports (and clears) an out-of-range index value flagged since the last check. The
    /// engine must have just been synchronised.
    fn check_status_locked(&self, state: &mut State) -> Result<()> {
        if state.status_users.is_empty() {
            return Ok(());
        }
        let op = "synchronize";
        let mut words = [0u8; STATUS_BYTES];
        let status = state.status;
        let synced =
            state.engine.synchronize().and_then(|()| state.engine.download(status, 0, &mut words));
        self.note(state, op, synced)?;
        let users = std::mem::take(&mut state.status_users);
        let Some(values) = bad_index_values(&words) else {
            return Ok(());
        };
        let cleared = state.engine.zero(status, 0, STATUS_BYTES);
        self.note(state, op, cleared)?;
        Err(Error::IndexOutOfRange {
            op: users.join(", "),
            device: self.label.clone(),
            detail: format!(
                "{values} out of range for the axis it indexes; the elements it named were \
                 skipped (gather writes 0 there)"
            ),
        })
    }

    /// The lowering configuration now.
    fn config(&self, has_blas: bool) -> Config {
        let o = *lock(&self.options);
        Config {
            sm_count: self.sm_count,
            cublas: o.matmul == MatmulPath::Cublas && has_blas,
            tf32: o.tf32,
            scatter: o.scatter,
        }
    }

    /// Runs `plan`'s steps: temporaries allocated first, freed (after the work) last.
    fn execute(&self, state: &mut State, plan: &Plan) -> std::result::Result<(), CuError> {
        let mut temps: Vec<Ptr> = Vec::with_capacity(plan.temps.len());
        let mut result = Ok(());
        for &bytes in &plan.temps {
            match state.engine.alloc(bytes) {
                Ok(p) => temps.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.steps(state, plan, &temps);
        }
        for t in temps {
            let freed = state.engine.free(t);
            if result.is_ok() {
                result = freed;
            }
        }
        result
    }

    fn steps(
        &self,
        state: &mut State,
        plan: &Plan,
        temps: &[Ptr],
    ) -> std::result::Result<(), CuError> {
        let vanished = || CuError::Missing {
            detail: "a buffer of the op was freed while the op was being prepared".into(),
        };
        let resolve = |state: &State, arg: &Arg| -> std::result::Result<Ptr, CuError> {
            match arg {
                Arg::Buffer(id) => state.buffers.get(&id.index).map(|b| b.ptr).ok_or_else(vanished),
                Arg::Temp(i) => temps.get(*i).copied().ok_or_else(vanished),
                Arg::Status => Ok(state.status),
            }
        };
        for step in &plan.steps {
            match step {
                Step::Launch(l) => {
                    let args = l
                        .args
                        .iter()
                        .map(|a| resolve(state, a))
                        .collect::<std::result::Result<Vec<Ptr>, CuError>>()?;
                    let call = LaunchCall {
                        kernel: l.kernel,
                        params: &l.params,
                        args: &args,
                        grid: l.grid,
                        block: l.block,
                    };
                    state.engine.launch(&call)?;
                }
                Step::Gemm(g) => {
                    let mut ptrs = [0; 3];
                    for (p, id) in ptrs.iter_mut().zip(g.buffers) {
                        *p = resolve(state, &Arg::Buffer(id))?;
                    }
                    state.engine.gemm(&GemmArgs { call: g.call, ptrs, tf32: g.tf32 })?;
                }
            }
        }
        Ok(())
    }
}

impl Device for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
        let got = state.engine.memory();
        let (free, total) = self.note(&mut state, "memory", got)?;
        Ok(MemoryInfo { total, free })
    }

    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
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
        let got = state.engine.alloc(bytes);
        let ptr = self.note(&mut state, "alloc", got)?;
        let index = state.next;
        state.next += 1;
        state.buffers.insert(index, Buf { ptr, size: bytes });
        Ok(BufferId { device: self.info.id, index })
    }

    fn free(&self, buffer: BufferId) -> Result<()> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
        self.buffer(&state, "free", buffer)?;
        let Some(buf) = state.buffers.remove(&buffer.index) else { return Ok(()) };
        let freed = state.engine.free(buf.ptr);
        self.note(&mut state, "free", freed)
    }

    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
        let ptr = self.range(&state, "write", dst, offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let done = state.engine.upload(ptr, offset, src);
        self.note(&mut state, "write", done)
    }

    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
        let ptr = self.range(&state, "read", src, offset, dst.len())?;
        let synced = state.engine.synchronize();
        self.note(&mut state, "read", synced)?;
        self.check_status_locked(&mut state)?;
        if dst.is_empty() {
            return Ok(());
        }
        let done = state.engine.download(ptr, offset, dst);
        self.note(&mut state, "read", done)
    }

    fn copy(
        &self,
        src: BufferId,
        src_offset: usize,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let op = "copy";
        let mut state = lock(&self.state);
        self.alive(&state)?;
        let from = self.range(&state, op, src, src_offset, bytes)?;
        let to = self.range(&state, op, dst, dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        let overlap =
            src == dst && src_offset < dst_offset + bytes && dst_offset < src_offset + bytes;
        let done = if overlap {
            // cuMemcpyDtoD forbids overlapping ranges: go through a temporary.
            state.engine.alloc(bytes).and_then(|temp| {
                let copied = state
                    .engine
                    .copy((from, src_offset), (temp, 0), bytes)
                    .and_then(|()| state.engine.copy((temp, 0), (to, dst_offset), bytes));
                let freed = state.engine.free(temp);
                copied.and(freed)
            })
        } else {
            state.engine.copy((from, src_offset), (to, dst_offset), bytes)
        };
        self.note(&mut state, op, done)
    }

    fn reaches(&self, to: &dyn Device) -> bool {
        (to as &dyn Any).downcast_ref::<CudaDevice>().is_some_and(|to| self.reaches_cuda(to))
    }

    fn copy_to_peer(
        &self,
        src: BufferId,
        src_offset: usize,
        to: &dyn Device,
        dst: BufferId,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<bool> {
        match (to as &dyn Any).downcast_ref::<CudaDevice>() {
            Some(to) => self.copy_to_cuda(src, src_offset, to, dst, dst_offset, bytes),
            None => Ok(false),
        }
    }

    fn run(&self, op: &Op) -> Result<()> {
        // A fused program of more inputs than a generated kernel takes runs in parts that
        // fit; a fused reduction as its program into a temporary, then the reduction.
        if !crate::lower::runs_natively(op) {
            return match op {
                Op::Attention { .. } | Op::AttentionBackward { .. } => {
                    manychips_api::attention::decompose(self, op)
                }
                Op::Fused { .. } => {
                    manychips_api::fused::decompose_in_parts(self, op, crate::fused::MAX_INPUTS)
                }
                _ => manychips_api::fused::decompose(self, op),
            };
        }
        {
            let state = lock(&self.state);
            self.alive(&state)?;
        }
        op.validate(&self.label)?;
        let name = op.name();
        let has_blas = {
            let state = lock(&self.state);
            checks::check_op_views(op, &self.label, &self.info.dtypes, |b| {
                Ok(self.buffer(&state, &name, b)?.size)
            })?;
            state.engine.has_blas()
        };
        if op.output().numel() == 0 {
            return Ok(());
        }
        let plan = lower::lower(op, &self.config(has_blas)).map_err(|e| relabel(e, &self.label))?;
        // Kernels are compiled (or read from the disk cache) outside the lock.
        if let Some(target) = self.target {
            let mut sources: Vec<Source> = plan
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Launch(l) => Some(l.kernel.source()),
                    Step::Gemm(_) => None,
                })
                .collect();
            sources.dedup();
            for source in sources {
                nvrtc::image(source, target).map_err(|e| e.to_error(&name, &self.label))?;
            }
        }
        let span = tracing::trace_span!("cuda run", device = %self.label, op = %name);
        let _guard = span.enter();
        let mut state = lock(&self.state);
        self.alive(&state)?;
        if plan.uses_status() && !state.status_users.contains(&name) {
            state.status_users.push(name.clone());
        }
        let done = self.execute(&mut state, &plan);
        self.note(&mut state, &name, done).map_err(|e| with_op(e, op))
    }

    fn synchronize(&self) -> Result<()> {
        let mut state = lock(&self.state);
        self.alive(&state)?;
        let synced = state.engine.synchronize();
        self.note(&mut state, "synchronize", synced)?;
        self.check_status_locked(&mut state)
    }
}

/// Names this device in an error raised by the lowering (which does not know it).
fn relabel(e: Error, label: &str) -> Error {
    e.on_device(label)
}

/// Adds the op's operands to a fault's detail, so it names shapes and dtypes too.
fn with_op(mut e: Error, op: &Op) -> Error {
    if let Error::Fault { detail, .. } | Error::OutOfMemory { detail, .. } = &mut e {
        detail.push_str(&format!("; {}", op.describe()));
    }
    e
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaDevice")
            .field("label", &self.label)
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("driver", &self.info.driver_version)
            .field("target", &self.target.map(|t| t.flag()))
            .field("options", &*lock(&self.options))
            .finish()
    }
}

/// Bytes of the status words (kernels/cuda/common.cuh, "Status word"): a u32 flag, then the
/// largest out-of-range non-negative index value (u64 at byte 8) and the smallest negative
/// one (i64 at byte 16), both as given.
const STATUS_BYTES: usize = 24;

/// The out-of-range index values the status words hold, in words ("an index value (-7) is"),
/// or `None` when no kernel flagged one.
fn bad_index_values(words: &[u8; STATUS_BYTES]) -> Option<String> {
    let flag = u32::from_le_bytes([words[0], words[1], words[2], words[3]]);
    if flag == 0 {
        return None;
    }
    let eight = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&words[at..at + 8]);
        b
    };
    let largest = u64::from_le_bytes(eight(8));
    let smallest = i64::from_le_bytes(eight(16));
    // A zero `smallest` means no negative value was flagged (0 itself is never below 0);
    // `largest` is meaningful whenever no negative one was, even 0 (an empty axis).
    Some(match (smallest < 0, largest > 0) {
        (true, true) => format!("index values ({smallest} and {largest}) are"),
        (true, false) => format!("an index value ({smallest}) is"),
        (false, _) => format!("an index value ({largest}) is"),
    })
}

#[cfg(test)]
mod tests;
