//! [`CpuDevice`]: the caller-side handle. It validates every call at once (so misuse is an
//! immediate `Err`), then enqueues a command for the worker thread (see `worker.rs`).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded, unbounded};
use manychips_api::{
    BufferId, DType, Device, DeviceId, DeviceInfo, Error, Identity, MemoryInfo, Op, Result, checks,
};
use rustc_hash::FxHashMap;

use crate::sysinfo;
use crate::worker::{Command, Health, Pending, Reading, Worker};

/// The CPU as a manychips device: buffers in host memory, ops on a private thread pool.
///
/// Calls return as soon as the work is queued (`run`, `write`, `copy`, `free`); `read` and
/// `synchronize` wait. One worker thread executes the queue in order and runs each kernel on
/// the device's own rayon pool, never the global one, so CPU work proceeds alongside other
/// devices' work and alongside the caller.
pub struct CpuDevice {
    info: DeviceInfo,
    label: String,
    threads: usize,
    table: Mutex<Table>,
    health: Arc<Health>,
    worker: Option<JoinHandle<()>>,
}

/// Caller-side bookkeeping: what exists, how big, and the queue. Commands are sent while the
/// table is locked, so the queue order always agrees with the table.
struct Table {
    tx: Option<Sender<Command>>,
    next: u64,
    sizes: FxHashMap<u64, usize>,
    /// Allocations and frees not yet sent: they go with the next command.
    pending: Pending,
}

/// Queued allocations or frees past this many are sent on their own, so that a caller that
/// frees much and runs nothing does not keep the memory from the pool.
const MAX_PENDING: usize = 64;

impl CpuDevice {
    /// A device using every core the OS gives this process.
    pub fn new() -> Result<CpuDevice> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self::with_threads(threads)
    }

    /// A device whose kernels run on `threads` threads (at least 1).
    pub fn with_threads(threads: usize) -> Result<CpuDevice> {
        let label = "cpu:0".to_string();
        let unavailable = |reason: String| Error::Unavailable { backend: "cpu".into(), reason };
        if threads == 0 {
            return Err(Error::InvalidArgument {
                op: "new".into(),
                device: label,
                detail: "a CPU device needs at least one thread".into(),
            });
        }
        let (name, vendor) = sysinfo::cpu_model();
        let (memory_total, _) = sysinfo::memory();
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "cpu".into(),
            ordinal: 0,
            name: name.clone(),
            vendor,
            driver_version: format!(
                "manychips-cpu {}, {threads} threads",
                env!("CARGO_PKG_VERSION")
            ),
            identity: Identity { uuid: None, pci_bus_id: None, other: Some(format!("cpu:{name}")) },
            memory_total,
            dtypes: DType::ALL.to_vec(),
            peer_copy: false,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("manychips-cpu-{i}"))
            .build()
            .map_err(|e| unavailable(format!("cannot start {threads} threads: {e}")))?;
        let health = Arc::new(Health::default());
        let pool_cap = usize::try_from((memory_total / 4).min(4 << 30)).unwrap_or(usize::MAX);
        let worker = Worker::new(label.clone(), pool_cap, health.clone());
        let (tx, rx) = unbounded();
        // The command loop itself runs inside the pool, on one of its threads: kernels then
        // start their parallel work from within the pool, with no hand-off per op.
        let handle = std::thread::Builder::new()
            .name("manychips-cpu-queue".into())
            .spawn(move || pool.install(move || worker.run(rx)))
            .map_err(|e| unavailable(format!("cannot start the worker thread: {e}")))?;
        tracing::debug!(device = %label, %name, threads, "cpu device up");
        Ok(CpuDevice {
            info,
            label,
            threads,
            table: Mutex::new(Table {
                tx: Some(tx),
                next: 0,
                sizes: FxHashMap::default(),
                pending: Pending::default(),
            }),
            health,
            worker: Some(handle),
        })
    }

    /// Threads the kernels run on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; if something did, the table is still
        // consistent (every update is a single insert or remove).
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lost(&self) -> Error {
        let detail =
            self.health.lost.get().cloned().unwrap_or_else(|| "worker thread is gone".into());
        Error::DeviceLost { device: self.label.clone(), detail }
    }

    fn check_alive(&self) -> Result<()> {
        if self.health.lost.get().is_some() { Err(self.lost()) } else { Ok(()) }
    }

    /// Sends `cmd` with the allocations and frees queued before it: inside it for an op,
    /// just ahead of it otherwise.
    fn send(&self, table: &mut Table, cmd: Command) -> Result<()> {
        let Some(tx) = &table.tx else { return Err(self.lost()) };
        let cmd = match cmd {
            Command::Run(op, _) => Command::Run(op, std::mem::take(&mut table.pending)),
            other => {
                if !table.pending.is_empty() {
                    let pending = std::mem::take(&mut table.pending);
                    tx.send(Command::Pending(pending)).map_err(|_| self.lost())?;
                }
                other
            }
        };
        tx.send(cmd).map_err(|_| self.lost())
    }

    /// Sends the queued allocations and frees once there are many of them.
    fn bound_pending(&self, table: &mut Table) -> Result<()> {
        let p = &table.pending;
        if p.allocs.len() + p.frees.len() < MAX_PENDING {
            return Ok(());
        }
        let Some(tx) = &table.tx else { return Err(self.lost()) };
        let pending = std::mem::take(&mut table.pending);
        tx.send(Command::Pending(pending)).map_err(|_| self.lost())
    }

    /// The size of `buf`, or why it cannot be used here.
    fn size_of(&self, table: &Table, op: &str, buf: BufferId) -> Result<usize> {
        checks::check_owner(op, &self.label, self.info.id, buf)?;
        table
            .sizes
            .get(&buf.index)
            .copied()
            .ok_or_else(|| checks::unknown_buffer(op, &self.label, buf))
    }

    /// `offset + len` if that byte range lies inside a buffer of `size` bytes.
    fn check_range(
        &self,
        op: &str,
        buf: BufferId,
        size: usize,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        checks::check_byte_range(op, &self.label, buf, size, offset, len)
    }
}

impl Device for CpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let (total, free) = sysinfo::memory();
        let cached = self.health.cached.load(std::sync::atomic::Ordering::Relaxed) as u64;
        Ok(MemoryInfo { total, free: free.saturating_add(cached).min(total) })
    }

    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.check_alive()?;
        if bytes > isize::MAX as usize || bytes as u64 > self.info.memory_total {
            return Err(Error::OutOfMemory {
                op: "alloc".into(),
                device: self.label.clone(),
                detail: format!(
                    "{bytes} bytes requested; the host has {} bytes in all",
                    self.info.memory_total
                ),
            });
        }
        let mut table = self.lock();
        let index = table.next;
        table.next += 1;
        table.sizes.insert(index, bytes);
        table.pending.allocs.push((index, bytes));
        self.bound_pending(&mut table)?;
        Ok(BufferId { device: self.info.id, index })
    }

    fn free(&self, buffer: BufferId) -> Result<()> {
        self.check_alive()?;
        let mut table = self.lock();
        self.size_of(&table, "free", buffer)?;
        table.sizes.remove(&buffer.index);
        // A buffer the worker has not allocated yet is simply never allocated.
        let allocs = &mut table.pending.allocs;
        match allocs.iter().position(|&(index, _)| index == buffer.index) {
            Some(at) => drop(allocs.remove(at)),
            None => table.pending.frees.push(buffer.index),
        }
        self.bound_pending(&mut table)
    }

    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.check_alive()?;
        {
            let table = self.lock();
            let size = self.size_of(&table, "write", dst)?;
            self.check_range("write", dst, size, offset, src.len())?;
        }
        if src.is_empty() {
            return Ok(());
        }
        // The caller's slice does not outlive this call, so the queue gets its own copy
        // (made outside the lock: it can be large).
        let mut data = Vec::new();
        data.try_reserve_exact(src.len()).map_err(|_| Error::OutOfMemory {
            op: "write".into(),
            device: self.label.clone(),
            detail: format!("no memory to stage {} bytes", src.len()),
        })?;
        data.extend_from_slice(src);
        let mut table = self.lock();
        // Re-checked: another thread may have freed the buffer meanwhile.
        self.size_of(&table, "write", dst)?;
        self.send(&mut table, Command::Write { index: dst.index, offset, data })
    }

    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_alive()?;
        let (reply, answer) = bounded(1);
        {
            let mut table = self.lock();
            let size = self.size_of(&table, "read", src)?;
            self.check_range("read", src, size, offset, dst.len())?;
            let len = dst.len();
            self.send(&mut table, Command::Read { index: src.index, offset, len, reply })?;
        }
        match answer.recv().ok() {
            Some(Ok(Reading::Copied(bytes))) => {
                dst.copy_from_slice(&bytes);
                Ok(())
            }
            Some(Ok(Reading::Lent(lent))) => {
                let copied = match lent.storage.as_bytes().get(offset..offset + dst.len()) {
                    Some(bytes) => {
                        dst.copy_from_slice(bytes);
                        Ok(())
                    }
                    None => Err(Error::Fault {
                        op: "read".into(),
                        device: self.label.clone(),
                        detail: format!("buffer {} is smaller than recorded", src.index),
                    }),
                };
                lent.give_back();
                copied
            }
            Some(Err(e)) => Err(e),
            None => Err(self.lost()),
        }
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
        let mut table = self.lock();
        let src_size = self.size_of(&table, "copy", src)?;
        let dst_size = self.size_of(&table, "copy", dst)?;
        self.check_range("copy", src, src_size, src_offset, bytes)?;
        self.check_range("copy", dst, dst_size, dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        let cmd = Command::Copy { src: src.index, src_offset, dst: dst.index, dst_offset, bytes };
        self.send(&mut table, cmd)
    }

    fn run(&self, op: &Op) -> Result<()> {
        self.submit(op.clone())
    }

    fn has_attention_kernel(&self) -> bool {
        true
    }

    fn submit(&self, op: Op) -> Result<()> {
        self.check_alive()?;
        op.validate(&self.label)?;
        let mut table = self.lock();
        checks::check_op_views(&op, &self.label, &self.info.dtypes, |b| {
            self.size_of(&table, op.static_name(), b)
        })?;
        self.send(&mut table, Command::Run(Box::new(op), Pending::default()))
    }

    fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        let (reply, answer) = bounded(1);
        self.send(&mut self.lock(), Command::Sync { reply })?;
        answer.recv().unwrap_or_else(|_| Err(self.lost()))
    }
}

impl fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuDevice")
            .field("label", &self.label)
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Drop for CpuDevice {
    fn drop(&mut self) {
        // Closing the queue ends the worker loop once it has drained what is queued.
        self.lock().tx = None;
        if let Some(handle) = self.worker.take() {
            let _ = handle.join();
        }
    }
}
