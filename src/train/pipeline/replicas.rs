//! Data parallelism across pipelines: several pipelines of one model (each with its own
//! devices and its own cut), the batch's rows shared among them by their speed, their
//! gradients added, and the first pipeline's optimizers updating a master copy that the
//! others copy before the next step, as `DataParallel` does for whole replicas. This is
//! what lets more devices than a model has layers take part, and what [`ReplicaPlan`]
//! plans at fleet scale.
//!
//! [`ReplicaPlan`]: super::ReplicaPlan

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use super::run::{Pipeline, PipelineReport};
use super::stage::{InputFn, LossFn};
use super::{Layered, Var};
use crate::plan::proportional;
use crate::train::parallel::{panic_message, ranges};
use crate::train::{Grads, Param};
use crate::{DeviceRef, Error, Result};

/// Pipelines of one model trained as one.
pub struct PipelineReplicas<M> {
    replicas: Vec<Pipeline<M>>,
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
        Ok(PipelineReplicas { replicas })
    }

    pub fn replicas(&self) -> &[Pipeline<M>] {
        &self.replicas
    }

    /// Each replica's rows of a batch of `batch`: in proportion to its throughput (one
    /// micro-batch per its slowest stage's time, as planned), at least its micro-batches.
    pub fn split(&self, batch: usize) -> Result<Vec<Range<usize>>> {
        let rates: Vec<f64> = self
            .replicas
            .iter()
            .map(|r| {
                let slowest = r.plan().stages.iter().map(|s| s.time()).fold(0.0, f64::max);
                if slowest > 0.0 { 1.0 / slowest } else { 1.0 }
            })
            .collect();
        let mut shares = proportional(&rates, batch).unwrap_or_else(|| vec![0; rates.len()]);
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
    /// rows on its own thread, the gradients are added in replica order on the first
    /// replica's devices, its optimizers update the master copy, and the others copy it.
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
        let Some((first, others)) = self.replicas.split_first_mut() else {
            return Err(Error::InvalidArgument {
                op: "PipelineReplicas::step".into(),
                device: "-".into(),
                detail: "no replicas".into(),
            });
        };
        let grad_norm = first.update(&mut grads)?;
        let master: HashMap<String, Param> =
            first.params().into_iter().map(|p| (p.name().to_string(), p)).collect();
        for replica in others {
            for param in replica.params() {
                let value = master[param.name()].value();
                param.set(value.to_device(param.value().device())?)?;
            }
            replica.advance();
        }
        let first = first.report(loss, grad_norm, started);
        Ok(ReplicasReport { loss, rows, first })
    }

    /// Every replica's gradients added, by parameter name, in replica order, on the first
    /// replica's devices, under the first replica's ids.
    fn sum(&self, parts: Vec<Grads>) -> Result<Grads> {
        let mut parts = parts.into_iter();
        let mut total = parts.next().unwrap_or_default();
        let first: HashMap<String, Param> =
            self.replicas[0].params().into_iter().map(|p| (p.name().to_string(), p)).collect();
        for (part, replica) in parts.zip(&self.replicas[1..]) {
            for param in replica.params() {
                let Some(g) = part.get(param.id()) else { continue };
                let target = &first[param.name()];
                total.add(target.id(), g.to_device(target.value().device())?)?;
            }
        }
        Ok(total)
    }
}
