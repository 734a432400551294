//! The device's worker: the one thread that owns every buffer and executes commands in the
//! order they were enqueued.
//!
//! Because the worker owns the storage outright, kernels get plain `&`/`&mut` slices: the
//! output's storage is taken out of the table for the duration of an op (the contract says
//! it is never also an input), the inputs are borrowed from the table, and the output goes
//! back afterwards. No locks or cells guard buffer memory.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use manychips_api::{Error, Op, Result};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::kernels::{self, Env};
use crate::storage::{BufferPool, Scratch, Storage, try_alloc_words};

/// What the worker tells the device handle that is not an answer to one command.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Set once the worker caught a panic: the device is unusable from then on.
    pub lost: OnceLock<String>,
    /// Bytes held in the pool of freed buffers: free memory, as far as this device goes.
    pub cached: AtomicUsize,
}

/// What a read gets back: a copy of a small range, or the whole buffer lent for a large one.
pub(crate) enum Reading {
    Copied(Vec<u8>),
    Lent(Lent),
}

/// A buffer lent to a reader: the reader copies out of it and sends it back, so reading a
/// large range costs one copy and no allocation.
pub(crate) struct Lent {
    pub storage: Storage,
    back: Sender<Storage>,
}

impl Lent {
    pub fn give_back(self) {
        // If the worker is gone there is nobody to give it to; dropping it is right.
        let _ = self.back.send(self.storage);
    }
}

/// Ranges up to this many bytes are copied by the worker and sent, so that a read of a loss
/// or a norm costs one hand-off, not the two of a lent buffer sent back.
const COPIED_READ_BYTES: usize = 64 << 10;

/// Allocations and frees the caller has not sent yet: they travel with its next command,
/// so that an op and its output's allocation (and the frees before it) are one hand-off,
/// not three. Frees are settled first, so the pool can hand a freed buffer to a new one.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub frees: Vec<u64>,
    pub allocs: Vec<(u64, usize)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.frees.is_empty() && self.allocs.is_empty()
    }
}

pub(crate) enum Command {
    /// Allocations and frees with no command to ride on.
    Pending(Pending),
    Write {
        index: u64,
        offset: usize,
        data: Vec<u8>,
    },
    Read {
        index: u64,
        offset: usize,
        len: usize,
        reply: Sender<Result<Reading>>,
    },
    Copy {
        src: u64,
        src_offset: usize,
        dst: u64,
        dst_offset: usize,
        bytes: usize,
    },
    /// An op, after the allocations and frees queued before it.
    Run(Box<Op>, Pending),
    Sync {
        reply: Sender<Result<()>>,
    },
}

impl Command {
    /// What the command is, for the message if it panics: no allocation per command.
    fn name(&self) -> &'static str {
        match self {
            Command::Pending(_) => "alloc or free",
            Command::Write { .. } => "write",
            Command::Read { .. } => "read",
            Command::Copy { .. } => "copy",
            Command::Run(op, _) => op.static_name(),
            Command::Sync { .. } => "synchronize",
        }
    }
}

pub(crate) struct Worker {
    label: String,
    buffers: FxHashMap<u64, Storage>,
    /// Buffers whose allocation failed (reported once as out of memory), so later use of
    /// them gets a clear error rather than "unknown buffer".
    failed: FxHashSet<u64>,
    pool: BufferPool,
    scratch: Scratch,
    /// The first error raised since the last `read`/`synchronize`.
    pending: Option<Error>,
    health: Arc<Health>,
}

impl Worker {
    pub fn new(label: String, pool_cap: usize, health: Arc<Health>) -> Self {
        Worker {
            label,
            buffers: FxHashMap::default(),
            failed: FxHashSet::default(),
            pool: BufferPool::new(pool_cap),
            scratch: Scratch::default(),
            pending: None,
            health,
        }
    }

    /// Executes commands until every sender is gone (the device was dropped).
    pub fn run(mut self, rx: Receiver<Command>) {
        let spin = worker_spin();
        while let Some(cmd) = poll_then_wait(&rx, spin) {
            if let Some(reason) = self.health.lost.get() {
                let lost = Error::DeviceLost { device: self.label.clone(), detail: reason.clone() };
                match cmd {
                    Command::Sync { reply } => drop(reply.send(Err(lost))),
                    Command::Read { reply, .. } => drop(reply.send(Err(lost))),
                    _ => {}
                }
                continue;
            }
            let name = cmd.name();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.handle(cmd))) {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                let reason = format!("internal error in {name}: {what}");
                tracing::error!(device = %self.label, %reason, "cpu worker panicked; device lost");
                let _ = self.health.lost.set(reason);
            }
            self.scratch.trim();
        }
    }

    fn raise(&mut self, e: Error) {
        tracing::debug!(device = %self.label, error = %e, "deferred device error");
        self.pending.get_or_insert(e);
    }

    fn missing(&self, what: &str, index: u64) -> Error {
        let why = if self.failed.contains(&index) {
            "its allocation failed (out of memory)"
        } else {
            "it has no storage"
        };
        Error::Fault {
            op: what.into(),
            device: self.label.clone(),
            detail: format!("buffer {index} is unusable: {why}"),
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Pending(pending) => self.settle(pending),
            Command::Write { index, offset, data } => match self.buffers.get_mut(&index) {
                Some(s) => match s.as_bytes_mut().get_mut(offset..offset + data.len()) {
                    Some(dst) => dst.copy_from_slice(&data),
                    None => self.raise(range_fault(&self.label, "write", index)),
                },
                None => self.raise(self.missing("write", index)),
            },
            Command::Copy { src, src_offset, dst, dst_offset, bytes } => {
                if let Err(e) = self.copy(src, src_offset, dst, dst_offset, bytes) {
                    self.raise(e);
                }
            }
            Command::Read { index, offset, len, reply } => {
                if let Some(e) = self.pending.take() {
                    let _ = reply.send(Err(e));
                    return;
                }
                if len <= COPIED_READ_BYTES {
                    let copied = match self.buffers.get(&index) {
                        Some(s) => match s.as_bytes().get(offset..offset + len) {
                            Some(bytes) => Ok(Reading::Copied(bytes.to_vec())),
                            None => Err(range_fault(&self.label, "read", index)),
                        },
                        None => Err(self.missing("read", index)),
                    };
                    let _ = reply.send(copied);
                    return;
                }
                let Some(storage) = self.buffers.remove(&index) else {
                    let _ = reply.send(Err(self.missing("read", index)));
                    return;
                };
                let (back, returned) = bounded(1);
                match reply.send(Ok(Reading::Lent(Lent { storage, back }))) {
                    // The reader copies and sends the storage straight back.
                    Ok(()) => match returned.recv() {
                        Ok(storage) => {
                            self.buffers.insert(index, storage);
                        }
                        Err(_) => {
                            self.failed.insert(index);
                        }
                    },
                    // The reader is gone (it cannot be, it waits); keep the buffer.
                    Err(e) => {
                        if let Ok(Reading::Lent(lent)) = e.into_inner() {
                            self.buffers.insert(index, lent.storage);
                        }
                    }
                }
            }
            Command::Run(op, pending) => {
                self.settle(pending);
                if let Err(e) = self.run_op(&op) {
                    self.raise(e);
                }
            }
            Command::Sync { reply } => {
                let _ = reply.send(self.pending.take().map_or(Ok(()), Err));
            }
        }
    }

    /// Frees, then allocates, what the caller queued.
    fn settle(&mut self, pending: Pending) {
        if pending.is_empty() {
            return;
        }
        for index in pending.frees {
            self.failed.remove(&index);
            if let Some(s) = self.buffers.remove(&index) {
                self.pool.give(s.words);
            }
        }
        for (index, bytes) in pending.allocs {
            self.alloc(index, bytes);
        }
        self.health.cached.store(self.pool.cached_bytes(), Ordering::Relaxed);
    }

    fn alloc(&mut self, index: u64, bytes: usize) {
        let words = bytes.div_ceil(8);
        let storage = match self.pool.take(words) {
            Some(words) => Some(words),
            None => try_alloc_words(words).or_else(|| {
                // Cached buffers may be what is in the way.
                self.pool.clear();
                try_alloc_words(words)
            }),
        };
        match storage {
            Some(words) => {
                self.buffers.insert(index, Storage { words, bytes });
            }
            None => {
                tracing::warn!(device = %self.label, bytes, "cpu allocation failed");
                self.failed.insert(index);
                self.raise(Error::OutOfMemory {
                    op: "alloc".into(),
                    device: self.label.clone(),
                    detail: format!("could not allocate {bytes} bytes for buffer {index}"),
                });
            }
        }
    }

    fn copy(&mut self, src: u64, so: usize, dst: u64, d_o: usize, bytes: usize) -> Result<()> {
        if src == dst {
            let Some(s) = self.buffers.get_mut(&src) else {
                return Err(self.missing("copy", src));
            };
            let data = s.as_bytes_mut();
            if so.max(d_o) + bytes > data.len() {
                return Err(range_fault(&self.label, "copy", src));
            }
            data.copy_within(so..so + bytes, d_o);
            return Ok(());
        }
        let mut out = self.buffers.remove(&dst).ok_or_else(|| self.missing("copy", dst))?;
        let result = match self.buffers.get(&src) {
            Some(s) => match (
                s.as_bytes().get(so..so + bytes),
                out.as_bytes_mut().get_mut(d_o..d_o + bytes),
            ) {
                (Some(from), Some(to)) => {
                    to.copy_from_slice(from);
                    Ok(())
                }
                _ => Err(range_fault(&self.label, "copy", src)),
            },
            None => Err(self.missing("copy", src)),
        };
        self.buffers.insert(dst, out);
        result
    }

    fn run_op(&mut self, op: &Op) -> Result<()> {
        let index = op.output().buffer.index;
        if op.output().numel() == 0 {
            return Ok(());
        }
        let mut out = self.buffers.remove(&index).ok_or_else(|| self.missing(&op.name(), index))?;
        let mut env = Env { label: &self.label, scratch: &mut self.scratch };
        let result = kernels::execute(op, &self.buffers, &mut out.words, &mut env);
        self.buffers.insert(index, out);
        result
    }
}

/// How long the worker polls its empty queue before it sleeps.
///
/// A caller building a step sends a small op every few microseconds; waking a sleeping
/// worker cost the caller a futex call each time (a third of a small model's step went to
/// waking and sleeping). Polling costs only the worker's own core for the gap, and after the
/// first stretch it yields between polls, so a busy machine's other threads get the core.
/// On a single core the poll would take the core the caller needs, so there it is zero.
///
/// Callers waiting for a read or `synchronize` do not poll: their wait may cover a kernel
/// that runs on every core, and polling took a core from it (a 256² matmul and its
/// `synchronize`: 0.20 -> 0.30 ms with a 200 µs poll).
pub(crate) fn worker_spin() -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 { SPIN_WINDOW } else { Duration::ZERO }
}

const SPIN_WINDOW: Duration = Duration::from_micros(200);

/// The part of the window spent in busy polls before polls start yielding the core.
const BUSY_POLL: Duration = Duration::from_micros(20);

/// The next message on `rx`, polling for up to `spin` before sleeping on it; `None` once
/// every sender is gone.
fn poll_then_wait<T>(rx: &Receiver<T>, spin: Duration) -> Option<T> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                let waited = start.elapsed();
                if waited >= spin {
                    return rx.recv().ok();
                }
                if waited < BUSY_POLL {
                    for _ in 0..32 {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

fn range_fault(label: &str, what: &str, index: u64) -> Error {
    Error::Fault {
        op: what.into(),
        device: label.into(),
        detail: format!("byte range outside buffer {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId, ErrorKind, Layout, View};

    /// A kernel panic (here forced by an op the device would have refused) loses the device
    /// instead of killing the worker or hanging its callers.
    #[test]
    fn a_panicking_kernel_loses_the_device() {
        let health = Arc::new(Health::default());
        let worker = Worker::new("cpu:0".into(), 1 << 20, health.clone());
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || worker.run(rx));
        let id = DeviceId::fresh();
        let view = |index, n| {
            View::new(BufferId { device: id, index }, Layout::contiguous([n]), DType::F32)
        };
        let allocs = vec![(0, 8), (1, 400)];
        tx.send(Command::Pending(Pending { frees: Vec::new(), allocs })).unwrap();
        let op = Op::Copy { input: view(0, 100), out: view(1, 100) };
        tx.send(Command::Run(Box::new(op), Pending::default())).unwrap();
        let (reply, answer) = bounded(1);
        tx.send(Command::Sync { reply }).unwrap();
        let err = answer.recv().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeviceLost);
        assert!(health.lost.get().is_some_and(|r| r.contains("copy")));
        drop(tx);
        thread.join().unwrap();
    }
}
