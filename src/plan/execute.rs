//! Running a plan: one thread per share, each driving its own device's queue, so the CPU
//! (on its own pool) and every GPU compute at the same time.
//!
//! A share on another device than the inputs' reads its operands to host memory first (all
//! shares do that before any kernel starts, so no read waits behind a kernel), uploads them,
//! runs its part, and writes its result into the output's place on the destination device.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use manychips_api::{BufferId, Device, Error, Layout, Op, Result, View};

use super::Stopwatch;
use super::cut::cut;
use super::packed;
use super::planned::{Phases, Plan};
use super::watchdog::{AbortOnDrop, Gate, Progress, Watch, given_up};
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

/// Runs `plan`'s shares of `op` on `devices` (one per share, in order); `op`'s inputs live on
/// `src` and its output on `dst`. Returns when the output is complete, or with a `Timeout`
/// naming the device that hangs when a share has not ended within `limit` (see
/// [`Watch::collect`]).
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
    let (results, timeout) = if let ([share], [device]) = (&plan.shares[..], devices)
        && same(device, src)
        && same(device, dst)
    {
        // Its own data, no thread to start (a whole small op would pay for it).
        let progress = Progress::new(true);
        let share = run_share(&part_of(share), device, src, dst, &Gate::new(1), start, &progress);
        (vec![Some(share)], None)
    } else {
        let gate = Arc::new(Gate::new(plan.shares.len()));
        let _release = AbortOnDrop(&gate);
        let (tx, rx) = channel();
        let mut progress = Vec::with_capacity(devices.len());
        for (k, (share, device)) in plan.shares.iter().zip(devices).enumerate() {
            let state = Arc::new(Progress::new(same(device, dst)));
            progress.push(state.clone());
            let (part, device, src, dst) =
                (part_of(share), device.clone(), src.clone(), dst.clone());
            let (share_gate, tx) = (gate.clone(), tx.clone());
            let name = format!("share {}", device.info().label());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let work = || run_share(&part, &device, &src, &dst, &share_gate, start, &state);
                let result = catch_unwind(AssertUnwindSafe(work))
                    .unwrap_or_else(|_| Err(panicked(&part, &device)));
                // The run may have stopped waiting: then nobody listens.
                let _ = tx.send((k, result));
            });
            if let Err(e) = spawned {
                // The process is out of threads: give up on the shares already started
                // (the gate is opened for them as `_release` drops).
                for p in &progress {
                    p.abandon();
                }
                return Err(Error::Fault {
                    op: op.name(),
                    device: devices[k].info().label(),
                    detail: format!("cannot start a thread for the share: {e}"),
                });
            }
        }
        drop(tx);
        let watch = Watch { progress: &progress, gate: &gate, devices, src, dst, op, limit };
        let collected = watch.collect(&rx, start);
        (collected.results, collected.timeout)
    };
    // A hung destination is not waited for again.
    let dst_hangs = timeout.as_ref().and_then(|e| e.device()) == Some(&dst.info().label());
    // Results placed on `dst` through a staging buffer are complete once it synchronizes.
    let mut first_error = timeout;
    if !dst_hangs && let Err(e) = dst.synchronize() {
        first_error.get_or_insert(e);
    }
    let mut timings = Vec::with_capacity(results.len());
    for result in results.into_iter().flatten() {
        match result {
            Ok((timing, staging)) => {
                timings.push(timing);
                for buffer in staging.into_iter().filter(|_| !dst_hangs) {
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

fn panicked(part: &Op, device: &DeviceRef) -> Error {
    Error::Fault {
        op: part.name(),
        device: device.info().label(),
        detail: "the thread running this device's work panicked".into(),
    }
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
    gate: &Gate,
    start: Instant,
    progress: &Progress,
) -> ShareResult {
    if !progress.started() {
        return Err(given_up(part, device));
    }
    let (on_src, on_dst) = (same(device, src), same(device, dst));
    let gathered: Result<Vec<Vec<u8>>> = if on_src {
        Ok(Vec::new())
    } else {
        // Caught here, not only around the share: a panic must not keep it from the gate.
        let read = || part.inputs().into_iter().map(|v| gather(&**src, v)).collect();
        catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|_| Err(panicked(part, src)))
    };
    // Every share passes the gate, even a failed one, or the others would wait for ever.
    if !progress.working() || !gate.arrive() {
        return Err(given_up(part, device));
    }
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
    if progress.abandoned() {
        return Err(given_up(part, device));
    }
    let t = Instant::now();
    // The kernel's time as the planner learns it: a simulated chip's on its own clock.
    let clock = Stopwatch::start(&**device);
    device.run(&local)?;
    device.synchronize()?;
    timing.compute = (since(t), Duration::from_secs_f64(clock.secs(&**device)));

    let t = Instant::now();
    let mut left_on_dst = Vec::new();
    if let Some(buffer) = staged {
        let mut bytes = vec![0u8; out_bytes];
        device.read(buffer, 0, &mut bytes)?;
        // A share the run gave up on (and re-planned) must not overwrite the result later.
        if !progress.placing() {
            return Err(given_up(part, device));
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
