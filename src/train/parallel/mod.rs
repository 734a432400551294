//! Heterogeneous data-parallel training: one model replica per device, each step's global
//! batch cut into shares so that unlike devices finish together, and a step that survives
//! the devices that fail during it.
//!
//! Each device's step time is modelled as `fixed + per_sample · n` (see
//! [`plan::Linear`](crate::plan::Linear)), first from its calibrated profile, then from what
//! its shares really take; the shares are the planner's equal-finish split of the batch.
//! Every replica returns the gradient of its rows' summed losses divided by the global batch, so
//! adding the shares' gradients (in row order, on the first device) gives the gradient of
//! the whole batch's mean loss. A replica sends each parameter's gradient to the first
//! device as soon as its backward pass has finished it (see `collect`), so a caller can
//! start on the last layers' gradients (an all-reduce across processes) while the rest
//! are still being computed. One optimizer updates that master copy, and a replica
//! copies the new values before it next gets rows: replicas never drift apart, whatever
//! their arithmetic.
//!
//! Failures: a share that returns a device fault is retried on its device a bounded number
//! of times, then the device is evicted and the share's rows are re-planned over the
//! others; a share that does not answer by its watchdog deadline (a multiple of its
//! predicted time) evicts its device at once; a device that is grossly slower than
//! predicted several steps in a row is evicted too. The step's result is the same as
//! without the fault. Evicted devices can be probed and re-admitted, and new ones can join.

mod collect;
mod gradients;
mod shares;
mod worker;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

pub use crate::fleet::FaultPolicy;
pub use crate::fleet::FleetEvent;
use crate::fleet::{Follower, Membership};
pub(crate) use shares::ranges;
use shares::{by_weights, prior};
use worker::Worker;
pub(crate) use worker::panic_message;

use super::nn::Ctx;
use super::optim::{LossScaler, Optimizer, clip_grad_norm};
use super::{Grads, Param, ParamStore, Var};
use crate::plan::{DeviceProfile, Linear, Trace, equal_finish, makespan};
use crate::{DeviceRef, Error, Result};

/// How often (in steps) the split-or-whole choice not taken is measured again.
pub const PROBE_EVERY: u64 = 50;

struct Replica<M> {
    device: DeviceRef,
    label: String,
    model: Arc<M>,
    params: Vec<Param>,
    /// Calibrated time of one kernel launch.
    latency: f64,
    /// Step time while the other devices run too (they may share its cores or host link).
    cost: Linear,
    /// Step time when it ran the whole batch by itself; `None` until it has.
    alone: Option<Linear>,
    /// Its parameters lag the master's: copied when it next gets rows, so a device the
    /// split leaves out costs no transfers.
    stale: bool,
    /// Steps in a row it was grossly slower than predicted.
    strikes: u32,
    worker: Worker,
}

/// What one device did in a step (one entry per share; a re-planned step can give a device
/// two).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceStep {
    pub device: String,
    /// Its rows of the global batch.
    pub rows: Range<usize>,
    pub predicted_s: f64,
    /// Forward, backward and the gradients' trip to the master device.
    pub measured_s: f64,
}

/// The first half of a step ([`DataParallel::gradients`]): the summed gradients, by master
/// parameter id, on the master device.
pub struct Gradients {
    pub grads: Grads,
    /// This part's loss: summed over its rows, divided by the global batch.
    pub loss: f64,
    pub devices: Vec<DeviceStep>,
    pub events: Vec<FleetEvent>,
    /// Seconds until the last share answered (the local fleet's forward and backward;
    /// buckets handed over after this were not overlapped).
    pub computed_s: f64,
    started: Instant,
}

/// One step, as [`DataParallel::step`] ran it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub step: u64,
    /// The mean loss over the global batch.
    pub loss: f64,
    /// True when the update was skipped (loss scaling found an overflow).
    pub skipped: bool,
    /// The gradients' global norm before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
    pub devices: Vec<DeviceStep>,
    /// Retries and evictions during this step.
    pub events: Vec<FleetEvent>,
    /// The whole step: shares in parallel, gradient sum, update.
    pub secs: f64,
}

impl StepReport {
    /// `cpu:0 48 (1.2 ms) | vulkan:0 16 (1.3 ms)`, for a progress line.
    pub fn shares_line(&self) -> String {
        let parts: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{} {} ({:.1} ms)", d.device, d.rows.len(), d.measured_s * 1e3))
            .collect();
        parts.join(" | ")
    }
}

type Build<M> = Arc<dyn Fn(&ParamStore) -> Result<M> + Send + Sync>;

/// Model replicas on several devices trained as one.
pub struct DataParallel<M> {
    /// The devices taking shares; the first holds the master copy and is never evicted.
    replicas: Vec<Replica<M>>,
    evicted: Vec<Replica<M>>,
    build: Build<M>,
    seed: u64,
    policy: FaultPolicy,
    /// The fleet's record of who is in, when built for a fleet.
    membership: Option<Follower>,
    /// Fixed weights by device label instead of the cost model.
    fixed_split: Option<Vec<(String, f64)>>,
    /// Dynamic loss scaling (f16 compute).
    scaler: Option<LossScaler>,
    /// Clip the summed gradients to this global norm before the update.
    max_grad_norm: Option<f64>,
    /// Shares and fleet events since `start_trace`, timed from its origin.
    trace: Option<(Instant, Trace)>,
    step: u64,
    /// Tags shares, so a late message from an abandoned one is recognised.
    next_tag: u64,
}

fn invalid(op: &str, device: &str, detail: String) -> Error {
    Error::InvalidArgument { op: op.into(), device: device.into(), detail }
}

impl<M: Send + Sync + 'static> DataParallel<M> {
    /// Builds one replica per device with `build` (same seed: the same initial values on
    /// every device). `profiles` (from [`Calibration`](crate::plan::Calibration)) give the
    /// first step's split; later steps learn from measured times. The first device holds
    /// the master parameters and the optimizer state: pick one that does not fail (the
    /// CPU, which the fleet lists first).
    pub fn new(
        devices: Vec<(DeviceRef, DeviceProfile)>,
        seed: u64,
        build: impl Fn(&ParamStore) -> Result<M> + Send + Sync + 'static,
    ) -> Result<DataParallel<M>> {
        if devices.is_empty() {
            return Err(invalid("DataParallel::new", "-", "no devices to train on".into()));
        }
        let mut dp = DataParallel {
            replicas: Vec::with_capacity(devices.len()),
            evicted: Vec::new(),
            build: Arc::new(build),
            seed,
            policy: FaultPolicy::default(),
            membership: None,
            fixed_split: None,
            scaler: None,
            max_grad_norm: None,
            trace: None,
            step: 0,
            next_tag: 0,
        };
        for (device, profile) in devices {
            let replica = dp.replica(device, &profile)?;
            dp.replicas.push(replica);
        }
        dp.replicas[0].stale = false;
        Ok(dp)
    }

    /// One replica per device of `fleet`, with profiles from `calibration` (loaded, or
    /// measured and cached).
    pub fn for_fleet(
        fleet: &crate::Fleet,
        calibration: &crate::plan::Calibration,
        seed: u64,
        build: impl Fn(&ParamStore) -> Result<M> + Send + Sync + 'static,
    ) -> Result<DataParallel<M>> {
        let fleet_devices = fleet.devices();
        let devices: Vec<&dyn crate::Device> = fleet_devices.iter().map(|d| &**d).collect();
        let profiles = calibration.load_or_measure_all(&devices, false)?;
        let dp = DataParallel::new(fleet_devices.into_iter().zip(profiles).collect(), seed, build)?;
        Ok(dp.with_membership(fleet.membership().clone()))
    }

    /// Shares `membership` (a fleet's, [`Fleet::membership`](crate::Fleet::membership)):
    /// this job's evictions and re-admissions are recorded there, and before each step a
    /// replica whose device is out (another scheduler evicted it) is evicted here too.
    pub fn with_membership(mut self, membership: Membership) -> DataParallel<M> {
        self.membership = Some(Follower::new(membership));
        self
    }

    /// Evicts the replicas whose devices the shared membership has out, when it changed
    /// since the last look; the events say so.
    fn follow_membership(&mut self) -> Result<Vec<FleetEvent>> {
        let Some(membership) = self.membership.as_mut().and_then(Follower::changed) else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        while let Some((i, why)) = self
            .replicas
            .iter()
            .enumerate()
            .find_map(|(i, r)| membership.why_out(&r.label).map(|why| (i, why)))
        {
            events.push(self.evict(i, format!("out of the fleet: {why}"), None)?);
        }
        Ok(events)
    }

    fn replica(&self, device: DeviceRef, profile: &DeviceProfile) -> Result<Replica<M>> {
        let label = device.info().label();
        if self.replicas.iter().chain(&self.evicted).any(|r| r.label == label) {
            return Err(invalid(
                "DataParallel",
                &label,
                "this device already has a replica".into(),
            ));
        }
        let store = ParamStore::new(&device, self.seed);
        let model = Arc::new((self.build)(&store)?);
        let params = store.params();
        if let Some(master) = self.replicas.first() {
            let want: Vec<&str> = master.params.iter().map(|p| p.name()).collect();
            let got: Vec<&str> = params.iter().map(|p| p.name()).collect();
            if want != got {
                return Err(invalid(
                    "DataParallel",
                    &label,
                    "build made different parameters on this device".into(),
                ));
            }
        }
        let weights: usize = params.iter().map(|p| p.value().numel()).sum();
        Ok(Replica {
            worker: Worker::start(&label)?,
            label,
            device,
            model,
            params,
            latency: profile.latency_s,
            cost: prior(profile, weights),
            alone: None,
            stale: true,
            strikes: 0,
        })
    }

    /// The master parameters (on the first device): hand these to the optimizer.
    pub fn params(&self) -> &[Param] {
        &self.replicas[0].params
    }

    /// The master model.
    pub fn model(&self) -> &M {
        &self.replicas[0].model
    }

    /// The devices taking shares, master first.
    pub fn devices(&self) -> Vec<DeviceRef> {
        self.replicas.iter().map(|r| r.device.clone()).collect()
    }

    /// Labels of the evicted devices.
    pub fn evicted(&self) -> Vec<String> {
        self.evicted.iter().map(|r| r.label.clone()).collect()
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn fault_policy(&self) -> &FaultPolicy {
        &self.policy
    }

    pub fn set_fault_policy(&mut self, policy: FaultPolicy) {
        self.policy = policy;
    }

    /// Records every share (a slice on its device's track) and every retry, eviction,
    /// re-admission and join (instants) from now on, for [`take_trace`](Self::take_trace).
    pub fn start_trace(&mut self) {
        self.trace = Some((Instant::now(), Trace::default()));
    }

    /// What was recorded since [`start_trace`](Self::start_trace) (Chrome trace events via
    /// [`Trace::to_json`] / [`Trace::write`]); recording stops.
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.trace.take().map(|(_, t)| t)
    }

    fn trace_event(&mut self, event: &FleetEvent) {
        if let Some((origin, trace)) = &mut self.trace {
            trace.push_fleet_event(event, origin.elapsed());
        }
    }

    /// Continues counting from `step` (a resumed job): dropout masks and the probe schedule
    /// follow the step number. Parameters come from the checkpoint (through
    /// [`params`](Self::params)); every other replica copies them before its next share.
    pub fn resume_at(&mut self, step: u64) {
        self.step = step;
        self.mark_stale();
    }

    /// Split every batch by these weights (one per current device, in
    /// [`devices`](Self::devices) order) instead of by predicted speed; `None` returns to
    /// the cost model. A device evicted later simply drops out of the weights.
    pub fn set_fixed_split(&mut self, weights: Option<Vec<f64>>) -> Result<()> {
        self.fixed_split = match weights {
            None => None,
            Some(w) => {
                if w.len() != self.replicas.len() || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(invalid(
                        "DataParallel::set_fixed_split",
                        "-",
                        format!("{w:?}: need {} finite weights ≥ 0", self.replicas.len()),
                    ));
                }
                Some(self.replicas.iter().map(|r| r.label.clone()).zip(w).collect())
            }
        };
        Ok(())
    }

    /// Scales every loss by the scaler's factor before backward and skips the update of a
    /// step whose gradients overflow (f16 training); `None` turns scaling off.
    /// A scaler whose fields make no sense (see [`LossScaler::check`]) is an `Err`.
    pub fn set_loss_scaler(&mut self, scaler: Option<LossScaler>) -> Result<()> {
        if let Some(s) = &scaler {
            s.check()?;
        }
        self.scaler = scaler;
        Ok(())
    }

    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// Clips the combined gradients to this global L2 norm before each update.
    /// A bound that is not finite or is negative is an `Err`.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) -> Result<()> {
        if let Some(max) = max_norm
            && !(max.is_finite() && max >= 0.0)
        {
            return Err(invalid(
                "DataParallel::set_max_grad_norm",
                &self.replicas[0].label,
                format!("max norm {max}: need a finite value ≥ 0"),
            ));
        }
        self.max_grad_norm = max_norm;
        Ok(())
    }

    /// The per-device cost model the next split will use: (label, fixed s, s per sample).
    pub fn costs(&self) -> Vec<(String, f64, f64)> {
        self.replicas.iter().map(|r| (r.label.clone(), r.cost.fixed, r.cost.per_unit)).collect()
    }

    /// The rows of a `batch` each current device gets next step.
    ///
    /// The equal-finish split of the cost model, unless the best single device is predicted
    /// to be within [`MIN_GAIN`](crate::plan::MIN_GAIN) of it: devices that share cores
    /// (the CPU and lavapipe, simulated chips) slow each other down, so a split must prove
    /// itself against the best device running alone. That device's alone time is measured
    /// by giving it a whole batch (step 1, and every [`PROBE_EVERY`] steps the choice not
    /// taken is tried again).
    pub fn split(&self, batch: usize) -> Vec<Range<usize>> {
        ranges(&self.shares(batch), 0)
    }

    fn shares(&self, batch: usize) -> Vec<usize> {
        match &self.fixed_split {
            Some(weights) => {
                let lookup: HashMap<&str, f64> =
                    weights.iter().map(|(l, w)| (l.as_str(), *w)).collect();
                let w: Vec<f64> = self
                    .replicas
                    .iter()
                    .map(|r| lookup.get(r.label.as_str()).copied().unwrap_or(0.0))
                    .collect();
                by_weights(&w, batch)
            }
            None => self.planned_shares(batch),
        }
    }

    fn planned_shares(&self, batch: usize) -> Vec<usize> {
        let costs: Vec<Linear> = self.replicas.iter().map(|r| r.cost).collect();
        let split = equal_finish(&costs, batch);
        if split.iter().sum::<usize>() != batch {
            // No usable cost model (uncalibrated devices): even split.
            return by_weights(&vec![1.0; costs.len()], batch);
        }
        if split.iter().filter(|&&n| n > 0).count() < 2 {
            return split;
        }
        // The best device alone, by what it measured alone where it has.
        let alone_time = |r: &Replica<M>| r.alone.unwrap_or(r.cost).at(batch);
        let Some((best, best_time)) = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (i, alone_time(r)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return split;
        };
        let mut whole = vec![0; self.replicas.len()];
        whole[best] = batch;
        if self.replicas[best].alone.is_none() {
            // Never measured alone: find out (from step 1; step 0 measures the split).
            return if self.step >= 1 { whole } else { split };
        }
        let probe_due = self.step > 0 && self.step % PROBE_EVERY == 1;
        let split_pays = makespan(&costs, &split) < best_time * (1.0 - crate::plan::MIN_GAIN);
        if split_pays != probe_due { split } else { whole }
    }

    /// One training step over a global batch of `batch` rows. `loss` computes, on a
    /// replica's device, the loss of each of rows `rows` of the batch: a `[rows.len()]`
    /// tensor, or `[rows.len(), ...]` (per row and token, say; use
    /// [`Reduction::None`](super::nn::Reduction::None)). The step sums it and divides by
    /// `batch`, so the update is the same however the batch was cut; a loss whose first dim
    /// is not the rows (one already reduced over them) is an `Err`.
    ///
    /// `loss` runs on the replicas' own threads, so it owns (or shares through `Arc`) the
    /// data it reads. An error that is not a device fault (a shape mistake in `loss`) is
    /// returned as is, and so is a panic in `loss` (as [`Error::Panicked`], with nothing
    /// evicted); device faults are handled as the module documentation says, and the step
    /// fails only when the master device fails or no device is left.
    pub fn step<F>(
        &mut self,
        batch: usize,
        loss: F,
        optimizer: &mut dyn Optimizer,
    ) -> Result<StepReport>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        let gradients = self.gradients(0..batch, batch, loss)?;
        self.update(gradients, optimizer)
    }

    fn traced(&mut self, events: &[FleetEvent]) {
        for e in events {
            self.trace_event(e);
        }
    }

    /// The second half of a step: loss scaling, clipping and the optimizer's update of the
    /// master copy (from these gradients, or from several processes' sum of them).
    pub fn update(
        &mut self,
        gradients: Gradients,
        optimizer: &mut dyn Optimizer,
    ) -> Result<StepReport> {
        let Gradients { grads: mut summed, loss: total_loss, devices, mut events, started, .. } =
            gradients;
        let finite = match &mut self.scaler {
            Some(scaler) => scaler.unscale(&self.replicas[0].params, &mut summed)?,
            None => true,
        };
        let mut grad_norm = None;
        if finite {
            if let Some(max) = self.max_grad_norm {
                grad_norm = Some(clip_grad_norm(&self.replicas[0].params, &mut summed, max)?);
            }
            optimizer.step(&summed)?;
            self.mark_stale();
        } else {
            tracing::warn!(
                step = self.step,
                "gradients overflowed: update skipped, loss scale lowered"
            );
        }
        // Gross slowness evicts after the step, whose result is already complete.
        let strikes = self.policy.slow_strikes.max(1);
        while let Some(i) = self.replicas.iter().skip(1).position(|r| r.strikes >= strikes) {
            let reason =
                format!("slower than predicted ×{} for {strikes} steps", self.policy.slow_factor);
            events.push(self.evict(i + 1, reason, None)?);
        }
        self.traced(&events);
        self.step += 1;
        Ok(StepReport {
            step: self.step - 1,
            loss: total_loss,
            skipped: !finite,
            grad_norm,
            devices,
            events,
            secs: started.elapsed().as_secs_f64(),
        })
    }

    /// Moves replica `i` out of the fleet. The master cannot go: its parameters and the
    /// optimizer state are the only up-to-date copy. When the master ran out of memory,
    /// that error (with its device and bytes) is the step's: the chip is fine, the work
    /// was too big for it.
    fn evict(&mut self, i: usize, reason: String, cause: Option<Error>) -> Result<FleetEvent> {
        let label = self.replicas[i].label.clone();
        if i == 0
            && let Some(e) = cause.filter(|e| e.kind() == crate::ErrorKind::OutOfMemory)
        {
            return Err(e);
        }
        if i == 0 {
            self.record_out(&label, &reason);
            return Err(Error::DeviceLost {
                device: label,
                detail: format!(
                    "the master replica failed ({reason}); its parameters and optimizer state \
                     are lost: resume from the last checkpoint"
                ),
            });
        }
        tracing::warn!(device = %label, %reason, "evicting a device from data-parallel training");
        self.record_out(&label, &reason);
        let mut replica = self.replicas.remove(i);
        replica.stale = true;
        replica.strikes = 0;
        self.evicted.push(replica);
        if self.replicas.is_empty() {
            return Err(Error::DeviceLost { device: label, detail: "no device is left".into() });
        }
        Ok(FleetEvent::Evicted { device: label, reason })
    }

    /// Tells the shared membership, if any, that `label` is out (a no-op when it already is).
    fn record_out(&mut self, label: &str, reason: &str) {
        if let Some(membership) = &mut self.membership {
            membership.evict(label, reason);
        }
    }

    /// Probes every evicted device with a small op on a fresh thread (the old one may be
    /// stuck in a hung call) and re-admits those that answer correctly within the
    /// watchdog's minimum.
    pub fn readmit(&mut self) -> Vec<FleetEvent> {
        let mut events = Vec::new();
        let mut still = Vec::new();
        for mut replica in std::mem::take(&mut self.evicted) {
            // A fresh thread and a fresh copy of the model: the share the device was evicted
            // in may still be running on its old thread (a hang that ended), and must not
            // write into the parameters the next shares read.
            let answered = crate::fleet::answers(&replica.device, self.policy.watchdog_min);
            let rebuilt = answered
                .then(|| Worker::start(&replica.label).ok())
                .flatten()
                .and_then(|worker| Some((worker, self.rebuild(&replica.device)?)));
            if let Some((worker, (model, params))) = rebuilt {
                tracing::info!(device = %replica.label, "re-admitting a device");
                if let Some(membership) = &mut self.membership {
                    membership.readmit(&replica.label);
                }
                events.push(FleetEvent::Readmitted { device: replica.label.clone() });
                replica.worker = worker;
                replica.model = model;
                replica.params = params;
                replica.stale = true;
                self.replicas.push(replica);
            } else {
                still.push(replica);
            }
        }
        self.evicted = still;
        self.traced(&events);
        events
    }

    /// A new model and parameters on `device` (same seed and names as the master's), or
    /// `None` when building fails or makes other parameters.
    fn rebuild(&self, device: &DeviceRef) -> Option<(Arc<M>, Vec<Param>)> {
        let store = ParamStore::new(device, self.seed);
        let model = (self.build)(&store).ok()?;
        let params = store.params();
        let names = |ps: &[Param]| ps.iter().map(|p| p.name().to_string()).collect::<Vec<_>>();
        (names(&params) == names(&self.replicas[0].params)).then(|| (Arc::new(model), params))
    }

    /// Adds a device to the running job: a replica is built for it (same seed and names)
    /// and copies the master's values before its first share.
    pub fn join(&mut self, device: DeviceRef, profile: &DeviceProfile) -> Result<FleetEvent> {
        let replica = self.replica(device, profile)?;
        tracing::info!(device = %replica.label, "a device joins data-parallel training");
        let event = FleetEvent::Joined { device: replica.label.clone() };
        self.replicas.push(replica);
        self.trace_event(&event);
        Ok(event)
    }

    /// Marks every other replica as behind the master (it copies before its next share).
    fn mark_stale(&mut self) {
        for replica in &mut self.replicas[1..] {
            replica.stale = true;
        }
    }
}
