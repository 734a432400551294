//! Data parallelism across pipelines: several pipelines of one model (each with its own
//! devices and its own cut), the batch's rows shared among them by their speed, their
//! gradients added, and the first pipeline's optimizers updating a master copy that the
//! others copy before the next step, as `DataParallel` does for whole replicas. This is
//! what lets more devices than a model has layers take part, and what [`ReplicaPlan`]
//! plans at fleet scale.
//!
//! [`ReplicaPlan`]: super::ReplicaPlan

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use super::run::{Pipeline, PipelineReport};
use super::stage::{InputFn, LossFn};
use super::{Layered, Var};
use crate::plan::{Linear, equal_finish};
use crate::train::checkpoint::Snapshot;
use crate::train::parallel::{panic_message, ranges};
use crate::train::{Grads, Param};
use crate::{DeviceRef, Error, Result};

/// Pipelines of one model trained as one.
pub struct PipelineReplicas<M> {
    replicas: Vec<Pipeline<M>>,
    /// Per parameter name, the replica whose optimizers update it and keep its state,
    /// when the optimizer state is sharded (ZeRO stage 1).
    owners: Option<HashMap<String, usize>>,
}

/// What one step of the replicas did.
#[derive(Clone, Debug)]
pub struct ReplicasReport {
    /// The batch's mean loss.
    pub loss: f64,
    /// Each replica's rows of the batch.
    pub rows: Vec<Range<usize>>,
    /// The first replica's report: its stages' times, the gradients' norm.
    pub first: PipelineReport,
}

impl<M: Layered> PipelineReplicas<M> {
    /// Replicas of one model: each built from the same parameters (the same seed, or a
    /// restored checkpoint), each on its own devices. The first holds the master copy and
    /// the optimizer state that counts.
    pub fn new(replicas: Vec<Pipeline<M>>) -> Result<PipelineReplicas<M>> {
        let names = |p: &Pipeline<M>| {
            let mut names: Vec<String> = p.params().iter().map(|p| p.name().to_string()).collect();
            names.sort();
            names
        };
        let Some(first) = replicas.first() else {
            return Err(Error::InvalidArgument {
                op: "PipelineReplicas::new".into(),
                device: "-".into(),
                detail: "no replicas".into(),
            });
        };
        let want = names(first);
        if let Some(other) = replicas.iter().position(|r| names(r) != want) {
            return Err(Error::InvalidArgument {
                op: "PipelineReplicas::new".into(),
                device: replicas[other].input_device().info().label(),
                detail: format!("replica {other} has other parameters than replica 0"),
            });
        }
        Ok(PipelineReplicas { replicas, owners: None })
    }

    /// Shards the optimizer state over the replicas (ZeRO stage 1): each parameter is
    /// updated by one replica, which alone keeps its optimizer state, and the others copy
    /// the new value. The parameters are dealt in turn in the model's order, so every
    /// stage's state is shared about evenly whatever the cuts (what
    /// [`ReplicaPlan::search_sharded`](super::ReplicaPlan::search_sharded) prices). The
    /// updates are the unsharded ones: every replica's optimizers see the same summed,
    /// clipped gradients. Off by default (replica 0 keeps all state). Switched after
    /// steps were taken, the state moves to where it is now kept (through the host).
    pub fn shard_optimizer_state(&mut self, on: bool) -> Result<()> {
        let moving = match self.replicas[0].steps() {
            0 => None,
            _ => Some(self.snapshot(serde_json::Value::Null)?),
        };
        let count = self.replicas.len();
        let owners = on.then(|| {
            let params = self.replicas[0].params();
            params.iter().enumerate().map(|(i, p)| (p.name().to_string(), i % count)).collect()
        });
        // The new keepers first; the switch only once the state is where they expect it.
        if let Some(state) = moving {
            self.restore_for(owners.as_ref(), &state, Path::new("(the replicas' own state)"))?;
        }
        self.owners = owners;
        Ok(())
    }

    /// Puts back `snapshot` (from [`snapshot`](Self::snapshot), whatever the replicas,
    /// plans and sharding that wrote it): every replica's parameters, and the optimizer
    /// state where these replicas keep it (all on the first, or each parameter's on the
    /// replica that updates it when sharded). A snapshot that does not fit the model is an
    /// `Err` before any replica changes. The new optimizer state is made before the old
    /// goes: it needs room for both.
    pub fn restore(&mut self, snapshot: &Snapshot, path: &Path) -> Result<()> {
        let owners = self.owners.clone();
        self.restore_for(owners.as_ref(), snapshot, path)
    }

    /// [`restore`](Self::restore) with the optimizer state dealt as `owners` say (`None`:
    /// all on the first replica).
    fn restore_for(
        &mut self,
        owners: Option<&HashMap<String, usize>>,
        snapshot: &Snapshot,
        path: &Path,
    ) -> Result<()> {
        let names: HashSet<String> =
            self.replicas[0].params().iter().map(|p| p.name().to_string()).collect();
        let param_of = |tensor: &str| tensor.rsplit_once('.').map(|(param, _)| param.to_string());
        if let Some(stray) = snapshot
            .optimizer
            .iter()
            .find(|t| param_of(&t.name).is_none_or(|p| !names.contains(&p)))
        {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                detail: format!(
                    "holds optimizer state {}, of no parameter of the model",
                    stray.name
                ),
            });
        }
        let mut restored = Vec::with_capacity(self.replicas.len());
        for (r, replica) in self.replicas.iter().enumerate() {
            let keeps = |param: &str| match owners {
                None => r == 0,
                Some(owners) => owners.get(param) == Some(&r),
            };
            let optimizer = snapshot
                .optimizer
                .iter()
                .filter(|t| param_of(&t.name).is_some_and(|p| keeps(&p)))
                .cloned()
                .collect();
            let part = Snapshot { optimizer, ..snapshot.clone() };
            let shard = owners.is_some() || r > 0;
            restored.push(replica.restored_stages(&part, path, shard)?);
        }
        for (replica, stages) in self.replicas.iter_mut().zip(restored) {
            replica.install(stages, snapshot.step);
        }
        Ok(())
    }

    /// Every parameter (from the first replica) and all optimizer state (from whichever
    /// replica keeps it), by name: a checkpoint of the replicas.
    pub fn snapshot(&self, state: serde_json::Value) -> Result<Snapshot> {
        let mut snapshot = self.replicas[0].snapshot(state)?;
        if self.owners.is_some() {
            for replica in &self.replicas[1..] {
                snapshot.optimizer.extend(replica.snapshot(serde_json::Value::Null)?.optimizer);
            }
        }
        Ok(snapshot)
    }

    pub fn replicas(&self) -> &[Pipeline<M>] {
        &self.replicas
    }

    /// Each replica's rows of a batch of `batch`, at least its micro-batches: so that the
    /// replicas' predicted steps end together, as [`balanced_shares`] shares micro-batches
    /// (a replica cuts its rows into its plan's micro-batches, whose times scale with
    /// their rows: for replicas planned by [`ReplicaPlan`], rows in proportion to their
    /// micro-batches).
    ///
    /// [`balanced_shares`]: super::balanced_shares
    /// [`ReplicaPlan`]: super::ReplicaPlan
    pub fn split(&self, batch: usize) -> Result<Vec<Range<usize>>> {
        let costs: Vec<Linear> = self
            .replicas
            .iter()
            .map(|r| {
                let plan = r.plan();
                let rows = plan.costs().first().map_or(1, |l| l.rows.max(1));
                let passes = plan.predicted_step_s() - plan.sync_s();
                let per_row = passes / (plan.micro_batches * rows).max(1) as f64;
                Linear { fixed: plan.sync_s(), per_unit: if per_row > 0.0 { per_row } else { 1.0 } }
            })
            .collect();
        let mut shares = equal_finish(&costs, batch);
        // Every replica takes at least its micro-batches, from the largest share.
        for i in 0..shares.len() {
            let need = self.replicas[i].plan().micro_batches;
            while shares[i] < need {
                let Some(donor) = (0..shares.len())
                    .filter(|&j| j != i && shares[j] > self.replicas[j].plan().micro_batches)
                    .max_by_key(|&j| shares[j])
                else {
                    return Err(Error::InvalidArgument {
                        op: "PipelineReplicas::step".into(),
                        device: self.replicas[i].input_device().info().label(),
                        detail: format!(
                            "a batch of {batch} rows cannot give every replica its micro-batches"
                        ),
                    });
                };
                shares[donor] -= 1;
                shares[i] += 1;
            }
        }
        Ok(ranges(&shares, 0))
    }

    /// One step over a batch of `batch` rows, as [`Pipeline::step`]: each replica runs its
    /// rows on its own thread, the gradients are added in replica order where the first
    /// replica's are (its stages' devices, or their lodged state's hosts), its optimizers
    /// update the master copy, and the others copy it.
    pub fn step<I, L>(&mut self, batch: usize, input: I, loss: L) -> Result<ReplicasReport>
    where
        I: Fn(Range<usize>, &DeviceRef) -> Result<Var> + Sync,
        L: Fn(&Var, Range<usize>, &DeviceRef) -> Result<Var> + Sync,
        M: Send,
    {
        let started = Instant::now();
        let rows = self.split(batch)?;
        let (input, loss): (InputFn<'_>, LossFn<'_>) = (&input, &loss);
        let outcomes: Vec<std::thread::Result<Result<(Grads, f64)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .zip(&rows)
                .map(|(replica, rows)| {
                    let rows = rows.clone();
                    s.spawn(move || replica.gradients(rows, batch, input, loss))
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut parts = Vec::with_capacity(outcomes.len());
        for (r, outcome) in outcomes.into_iter().enumerate() {
            let part = outcome.unwrap_or_else(|panic| {
                Err(Error::Panicked {
                    op: format!("PipelineReplicas::step, replica {r}"),
                    detail: panic_message(panic.as_ref()),
                })
            })?;
            parts.push(part);
        }
        let loss: f64 = parts.iter().map(|(_, l)| l).sum();
        let mut grads = self.sum(parts.into_iter().map(|(g, _)| g).collect())?;
        let grad_norm = self.replicas[0].clip(&mut grads)?;
        match &self.owners {
            None => self.replicas[0].step_optimizers(&grads)?,
            Some(owners) => {
                // Each replica steps on its shard's gradients, under its own ids.
                let first = by_name(&self.replicas[0]);
                for (r, replica) in self.replicas.iter_mut().enumerate() {
                    let mut shard = Grads::default();
                    for param in replica.params().iter().filter(|p| owners[p.name()] == r) {
                        if let Some(g) = grads.get(first[param.name()].id()) {
                            let device = replica.update_device(param);
                            shard.insert(param.id(), g.to_device(&device)?);
                        }
                    }
                    replica.step_optimizers(&shard)?;
                }
            }
        }
        // Every replica copies each parameter from the replica that updated it.
        let values: Vec<HashMap<String, Param>> = self.replicas.iter().map(by_name).collect();
        for (r, replica) in self.replicas.iter_mut().enumerate() {
            for param in replica.params() {
                let owner = self.owners.as_ref().map_or(0, |o| o[param.name()]);
                if owner != r {
                    let value = values[owner][param.name()].value();
                    param.set(value.to_device(param.value().device())?)?;
                }
            }
            if self.owners.is_none() && r > 0 {
                replica.advance();
            }
        }
        let first = self.replicas[0].report(loss, grad_norm, started);
        Ok(ReplicasReport { loss, rows, first })
    }

    /// Every replica's gradients added, by parameter name, in replica order, where the
    /// first replica's are, under the first replica's ids.
    fn sum(&self, parts: Vec<Grads>) -> Result<Grads> {
        let mut parts = parts.into_iter();
        let mut total = parts.next().unwrap_or_default();
        let first: HashMap<String, Param> =
            self.replicas[0].params().into_iter().map(|p| (p.name().to_string(), p)).collect();
        for (part, replica) in parts.zip(&self.replicas[1..]) {
            for param in replica.params() {
                let Some(g) = part.get(param.id()) else { continue };
                let target = first[param.name()].id();
                // Where the first replica's gradient is: its parameter's master copy's
                // device (its stage's, or its lodged optimizer state's).
                let device = match total.get(target) {
                    Some(mine) => mine.device().clone(),
                    None => first[param.name()].value().device().clone(),
                };
                total.add(target, g.to_device(&device)?)?;
            }
        }
        Ok(total)
    }
}

/// A pipeline's parameters by name.
fn by_name<M: Layered>(pipeline: &Pipeline<M>) -> HashMap<String, Param> {
    pipeline.params().into_iter().map(|p| (p.name().to_string(), p)).collect()
}
