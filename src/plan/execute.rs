//! Running a plan: one thread per share, each driving its own device's queue, so the CPU
//! (on its own pool) and every GPU compute at the same time.
//!
//! A share on another device than the inputs' reads its operands to host memory first (all
//! shares do that before any kernel starts, so no read waits behind a kernel), uploads them,
//! runs its part, and writes its result into the output's place on the destination device.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use manychips_api::{BufferId, Device, Error, Layout, Op, Result, View};

use super::cut::cut;
use super::packed;
use super::planned::{Phases, Plan};
use crate::DeviceRef;

/// When each stage of one share started (relative to the run's start) and how long it took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub upload: (Duration, Duration),
    pub compute: (Duration, Duration),
    pub download: (Duration, Duration),
}

impl Timing {
    pub fn phases(&self) -> Phases {
        Phases { upload: self.upload.1, compute: self.compute.1, download: self.download.1 }
    }
}

/// A share's timing and the staging buffers it left on the destination, or its error.
type ShareResult = Result<(Timing, Vec<BufferId>)>;

/// Where a share is, so that a watchdog knows which device to blame for a hang: reading the
/// operands on the source, working on its own device, or placing its result on the
/// destination.
#[derive(Default)]
struct Progress {
    stage: AtomicU8,
    /// Set when the run gave up on this share: a late result must not be written.
    abandoned: AtomicBool,
}

const GATHERING: u8 = 0;
const WORKING: u8 = 1;
const PLACING: u8 = 2;

/// Runs `plan`'s shares of `op` on `devices` (one per share, in order); `op`'s inputs live on
/// `src` and its output on `dst`. Returns when the output is complete, or with a `Timeout`
/// naming the device that hangs when a share has not ended within `limit`.
///
/// A share that runs on the operands' own device with nothing to move runs on the calling
/// thread, like any tensor op (its backend's own deadlines apply). Every other share runs on
/// a thread of its own that the run can leave behind: a hung device cannot hang the caller.
pub fn run(
    plan: &Plan,
    op: &Op,
    devices: &[DeviceRef],
    src: &DeviceRef,
    dst: &DeviceRef,
    limit: Duration,
) -> Result<Vec<Timing>> {
    if op.output().numel() == 0 {
        return Ok(vec![Timing::default(); plan.shares.len()]);
    }
    let part_of = |share: &super::planned::Share| match plan.axis {
        Some(axis) => cut(op, axis, share.start, share.len),
        None => op.clone(),
    };
    let start = Instant::now();
    let results: Vec<ShareResult> = if let ([share], [device]) = (&plan.shares[..], devices)
        && same(device, src)
        && same(device, dst)
    {
        // Its own data, no thread to start (a whole small op would pay for it).
        let progress = Progress::default();
        vec![run_share(&part_of(share), device, src, dst, &Barrier::new(1), start, &progress)]
    } else {
        let barrier = Arc::new(Barrier::new(plan.shares.len()));
        let (tx, rx) = channel();
        let mut progress = Vec::with_capacity(devices.len());
        for (k, (share, device)) in plan.shares.iter().zip(devices).enumerate() {
            let state = Arc::new(Progress::default());
            progress.push(state.clone());
            let (part, device, src, dst) =
                (part_of(share), device.clone(), src.clone(), dst.clone());
            let (barrier, tx) = (barrier.clone(), tx.clone());
            let name = format!("share {}", device.info().label());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let work = || run_share(&part, &device, &src, &dst, &barrier, start, &state);
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                    .unwrap_or_else(|_| {
                        Err(Error::Fault {
                            op: part.name(),
                            device: device.info().label(),
                            detail: "the thread running this device's work panicked".into(),
                        })
                    });
                // The run may have stopped waiting: then nobody listens.
                let _ = tx.send((k, result));
            });
            if let Err(e) = spawned {
                // The process is out of threads. The shares already started stay parked
                // at the barrier; marked abandoned, none of them can write a result.
                for p in &progress {
                    p.abandoned.store(true, Ordering::SeqCst);
                }
                return Err(Error::Fault {
                    op: op.name(),
                    device: devices[k].info().label(),
                    detail: format!("cannot start a thread for the share: {e}"),
                });
            }
        }
        drop(tx);
        collect(rx, &progress, devices, src, dst, op, start + limit, limit)?
    };
    // Results placed on `dst` through a staging buffer are complete once it synchronizes.
    let finished = dst.synchronize();
    let mut timings = Vec::with_capacity(results.len());
    let mut first_error = finished.err();
    for result in results {
        match result {
            Ok((timing, staging)) => {
                timings.push(timing);
                for buffer in staging {
                    if let Err(e) = dst.free(buffer) {
                        tracing::warn!(error = %e, "planner: freeing a staging buffer failed");
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(timings),
    }
}

/// Every share's result, in share order, or a `Timeout` for the device that holds up the
/// first share still running at `deadline`.
#[allow(clippy::too_many_arguments)]
fn collect(
    rx: Receiver<(usize, ShareResult)>,
    progress: &[Arc<Progress>],
    devices: &[DeviceRef],
    src: &DeviceRef,
    dst: &DeviceRef,
    op: &Op,
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<ShareResult>> {
    let mut results: Vec<Option<ShareResult>> = (0..progress.len()).map(|_| None).collect();
    let mut left = progress.len();
    while left > 0 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((k, result)) => {
                results[k] = Some(result);
                left -= 1;
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if left == 0 {
        return Ok(results.into_iter().flatten().collect());
    }
    for p in progress {
        p.abandoned.store(true, Ordering::SeqCst);
    }
    let waiting: Vec<usize> = (0..progress.len()).filter(|&k| results[k].is_none()).collect();
    // A share still reading its operands means the source hangs (the others then wait for
    // it at the barrier); one placing its result, the destination; else its own device.
    let stages: Vec<u8> =
        waiting.iter().map(|&k| progress[k].stage.load(Ordering::SeqCst)).collect();
    let culprit = if stages.contains(&GATHERING) {
        src
    } else if let Some(i) = stages.iter().position(|&s| s == WORKING) {
        &devices[waiting[i]]
    } else {
        dst
    };
    Err(Error::Timeout {
        op: op.name(),
        device: culprit.info().label(),
        detail: format!("no answer within {limit:.2?} (the planner's watchdog)"),
    })
}

/// Buffers allocated on one device for one share, freed when the share is done or failed.
struct Scratch<'a> {
    device: &'a dyn Device,
    buffers: Vec<BufferId>,
}

impl Scratch<'_> {
    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        let buffer = self.device.alloc(bytes.max(1))?;
        self.buffers.push(buffer);
        Ok(buffer)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for &buffer in &self.buffers {
            if let Err(e) = self.device.free(buffer) {
                tracing::warn!(error = %e, "planner: freeing a scratch buffer failed");
            }
        }
    }
}

fn same(a: &DeviceRef, b: &DeviceRef) -> bool {
    a.info().id == b.info().id
}

/// One share. Returns its timing and the staging buffers left on `dst` (freed by the caller
/// once `dst` has synchronized).
fn run_share(
    part: &Op,
    device: &DeviceRef,
    src: &DeviceRef,
    dst: &DeviceRef,
    barrier: &Barrier,
    start: Instant,
    progress: &Progress,
) -> ShareResult {
    let (on_src, on_dst) = (same(device, src), same(device, dst));
    let gathered: Result<Vec<Vec<u8>>> = if on_src {
        Ok(Vec::new())
    } else {
        part.inputs().into_iter().map(|v| gather(&**src, v)).collect()
    };
    // Every share waits here, even a failed one, or the others would wait for ever.
    progress.stage.store(WORKING, Ordering::SeqCst);
    barrier.wait();
    let gathered = gathered?;
    let since = |t: Instant| t.duration_since(start);
    let mut timing = Timing::default();
    let mut scratch = Scratch { device: &**device, buffers: Vec::new() };
    let mut local = part.clone();

    let t = Instant::now();
    if !on_src {
        let inputs = part.inputs().len();
        for (view, bytes) in local.views_mut().into_iter().take(inputs).zip(&gathered) {
            let buffer = scratch.alloc(bytes.len())?;
            device.write(buffer, 0, bytes)?;
            let arrived = packed::arrived(view);
            *view = View::new(buffer, arrived, view.dtype);
        }
        device.synchronize()?;
    }
    timing.upload = (since(t), t.elapsed());

    let out = part.output().clone();
    let out_bytes = out.numel() * out.dtype.size_in_bytes();
    let staged = if on_dst {
        None
    } else {
        let buffer = scratch.alloc(out_bytes)?;
        let inputs = part.inputs().len();
        if let Some(view) = local.views_mut().into_iter().nth(inputs) {
            *view = View::new(buffer, Layout::contiguous(out.layout.shape.clone()), out.dtype);
        }
        Some(buffer)
    };
    let t = Instant::now();
    device.run(&local)?;
    device.synchronize()?;
    timing.compute = (since(t), t.elapsed());

    let t = Instant::now();
    let mut left_on_dst = Vec::new();
    if let Some(buffer) = staged {
        let mut bytes = vec![0u8; out_bytes];
        device.read(buffer, 0, &mut bytes)?;
        progress.stage.store(PLACING, Ordering::SeqCst);
        // A share the run gave up on (and re-planned) must not overwrite the result later.
        if progress.abandoned.load(Ordering::SeqCst) {
            return Err(Error::Timeout {
                op: part.name(),
                device: device.info().label(),
                detail: "finished after the planner's watchdog gave up on it".into(),
            });
        }
        place(&**dst, &out, &bytes, &mut left_on_dst)?;
    }
    timing.download = (since(t), t.elapsed());
    Ok((timing, left_on_dst))
}

/// The entries `view` reads on `src`, packed row-major (broadcast dims once) in host memory.
fn gather(src: &dyn Device, view: &View) -> Result<Vec<u8>> {
    let source = packed::source(view);
    let size = view.dtype.size_in_bytes();
    let mut bytes = vec![0u8; source.numel() * size];
    if bytes.is_empty() {
        return Ok(bytes);
    }
    if source.is_contiguous() {
        src.read(view.buffer, source.offset * size, &mut bytes)?;
        return Ok(bytes);
    }
    let mut scratch = Scratch { device: src, buffers: Vec::new() };
    let dense = scratch.alloc(bytes.len())?;
    let packed = View::new(dense, Layout::contiguous(source.shape.clone()), view.dtype);
    src.run(&Op::Copy { input: View::new(view.buffer, source, view.dtype), out: packed })?;
    src.read(dense, 0, &mut bytes)?;
    Ok(bytes)
}

/// Writes the row-major `bytes` of a part's result into its place `out` on `dst`: directly
/// where that place is one dense range, else through a staging buffer and a strided copy.
fn place(dst: &dyn Device, out: &View, bytes: &[u8], staging: &mut Vec<BufferId>) -> Result<()> {
    let size = out.dtype.size_in_bytes();
    if out.layout.is_contiguous() {
        return dst.write(out.buffer, out.layout.offset * size, bytes);
    }
    let buffer = dst.alloc(bytes.len())?;
    staging.push(buffer);
    dst.write(buffer, 0, bytes)?;
    let dense = View::new(buffer, Layout::contiguous(out.layout.shape.clone()), out.dtype);
    dst.run(&Op::Copy { input: dense, out: out.clone() })
}
