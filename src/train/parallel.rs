//! Heterogeneous data-parallel training: one model replica per device, each step's global
//! batch cut into shares so that unlike devices finish together.
//!
//! Each device's step time is modelled as `fixed + per_sample · n` (see
//! [`plan::Linear`](crate::plan::Linear)), first from its calibrated profile, then from what
//! its steps really take; the shares are the planner's equal-finish split of the batch.
//! Every replica returns the gradient of its *summed* loss divided by the global batch, so
//! adding the replicas' gradients gives exactly the gradient of the whole batch's mean loss.
//! The sum is formed on the first device in a fixed order, one optimizer updates that
//! master copy, and the new values are copied to every other replica: replicas never drift
//! apart, whatever their arithmetic.

use std::ops::Range;
use std::time::Instant;

use super::nn::Ctx;
use super::optim::{LossScaler, Optimizer, clip_grad_norm};
use super::{Grads, Param, ParamStore, Var, VarId};
use crate::plan::{DeviceProfile, Linear, equal_finish, makespan};
use crate::{DeviceRef, Error, Result};

/// How strongly a new measurement moves a device's per-sample cost (as the planner learns).
const LEARNING_RATE: f64 = crate::plan::LEARNING_RATE;

/// Kernel launches per graph node over a step: forward, backward (about two per node) and
/// the share of the optimizer and transfers. Only the first step's prior uses it.
const LAUNCHES_PER_NODE: f64 = 3.0;

/// How often (in steps) the split-or-whole choice not taken is measured again.
pub const PROBE_EVERY: u64 = 50;

/// Graph nodes assumed before the first step has counted them.
const FIRST_GUESS_NODES: usize = 20;

struct Replica<M> {
    device: DeviceRef,
    model: M,
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
}

/// A replica's finished share: its part of the loss, its gradients (already on the master
/// device), how long it took and how many graph nodes it had.
struct ShareDone {
    loss: f64,
    grads: Grads,
    secs: f64,
    nodes: usize,
}

/// What one device did in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceStep {
    pub device: String,
    /// Its rows of the global batch.
    pub rows: Range<usize>,
    pub predicted_s: f64,
    /// Forward, backward and the gradients' trip to the master device.
    pub measured_s: f64,
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
    /// The whole step: shares in parallel, gradient sum, update, broadcast.
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

/// Model replicas on several devices trained as one.
pub struct DataParallel<M> {
    replicas: Vec<Replica<M>>,
    /// Fixed weights instead of the cost model (tests, or a user who knows better).
    fixed_split: Option<Vec<f64>>,
    /// Dynamic loss scaling (f16 compute).
    scaler: Option<LossScaler>,
    /// Clip the summed gradients to this global norm before the update.
    max_grad_norm: Option<f64>,
    step: u64,
}

impl<M: Sync> DataParallel<M> {
    /// Builds one replica per device with `build` (same seed: the same initial values on
    /// every device). `profiles` (from [`Calibration`](crate::plan::Calibration)) give the
    /// first step's split; later steps learn from measured times. The first device holds
    /// the master parameters and the optimizer state.
    pub fn new(
        devices: Vec<(DeviceRef, DeviceProfile)>,
        seed: u64,
        build: impl Fn(&ParamStore) -> Result<M>,
    ) -> Result<DataParallel<M>> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument {
                op: "DataParallel::new".into(),
                device: "-".into(),
                detail: "no devices to train on".into(),
            });
        }
        let mut replicas = Vec::with_capacity(devices.len());
        for (device, profile) in devices {
            let store = ParamStore::new(&device, seed);
            let model = build(&store)?;
            let params = store.params();
            let weights: usize = params.iter().map(|p| p.value().numel()).sum();
            // 6 flops per weight per sample (forward 2, backward 4) at the matmul rate the
            // device keeps while the others run.
            let rate = profile.matmul_rate_concurrent.unwrap_or(profile.peak_matmul_rate());
            let per_sample = if rate > 0.0 { 6.0 * weights as f64 / rate } else { f64::INFINITY };
            let latency = profile.latency_s;
            let cost =
                Linear { fixed: latency * launches(FIRST_GUESS_NODES), per_unit: per_sample };
            replicas.push(Replica {
                device,
                model,
                params,
                latency,
                cost,
                alone: None,
                stale: true,
            });
        }
        let names: Vec<&str> = replicas[0].params.iter().map(|p| p.name()).collect();
        for r in &replicas[1..] {
            let other: Vec<&str> = r.params.iter().map(|p| p.name()).collect();
            if other != names {
                return Err(Error::InvalidArgument {
                    op: "DataParallel::new".into(),
                    device: r.device.info().label(),
                    detail: "build made different parameters on different devices".into(),
                });
            }
        }
        let mut dp = DataParallel {
            replicas,
            fixed_split: None,
            scaler: None,
            max_grad_norm: None,
            step: 0,
        };
        dp.replicas[0].stale = false;
        Ok(dp)
    }

    /// One replica per device of `fleet`, with profiles from `calibration` (loaded, or
    /// measured and cached).
    pub fn for_fleet(
        fleet: &crate::Fleet,
        calibration: &crate::plan::Calibration,
        seed: u64,
        build: impl Fn(&ParamStore) -> Result<M>,
    ) -> Result<DataParallel<M>> {
        let devices: Vec<&dyn crate::Device> = fleet.devices().iter().map(|d| &**d).collect();
        let profiles = calibration.load_or_measure_all(&devices, false)?;
        DataParallel::new(fleet.devices().iter().cloned().zip(profiles).collect(), seed, build)
    }

    /// The master parameters (on the first device): hand these to the optimizer.
    pub fn params(&self) -> &[Param] {
        &self.replicas[0].params
    }

    /// The master model.
    pub fn model(&self) -> &M {
        &self.replicas[0].model
    }

    pub fn devices(&self) -> Vec<DeviceRef> {
        self.replicas.iter().map(|r| r.device.clone()).collect()
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Continues counting from `step` (a resumed job): dropout masks and the probe schedule
    /// follow the step number. Parameters come from the checkpoint (through
    /// [`params`](Self::params)); every other replica copies them before its next share.
    pub fn resume_at(&mut self, step: u64) {
        self.step = step;
        self.broadcast();
    }

    /// Split every batch by these weights (one per device) instead of by predicted speed;
    /// `None` returns to the cost model.
    pub fn set_fixed_split(&mut self, weights: Option<Vec<f64>>) -> Result<()> {
        if let Some(w) = &weights
            && (w.len() != self.replicas.len() || w.iter().any(|x| !x.is_finite() || *x < 0.0))
        {
            return Err(Error::InvalidArgument {
                op: "DataParallel::set_fixed_split".into(),
                device: "-".into(),
                detail: format!("{w:?}: need {} finite weights ≥ 0", self.replicas.len()),
            });
        }
        self.fixed_split = weights;
        Ok(())
    }

    /// Scales every loss by the scaler's factor before backward and skips the update of a
    /// step whose gradients overflow (f16 training); `None` turns scaling off.
    pub fn set_loss_scaler(&mut self, scaler: Option<LossScaler>) {
        self.scaler = scaler;
    }

    /// Clips the combined gradients to this global L2 norm before each update.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) {
        self.max_grad_norm = max_norm;
    }

    pub fn loss_scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// The per-device cost model the next split will use: (label, fixed s, s per sample).
    pub fn costs(&self) -> Vec<(String, f64, f64)> {
        self.replicas
            .iter()
            .map(|r| (r.device.info().label(), r.cost.fixed, r.cost.per_unit))
            .collect()
    }

    /// The rows of a `batch` each device gets next step.
    ///
    /// The equal-finish split of the cost model, unless the best single device is predicted
    /// to be within [`MIN_GAIN`](crate::plan::MIN_GAIN) of it: devices that share cores
    /// (the CPU and lavapipe, simulated chips) slow each other down, so a split must prove
    /// itself against the best device running alone. That device's alone time is measured
    /// by giving it a whole batch (step 1, and every [`PROBE_EVERY`] steps the choice not
    /// taken is tried again).
    pub fn split(&self, batch: usize) -> Vec<Range<usize>> {
        let shares = match &self.fixed_split {
            Some(weights) => by_weights(weights, batch),
            None => self.planned_shares(batch),
        };
        let mut start = 0;
        shares
            .into_iter()
            .map(|n| {
                start += n;
                start - n..start
            })
            .collect()
    }

    fn planned_shares(&self, batch: usize) -> Vec<usize> {
        let costs: Vec<Linear> = self.replicas.iter().map(|r| r.cost).collect();
        let split = equal_finish(&costs, batch);
        if split.iter().sum::<usize>() != batch {
            // No usable cost model (uncalibrated devices): even split.
            return by_weights(&vec![1.0; costs.len()], batch);
        }
        let used = split.iter().filter(|&&n| n > 0).count();
        if used < 2 {
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
        let whole = {
            let mut shares = vec![0; self.replicas.len()];
            shares[best] = batch;
            shares
        };
        let probe_due = self.step > 0 && self.step % PROBE_EVERY == 1;
        let Some(_) = self.replicas[best].alone else {
            // Never measured alone: find out (from step 1; step 0 measures the split).
            return if self.step >= 1 { whole } else { split };
        };
        let split_time = makespan(&costs, &split);
        let split_pays = split_time < best_time * (1.0 - crate::plan::MIN_GAIN);
        match (split_pays, probe_due) {
            (true, false) | (false, true) => split,
            (true, true) | (false, false) => whole,
        }
    }

    /// One training step over a global batch of `batch` rows. `loss` computes, on a
    /// replica's device, the *summed* loss of rows `rows` of the batch (use
    /// [`Reduction::Sum`](super::nn::Reduction::Sum)); the step divides by `batch`.
    pub fn step<F>(
        &mut self,
        batch: usize,
        loss: F,
        optimizer: &mut dyn Optimizer,
    ) -> Result<StepReport>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Sync,
    {
        let start = Instant::now();
        let ctx = Ctx::train(self.step);
        let rows = self.split(batch);
        let master = self.replicas[0].device.clone();
        let loss_scale = self.scaler.as_ref().map_or(1.0, |s| s.scale);
        let scale = loss_scale / batch.max(1) as f64;
        let loss = &loss;
        let master_ref = &master;
        let master_params = &self.replicas[0].params;
        let results: Vec<Result<Option<ShareDone>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter()
                .zip(&rows)
                .map(|(replica, rows)| {
                    let rows = rows.clone();
                    s.spawn(move || {
                        if rows.is_empty() {
                            return Ok(None);
                        }
                        let t0 = Instant::now();
                        if replica.stale {
                            for (m, p) in master_params.iter().zip(&replica.params) {
                                p.set(m.value().to_device(&replica.device)?)?;
                            }
                        }
                        let ctx = ctx.rows_from(rows.start);
                        let total = loss(&replica.model, &replica.device, rows, &ctx)?;
                        let scaled = total.affine(scale, 0.0)?;
                        let nodes = scaled.graph_len();
                        let grads = scaled.backward()?;
                        let value = scaled.tensor().to_f64_vec()?.iter().sum::<f64>();
                        // Gradients travel to the master inside the timed part: they are
                        // part of what this device's share costs.
                        let mut moved = Grads::default();
                        for p in &replica.params {
                            if let Some(g) = grads.get(p.id()) {
                                moved.insert(p.id(), g.to_device(master_ref)?);
                            }
                        }
                        let secs = t0.elapsed().as_secs_f64();
                        Ok(Some(ShareDone { loss: value, grads: moved, secs, nodes }))
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&self.replicas)
                .map(|(h, r)| crate::plan::joined(h, "data-parallel share", &*r.device))
                .collect()
        });

        let mut devices = Vec::with_capacity(self.replicas.len());
        let mut total_loss = 0.0;
        let mut summed = Grads::default();
        let mut first_error = None;
        let master_ids: Vec<VarId> = self.replicas[0].params.iter().map(|p| p.id()).collect();
        for ((replica, rows), result) in self.replicas.iter_mut().zip(&rows).zip(results) {
            let ShareDone { loss: value, grads, secs, nodes } = match result {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            replica.stale = false;
            let whole = rows.len() == batch;
            let predicted =
                if whole { replica.alone.unwrap_or(replica.cost) } else { replica.cost };
            let predicted = predicted.at(rows.len());
            match (whole, &mut replica.alone) {
                (true, Some(alone)) => learn(alone, replica.latency, rows.len(), secs, nodes),
                (true, slot @ None) => {
                    let mut alone = replica.cost;
                    alone.per_unit = f64::INFINITY;
                    learn(&mut alone, replica.latency, rows.len(), secs, nodes);
                    *slot = Some(alone);
                }
                (false, _) => learn(&mut replica.cost, replica.latency, rows.len(), secs, nodes),
            }
            tracing::info!(
                step = self.step,
                device = %replica.device.info().label(),
                rows = rows.len(),
                predicted_ms = predicted * 1e3,
                measured_ms = secs * 1e3,
                "data-parallel share"
            );
            devices.push(DeviceStep {
                device: replica.device.info().label(),
                rows: rows.clone(),
                predicted_s: predicted,
                measured_s: secs,
            });
            total_loss += value / loss_scale;
            // Replica order is fixed, so the sum is the same every run.
            for (&master_id, p) in master_ids.iter().zip(&replica.params) {
                if let Some(g) = grads.get(p.id()) {
                    summed.add(master_id, g.clone())?;
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
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
            self.broadcast();
        } else {
            tracing::warn!(
                step = self.step,
                "gradients overflowed: update skipped, loss scale lowered"
            );
        }
        self.step += 1;
        Ok(StepReport {
            step: self.step - 1,
            loss: total_loss,
            skipped: !finite,
            grad_norm,
            devices,
            secs: start.elapsed().as_secs_f64(),
        })
    }

    /// Marks every other replica as behind the master (it copies before its next share).
    fn broadcast(&mut self) {
        for replica in &mut self.replicas[1..] {
            replica.stale = true;
        }
    }
}

/// Moves a device's per-sample cost towards what its last share took. The fixed part is
/// launches × latency, with launches counted from the step's graph.
fn learn(cost: &mut Linear, latency: f64, rows: usize, secs: f64, nodes: usize) {
    if rows == 0 || !secs.is_finite() {
        return;
    }
    let fixed = latency * launches(nodes);
    // A share never costs less than a thousandth of what was measured per row, even when
    // the launch estimate overshoots.
    let observed = ((secs - fixed) / rows as f64).max(secs * 1e-3 / rows as f64);
    let per_unit = if cost.per_unit.is_finite() {
        cost.per_unit + LEARNING_RATE * (observed - cost.per_unit)
    } else {
        observed
    };
    *cost = Linear { fixed, per_unit };
}

fn launches(nodes: usize) -> f64 {
    (nodes as f64 * LAUNCHES_PER_NODE).max(1.0)
}

/// Whole-row shares in proportion to `weights`, summing to `batch` (largest remainders).
fn by_weights(weights: &[f64], batch: usize) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        let mut shares = vec![0; weights.len()];
        if let Some(first) = shares.first_mut() {
            *first = batch;
        }
        return shares;
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / total * batch as f64).collect();
    let mut shares: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let mut left = batch - shares.iter().sum::<usize>();
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_whole_rows() {
        assert_eq!(by_weights(&[1.0, 1.0, 2.0], 8), vec![2, 2, 4]);
        assert_eq!(by_weights(&[1.0, 1.0, 1.0], 10).iter().sum::<usize>(), 10);
        assert_eq!(by_weights(&[0.0, 0.0], 5), vec![5, 0]);
        assert_eq!(by_weights(&[3.0, 0.0, 1.0], 4), vec![3, 0, 1]);
    }
}
