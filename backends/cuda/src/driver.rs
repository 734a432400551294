//! The engine of a real CUDA device: the driver API through cudarc's raw bindings, cuBLAS
//! for GEMMs, NVRTC images for kernels.
//!
//! Two non-blocking streams: kernels, GEMMs and device-side copies on the compute stream,
//! host transfers on the copy stream. Each allocation remembers the last operation of each
//! stream that touched it; an operation that touches an allocation the other stream used
//! since the two last met first makes its stream wait on an event of the other (one event
//! per direction, re-recorded: a wait captures the event's state when it is made). So
//! uploads into buffers that queued kernels do not use run while those kernels do, and
//! everything else stays in call order.
//!
//! Host transfers go through a small ring of pinned staging buffers (the host copies a chunk
//! in while the DMA engine moves the previous one), or straight from pageable memory when
//! [`Staging::Pageable`](crate::Staging) is chosen. Freed allocations are released at the
//! next point where the device is idle anyway (`synchronize`, `read`), since `cuMemFree`
//! would wait for the whole device.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, c_void};
use std::time::{Duration, Instant};

use cudarc::cublas::sys as blas;
use cudarc::driver::sys::{
    self, CUcontext, CUdevice, CUevent, CUfunction, CUmodule, CUresult, CUstream,
};

use crate::engine::{Engine, GemmArgs, LaunchCall, Ptr};
use crate::error::{CuError, check, check_blas};
use crate::kernels::{Kernel, Source};
use crate::nvrtc::{self, Target};
use crate::params::McParams;
use manychips_api::DType;

const COMPUTE: usize = 0;
const COPY: usize = 1;
/// Pinned staging buffers, and the bytes of each.
const SLOTS: usize = 4;
const SLOT_BYTES: usize = 8 << 20;
/// Freed memory is released once this much is waiting (or this many allocations).
const GARBAGE_BYTES: usize = 512 << 20;
const GARBAGE_COUNT: usize = 4096;
/// A wait for queued work longer than this is reported as a hang (`Timeout`).
const WAIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Waits spin this long (what a blocking sync does by default), then sleep between polls.
const SPIN: Duration = Duration::from_millis(10);

/// One allocation: its size and the last operation of each stream that used it.
#[derive(Clone, Copy, Debug)]
struct Track {
    bytes: usize,
    last: [u64; 2],
}

/// A pinned host buffer and the event of the last copy that used it.
struct Slot {
    ptr: *mut u8,
    bytes: usize,
    event: CUevent,
    pending: bool,
}

/// What discovery learns about a device before it is opened.
#[derive(Clone, Debug)]
pub(crate) struct Described {
    pub dev: CUdevice,
    pub name: String,
    pub uuid: [u8; 16],
    pub pci_bus_id: String,
    pub memory_total: u64,
    /// Compute capability as 10 · major + minor.
    pub cc: u32,
    pub sm_count: u32,
}

fn attribute(dev: CUdevice, attr: sys::CUdevice_attribute) -> Result<i32, CuError> {
    let mut v = 0;
    // SAFETY: the driver is loaded and initialised (callers go through discovery); a valid
    // out-pointer and device.
    check(unsafe { sys::cuDeviceGetAttribute(&mut v, attr, dev) }, "cuDeviceGetAttribute")?;
    Ok(v)
}

/// PCI bus id in the format the Vulkan backend reports (`dddd:bb:dd.f`, lower-case hex), so
/// the fleet's dedup matches one card seen through both.
pub(crate) fn pci_bus_id(domain: u32, bus: u32, device: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

/// Names, identity and size of device `ordinal`. The driver must be initialised (`cuInit`).
pub(crate) fn describe(ordinal: usize) -> Result<Described, CuError> {
    let mut dev: CUdevice = 0;
    // SAFETY: initialised driver; valid out-pointer.
    check(unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) }, "cuDeviceGet")?;
    let mut name = [0u8; 256];
    // SAFETY: the buffer holds the length passed.
    check(
        unsafe { sys::cuDeviceGetName(name.as_mut_ptr().cast(), name.len() as i32, dev) },
        "cuDeviceGetName",
    )?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = String::from_utf8_lossy(&name[..end]).trim().to_string();
    let mut uuid = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: valid out-pointer.
    check(unsafe { sys::cuDeviceGetUuid_v2(&mut uuid, dev) }, "cuDeviceGetUuid_v2")?;
    let uuid = uuid.bytes.map(|b| b as u8);
    let mut total = 0usize;
    // SAFETY: valid out-pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut total, dev) }, "cuDeviceTotalMem_v2")?;
    use sys::CUdevice_attribute as A;
    let at = |a| attribute(dev, a).map(|v| v.max(0) as u32);
    let cc = at(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? * 10
        + at(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let pci = pci_bus_id(
        at(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        at(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        at(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
        0,
    );
    Ok(Described {
        dev,
        name,
        uuid,
        pci_bus_id: pci,
        memory_total: total as u64,
        cc,
        sm_count: at(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1),
    })
}

/// The driver's CUDA version as `major.minor`.
pub(crate) fn driver_version() -> Result<String, CuError> {
    let mut v = 0;
    // SAFETY: valid out-pointer; the driver is loaded.
    check(unsafe { sys::cuDriverGetVersion(&mut v) }, "cuDriverGetVersion")?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// Whether device `a` can read and write device `b`'s memory directly.
pub(crate) fn can_access_peer(a: CUdevice, b: CUdevice) -> Result<bool, CuError> {
    let mut can = 0;
    // SAFETY: valid out-pointer and devices.
    check(unsafe { sys::cuDeviceCanAccessPeer(&mut can, a, b) }, "cuDeviceCanAccessPeer")?;
    Ok(can != 0)
}

pub(crate) struct CudaEngine {
    dev: CUdevice,
    ctx: CUcontext,
    streams: [CUstream; 2],
    /// `marks[s]` is recorded on stream `s` when the other stream must wait for it.
    marks: [CUevent; 2],
    /// Operations enqueued on each stream so far.
    seq: [u64; 2],
    /// `waited[s]`: the other stream's `seq` that stream `s` last waited for.
    waited: [u64; 2],
    track: HashMap<Ptr, Track>,
    garbage: Vec<Ptr>,
    garbage_bytes: usize,
    slots: Vec<Slot>,
    next_slot: usize,
    pageable: bool,
    target: Target,
    modules: HashMap<Source, CUmodule>,
    functions: HashMap<Kernel, CUfunction>,
    blas: Option<blas::cublasHandle_t>,
    /// Contexts this one enabled peer access to.
    peers: Vec<CUcontext>,
}

// SAFETY: the raw handles are plain driver objects usable from any thread once the context
// is made current (every method binds it first); the engine is only used under the device's
// lock, one thread at a time. The pinned slots are owned by the engine.
unsafe impl Send for CudaEngine {}

impl CudaEngine {
    /// Opens device `dev`: retains its primary context, creates the streams and events, and a
    /// cuBLAS handle when cuBLAS is available.
    pub(crate) fn new(
        dev: CUdevice,
        target: Target,
        pageable: bool,
    ) -> Result<CudaEngine, CuError> {
        let mut engine = CudaEngine {
            dev,
            ctx: std::ptr::null_mut(),
            streams: [std::ptr::null_mut(); 2],
            marks: [std::ptr::null_mut(); 2],
            seq: [0; 2],
            waited: [0; 2],
            track: HashMap::new(),
            garbage: Vec::new(),
            garbage_bytes: 0,
            slots: Vec::new(),
            next_slot: 0,
            pageable,
            target,
            modules: HashMap::new(),
            functions: HashMap::new(),
            blas: None,
            peers: Vec::new(),
        };
        // SAFETY: valid out-pointer and device; released in Drop (only when non-null).
        check(
            unsafe { sys::cuDevicePrimaryCtxRetain(&mut engine.ctx, dev) },
            "cuDevicePrimaryCtxRetain",
        )?;
        engine.bind()?;
        for s in 0..2 {
            let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
            // SAFETY: the context is current; valid out-pointer; destroyed in Drop.
            check(unsafe { sys::cuStreamCreate(&mut engine.streams[s], flags) }, "cuStreamCreate")?;
            let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
            // SAFETY: as above.
            check(unsafe { sys::cuEventCreate(&mut engine.marks[s], flags) }, "cuEventCreate")?;
        }
        match crate::libs::cublas() {
            Ok(()) => match engine.create_blas() {
                Ok(handle) => engine.blas = Some(handle),
                Err(e) => {
                    tracing::warn!(error = ?e, "cuBLAS unusable; matmul runs on the tiled kernel")
                }
            },
            Err(reason) => tracing::info!(%reason, "no cuBLAS; matmul runs on the tiled kernel"),
        }
        Ok(engine)
    }

    fn create_blas(&mut self) -> Result<blas::cublasHandle_t, CuError> {
        let mut handle: blas::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: cuBLAS is loaded with every symbol (libs::cublas); the context is current.
        check_blas(unsafe { blas::cublasCreate_v2(&mut handle) }, "cublasCreate_v2")?;
        let stream = self.streams[COMPUTE] as blas::cudaStream_t;
        // SAFETY: a live handle and a stream of the handle's context.
        let set =
            check_blas(unsafe { blas::cublasSetStream_v2(handle, stream) }, "cublasSetStream_v2")
                .and_then(|()| {
                    // f16/bf16 GEMMs accumulate in f32 all the way, split-K reductions included.
                    let mode = blas::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
                    // SAFETY: a live handle.
                    check_blas(
                        unsafe { blas::cublasSetMathMode(handle, mode) },
                        "cublasSetMathMode",
                    )
                });
        if let Err(e) = set {
            // SAFETY: a live handle, destroyed once.
            unsafe { blas::cublasDestroy_v2(handle) };
            return Err(e);
        }
        Ok(handle)
    }

    /// Makes this device's context current on the calling thread.
    fn bind(&self) -> Result<(), CuError> {
        let mut current: CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(unsafe { sys::cuCtxGetCurrent(&mut current) }, "cuCtxGetCurrent")?;
        if current != self.ctx {
            // SAFETY: a retained, live context.
            check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")?;
        }
        Ok(())
    }

    /// Makes `stream` wait for the other stream's operations on `bases`, if it has not yet.
    fn order(&mut self, stream: usize, bases: &[Ptr]) -> Result<(), CuError> {
        let other = 1 - stream;
        let need = bases.iter().filter_map(|b| self.track.get(b)).map(|t| t.last[other]).max();
        if need.unwrap_or(0) > self.waited[stream] {
            // SAFETY: live event and streams of the current context.
            check(
                unsafe { sys::cuEventRecord(self.marks[other], self.streams[other]) },
                "cuEventRecord",
            )?;
            // SAFETY: as above.
            check(
                unsafe { sys::cuStreamWaitEvent(self.streams[stream], self.marks[other], 0) },
                "cuStreamWaitEvent",
            )?;
            self.waited[stream] = self.seq[other];
        }
        Ok(())
    }

    /// Records that an operation just enqueued on `stream` used `bases`.
    fn touch(&mut self, stream: usize, bases: &[Ptr]) {
        self.seq[stream] += 1;
        let seq = self.seq[stream];
        for b in bases {
            if let Some(t) = self.track.get_mut(b) {
                t.last[stream] = seq;
            }
        }
    }

    /// The pinned staging ring, allocated on first use. `false` when pinned memory cannot be
    /// had (the engine then moves data from pageable memory).
    fn ensure_slots(&mut self) -> bool {
        if !self.slots.is_empty() {
            return true;
        }
        for _ in 0..SLOTS {
            let mut ptr: *mut c_void = std::ptr::null_mut();
            // SAFETY: the context is current (callers bound it); valid out-pointer; freed in
            // Drop.
            let allocated =
                check(unsafe { sys::cuMemHostAlloc(&mut ptr, SLOT_BYTES, 0) }, "cuMemHostAlloc");
            let mut event: CUevent = std::ptr::null_mut();
            let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
            let created = allocated.and_then(|()| {
                // SAFETY: valid out-pointer.
                check(unsafe { sys::cuEventCreate(&mut event, flags) }, "cuEventCreate")
            });
            if let Err(e) = created {
                if !ptr.is_null() {
                    // SAFETY: allocated just above, used by nothing.
                    unsafe { sys::cuMemFreeHost(ptr) };
                }
                tracing::warn!(error = ?e, "no pinned staging memory; host transfers go direct");
                self.pageable = true;
                return false;
            }
            self.slots.push(Slot { ptr: ptr.cast(), bytes: SLOT_BYTES, event, pending: false });
        }
        true
    }

    /// The next staging slot, once the copy that last used it is done.
    fn take_slot(&mut self) -> Result<usize, CuError> {
        let i = self.next_slot;
        self.next_slot = (i + 1) % self.slots.len();
        let slot = &mut self.slots[i];
        if slot.pending {
            // SAFETY: a live event recorded on the copy stream.
            check(unsafe { sys::cuEventSynchronize(slot.event) }, "cuEventSynchronize")?;
            slot.pending = false;
        }
        Ok(i)
    }

    fn function(&mut self, kernel: Kernel) -> Result<CUfunction, CuError> {
        if let Some(&f) = self.functions.get(&kernel) {
            return Ok(f);
        }
        let source = kernel.source();
        let module = match self.modules.get(&source) {
            Some(&m) => m,
            None => {
                let image = nvrtc::image(source, self.target)?;
                let mut module: CUmodule = std::ptr::null_mut();
                // SAFETY: the context is current; `image` is a CUBIN or NUL-terminated PTX
                // that outlives the call; the module is unloaded in Drop.
                let rc = unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) };
                match rc {
                    CUresult::CUDA_SUCCESS => {}
                    CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                    | CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU
                    | CUresult::CUDA_ERROR_INVALID_IMAGE
                    | CUresult::CUDA_ERROR_INVALID_PTX => {
                        let nvrtc = crate::libs::nvrtc().unwrap_or_default();
                        return Err(CuError::Missing {
                            detail: format!(
                                "cuModuleLoadData of {source} ({}) returned {}: the driver \
                                 cannot load what NVRTC {}.{} built; update the driver, or use \
                                 an NVRTC no newer than it",
                                self.target.flag(),
                                crate::error::code_name(rc),
                                nvrtc.0,
                                nvrtc.1
                            ),
                        });
                    }
                    code => return Err(CuError::driver(code, "cuModuleLoadData")),
                }
                self.modules.insert(source, module);
                module
            }
        };
        let name = CString::new(kernel.name()).map_err(|_| CuError::Missing {
            detail: format!("kernel name {kernel} has a NUL byte"),
        })?;
        let mut f: CUfunction = std::ptr::null_mut();
        // SAFETY: a loaded module; `name` outlives the call.
        check(
            unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) },
            "cuModuleGetFunction",
        )?;
        self.functions.insert(kernel, f);
        Ok(f)
    }

    /// Waits until `stream` has done everything queued on it, or reports a hang after
    /// [`WAIT_TIMEOUT`] (cuStreamSynchronize would block for ever on a hung kernel).
    fn wait(&self, stream: usize) -> Result<(), CuError> {
        let start = Instant::now();
        loop {
            // SAFETY: a live stream of the current context.
            match unsafe { sys::cuStreamQuery(self.streams[stream]) } {
                CUresult::CUDA_SUCCESS => return Ok(()),
                CUresult::CUDA_ERROR_NOT_READY => {}
                code => return Err(CuError::driver(code, "cuStreamQuery")),
            }
            let waited = start.elapsed();
            if waited > WAIT_TIMEOUT {
                return Err(CuError::Timeout {
                    detail: format!(
                        "queued work did not finish within {} s",
                        WAIT_TIMEOUT.as_secs()
                    ),
                });
            }
            if waited < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Releases the memory freed so far; the streams must be idle.
    fn release_garbage(&mut self) -> Result<(), CuError> {
        let mut first = Ok(());
        for p in std::mem::take(&mut self.garbage) {
            self.track.remove(&p);
            // SAFETY: an allocation of this context that nothing uses any more (the streams
            // are idle and the device table forgot it).
            let freed = check(unsafe { sys::cuMemFree_v2(p) }, "cuMemFree_v2");
            if first.is_ok() {
                first = freed;
            }
        }
        self.garbage_bytes = 0;
        first
    }

    /// Copies `bytes` from `src` (an allocation of `from`) to `dst` (one of this device),
    /// directly over the peer link, and waits for it. Both devices are synchronised first, so
    /// the copy sees all their earlier work and disturbs none still queued.
    pub(crate) fn copy_from_peer(
        &mut self,
        dst: Ptr,
        from: &mut CudaEngine,
        src: Ptr,
        bytes: usize,
    ) -> Result<(), CuError> {
        from.synchronize()?;
        self.synchronize()?;
        self.bind()?;
        if !self.peers.contains(&from.ctx) {
            // SAFETY: two live contexts; enabling twice is reported, not harmful.
            match unsafe { sys::cuCtxEnablePeerAccess(from.ctx, 0) } {
                CUresult::CUDA_SUCCESS | CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
                code => return Err(CuError::driver(code, "cuCtxEnablePeerAccess")),
            }
            self.peers.push(from.ctx);
        }
        // SAFETY: both ranges were checked against their buffers; both contexts are live and
        // idle; the stream belongs to the current context.
        check(
            unsafe {
                sys::cuMemcpyPeerAsync(dst, self.ctx, src, from.ctx, bytes, self.streams[COMPUTE])
            },
            "cuMemcpyPeerAsync",
        )?;
        // SAFETY: a live stream.
        check(unsafe { sys::cuStreamSynchronize(self.streams[COMPUTE]) }, "cuStreamSynchronize")
    }
}

fn cuda_type(dtype: DType) -> blas::cudaDataType {
    match dtype {
        DType::F16 => blas::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        _ => blas::cudaDataType::CUDA_R_32F,
    }
}

fn op(transposed: bool) -> blas::cublasOperation_t {
    if transposed {
        blas::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas::cublasOperation_t::CUBLAS_OP_N
    }
}

impl Engine for CudaEngine {
    fn alloc(&mut self, bytes: usize) -> Result<Ptr, CuError> {
        self.bind()?;
        let mut ptr: Ptr = 0;
        // cuMemAlloc refuses 0 bytes; an empty buffer still gets a distinct address.
        let size = bytes.max(1);
        // SAFETY: the context is current; valid out-pointer; freed through `free`/Drop.
        let mut rc = unsafe { sys::cuMemAlloc_v2(&mut ptr, size) };
        if rc == CUresult::CUDA_ERROR_OUT_OF_MEMORY && !self.garbage.is_empty() {
            self.synchronize()?;
            // SAFETY: as above.
            rc = unsafe { sys::cuMemAlloc_v2(&mut ptr, size) };
        }
        check(rc, "cuMemAlloc_v2")?;
        self.track.insert(ptr, Track { bytes: size, last: [0; 2] });
        Ok(ptr)
    }

    fn free(&mut self, ptr: Ptr) -> Result<(), CuError> {
        let Some(t) = self.track.get(&ptr) else {
            return Err(CuError::driver(CUresult::CUDA_ERROR_INVALID_VALUE, "cuMemFree_v2"));
        };
        self.garbage_bytes += t.bytes;
        self.garbage.push(ptr);
        if self.garbage_bytes > GARBAGE_BYTES || self.garbage.len() > GARBAGE_COUNT {
            self.synchronize()?;
        }
        Ok(())
    }

    fn upload(&mut self, base: Ptr, offset: usize, src: &[u8]) -> Result<(), CuError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.order(COPY, &[base])?;
        let dst = base + offset as u64;
        if self.pageable || !self.ensure_slots() {
            // SAFETY: `src` is valid for its length until the stream is synchronised below;
            // the range was checked against the allocation.
            check(
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(
                        dst,
                        src.as_ptr().cast(),
                        src.len(),
                        self.streams[COPY],
                    )
                },
                "cuMemcpyHtoDAsync_v2",
            )?;
            self.touch(COPY, &[base]);
            // SAFETY: a live stream.
            return check(
                unsafe { sys::cuStreamSynchronize(self.streams[COPY]) },
                "cuStreamSynchronize",
            );
        }
        let mut pos = 0;
        while pos < src.len() {
            let i = self.take_slot()?;
            let stream = self.streams[COPY];
            let slot = &mut self.slots[i];
            let n = (src.len() - pos).min(slot.bytes);
            // SAFETY: the slot holds `slot.bytes` ≥ n bytes and no copy uses it (take_slot
            // waited); `src[pos..pos + n]` is in bounds.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(pos), slot.ptr, n) };
            // SAFETY: pinned memory stays valid until the event says the copy is done.
            check(
                unsafe { sys::cuMemcpyHtoDAsync_v2(dst + pos as u64, slot.ptr.cast(), n, stream) },
                "cuMemcpyHtoDAsync_v2",
            )?;
            // SAFETY: live event and stream.
            check(unsafe { sys::cuEventRecord(slot.event, stream) }, "cuEventRecord")?;
            slot.pending = true;
            pos += n;
        }
        self.touch(COPY, &[base]);
        Ok(())
    }

    fn download(&mut self, base: Ptr, offset: usize, dst: &mut [u8]) -> Result<(), CuError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.order(COPY, &[base])?;
        let src = base + offset as u64;
        let stream = self.streams[COPY];
        if self.pageable || !self.ensure_slots() {
            // SAFETY: `dst` is valid for its length and waited for below.
            check(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), src, dst.len(), stream)
                },
                "cuMemcpyDtoHAsync_v2",
            )?;
            // SAFETY: a live stream.
            return check(unsafe { sys::cuStreamSynchronize(stream) }, "cuStreamSynchronize");
        }
        // Up to SLOTS chunks in flight; each is copied out as soon as it lands.
        let mut in_flight: VecDeque<(usize, usize, usize)> = VecDeque::new();
        let finish = |slots: &mut Vec<Slot>, dst: &mut [u8], (i, pos, n): (usize, usize, usize)| {
            let slot = &mut slots[i];
            // SAFETY: a live event recorded after the chunk's copy.
            check(unsafe { sys::cuEventSynchronize(slot.event) }, "cuEventSynchronize")?;
            slot.pending = false;
            // SAFETY: the copy into the slot is complete; both ranges are in bounds.
            unsafe { std::ptr::copy_nonoverlapping(slot.ptr, dst.as_mut_ptr().add(pos), n) };
            Ok::<(), CuError>(())
        };
        let mut pos = 0;
        while pos < dst.len() {
            if in_flight.len() == self.slots.len()
                && let Some(chunk) = in_flight.pop_front()
            {
                finish(&mut self.slots, dst, chunk)?;
            }
            let i = self.take_slot()?;
            let slot = &mut self.slots[i];
            let n = (dst.len() - pos).min(slot.bytes);
            // SAFETY: the slot is free (take_slot waited) and holds n bytes.
            check(
                unsafe { sys::cuMemcpyDtoHAsync_v2(slot.ptr.cast(), src + pos as u64, n, stream) },
                "cuMemcpyDtoHAsync_v2",
            )?;
            // SAFETY: live event and stream.
            check(unsafe { sys::cuEventRecord(slot.event, stream) }, "cuEventRecord")?;
            slot.pending = true;
            in_flight.push_back((i, pos, n));
            pos += n;
        }
        while let Some(chunk) = in_flight.pop_front() {
            finish(&mut self.slots, dst, chunk)?;
        }
        Ok(())
    }

    fn copy(&mut self, src: (Ptr, usize), dst: (Ptr, usize), bytes: usize) -> Result<(), CuError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        self.order(COMPUTE, &[src.0, dst.0])?;
        let (from, to) = (src.0 + src.1 as u64, dst.0 + dst.1 as u64);
        // SAFETY: both ranges were checked against their allocations and do not overlap.
        check(
            unsafe { sys::cuMemcpyDtoDAsync_v2(to, from, bytes, self.streams[COMPUTE]) },
            "cuMemcpyDtoDAsync_v2",
        )?;
        self.touch(COMPUTE, &[src.0, dst.0]);
        Ok(())
    }

    fn zero(&mut self, base: Ptr, offset: usize, bytes: usize) -> Result<(), CuError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        self.order(COMPUTE, &[base])?;
        // SAFETY: the range was checked against the allocation.
        check(
            unsafe { sys::cuMemsetD8Async(base + offset as u64, 0, bytes, self.streams[COMPUTE]) },
            "cuMemsetD8Async",
        )?;
        self.touch(COMPUTE, &[base]);
        Ok(())
    }

    fn launch(&mut self, call: &LaunchCall<'_>) -> Result<(), CuError> {
        self.bind()?;
        let f = self.function(call.kernel)?;
        self.order(COMPUTE, call.args)?;
        let mut params: McParams = *call.params;
        let mut ptrs: Vec<Ptr> = call.args.to_vec();
        let mut values: Vec<*mut c_void> = Vec::with_capacity(1 + ptrs.len());
        values.push((&mut params as *mut McParams).cast());
        for p in ptrs.iter_mut() {
            values.push((p as *mut Ptr).cast());
        }
        let [gx, gy, gz] = call.grid;
        let [bx, by, bz] = call.block;
        // SAFETY: `f` is a function of a loaded module taking `McParams` by value and one
        // `CUdeviceptr` per entry of `ptrs` (the arity the NVRTC test checks against the
        // PTX); the driver copies the values pointed to before returning; every pointer is a
        // live allocation and every offset in `params` was checked against it.
        check(
            unsafe {
                sys::cuLaunchKernel(
                    f,
                    gx,
                    gy,
                    gz,
                    bx,
                    by,
                    bz,
                    0,
                    self.streams[COMPUTE],
                    values.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        self.touch(COMPUTE, call.args);
        Ok(())
    }

    fn gemm(&mut self, args: &GemmArgs) -> Result<(), CuError> {
        let Some(handle) = self.blas else {
            return Err(CuError::Missing {
                detail: "cuBLAS is not available on this device".into(),
            });
        };
        self.bind()?;
        self.order(COMPUTE, &args.ptrs)?;
        let c = &args.call;
        let size = c.dtype.size_in_bytes() as u64;
        let at = |o: &crate::gemm::GemmOperand| args.ptrs[o.view] + o.offset as u64 * size;
        let ty = cuda_type(c.dtype);
        let compute = if args.tf32 && c.dtype == DType::F32 {
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        // SAFETY: a live handle bound to the compute stream of the current context; every
        // pointer addresses its view inside a live allocation (gemm::plan derived them from
        // checked views); alpha and beta are f32 as COMPUTE_32F wants, read before return.
        check_blas(
            unsafe {
                blas::cublasGemmStridedBatchedEx(
                    handle,
                    op(c.trans_a),
                    op(c.trans_b),
                    int(c.m),
                    int(c.n),
                    int(c.k),
                    (&alpha as *const f32).cast(),
                    at(&c.a) as *const c_void,
                    ty,
                    int(c.a.ld),
                    c.a.stride as i64,
                    at(&c.b) as *const c_void,
                    ty,
                    int(c.b.ld),
                    c.b.stride as i64,
                    (&beta as *const f32).cast(),
                    at(&c.c) as *mut c_void,
                    ty,
                    int(c.c.ld),
                    c.c.stride as i64,
                    int(c.batch),
                    compute,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
            "cublasGemmStridedBatchedEx",
        )?;
        self.touch(COMPUTE, &args.ptrs);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), CuError> {
        self.bind()?;
        for s in [COMPUTE, COPY] {
            self.wait(s)?;
        }
        for slot in &mut self.slots {
            slot.pending = false;
        }
        self.waited = [self.seq[COPY], self.seq[COMPUTE]];
        self.release_garbage()
    }

    fn memory(&mut self) -> Result<(u64, u64), CuError> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: the context is current; valid out-pointers.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "cuMemGetInfo_v2")?;
        Ok((free as u64, total as u64))
    }

    fn has_blas(&self) -> bool {
        self.blas.is_some()
    }

    fn set_pageable(&mut self, on: bool) {
        self.pageable = on;
    }

    fn prepare(&mut self, kernel: Kernel) -> Result<(), CuError> {
        self.bind()?;
        self.function(kernel).map(|_| ())
    }

    fn as_driver(&mut self) -> Option<&mut CudaEngine> {
        Some(self)
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        // Errors here (a context lost to a sticky error) change nothing: release what can be.
        let _ = self.bind();
        // SAFETY: every handle below was created on this context and is released once; the
        // streams are synchronised first so nothing uses the memory any more.
        unsafe {
            for &s in &self.streams {
                if !s.is_null() {
                    sys::cuStreamSynchronize(s);
                }
            }
            for (&p, _) in self.track.iter() {
                sys::cuMemFree_v2(p);
            }
            for slot in &self.slots {
                sys::cuMemFreeHost(slot.ptr.cast());
                sys::cuEventDestroy_v2(slot.event);
            }
            if let Some(handle) = self.blas.take() {
                blas::cublasDestroy_v2(handle);
            }
            for (_, &m) in self.modules.iter() {
                sys::cuModuleUnload(m);
            }
            for &e in &self.marks {
                if !e.is_null() {
                    sys::cuEventDestroy_v2(e);
                }
            }
            for &s in &self.streams {
                if !s.is_null() {
                    sys::cuStreamDestroy_v2(s);
                }
            }
            sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_bus_ids_are_formatted_like_the_vulkan_backend() {
        // backends/vulkan/src/discover.rs: "{:04x}:{:02x}:{:02x}.{:x}".
        assert_eq!(pci_bus_id(0, 0x65, 0, 0), "0000:65:00.0");
        assert_eq!(pci_bus_id(1, 0xab, 0x1f, 0), "0001:ab:1f.0");
    }
}
