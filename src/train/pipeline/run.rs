//! The pipeline's runtime: one thread per stage playing its 1F1B list, channels carrying
//! activations forward and their gradients back.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use super::group::{Helper, add_gradients, helpers, take_values};
use super::plan::{Candidate, PipelinePlan, StagePlan};
use super::schedule::Work;
use super::stage::{
    Inbox, InputFn, LossFn, Message, Outbox, Place, Shared, StageJob, StageOutcome, Stop, Turn,
    at_once, even_shares,
};
use super::{Layered, Var};
use crate::fleet::{FleetEvent, Membership, follow};
use crate::plan::Trace;
use crate::train::checkpoint::{HostTensor, Snapshot};
use crate::train::nn::Ctx;
use crate::train::optim::{Optimizer, clip_grad_norm};
use crate::train::parallel::{panic_message, ranges};
use crate::train::{Grads, Param, VarId, no_grad};
use crate::{DeviceRef, Error, Result, Tensor};

/// What one step did.
#[derive(Clone, Debug)]
pub struct PipelineReport {
    /// The batch's mean loss (the micro-batches' summed losses over the batch).
    pub loss: f64,
    /// Each stage's seconds per micro-batch as learned so far (each step's measurement
    /// followed by the fleet's rule, `fleet::follow`): its forward and backward passes (its
    /// busiest member's, for a group), waiting and the copies read ahead excluded.
    pub stage_s: Vec<f64>,
    /// The gradients' global norm before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
    pub wall: Duration,
}

pub(super) struct Stage {
    device: DeviceRef,
    label: String,
    layers: Range<usize>,
    params: Vec<Param>,
    /// The rest of the stage's data-parallel group, and each member's share of the rows
    /// (this device's first).
    helpers: Vec<Helper>,
    shares: Vec<f64>,
    /// The optimizer, over `params`, whose state is made where their values are: on the
    /// stage's device, or where it lodges some of it ([`StateHost`](super::StateHost)),
    /// the master copies with it ([`Param::keep_master_on`]).
    optimizer: Box<dyn Optimizer>,
    /// Learned seconds per micro-batch, `None` before the first step.
    measured: Option<f64>,
}

/// What a stage's thread needs of it to gather its gradients once its work is done.
struct Gathering<'a> {
    device: &'a DeviceRef,
    helpers: &'a [Helper],
    params: &'a [Param],
}

impl Gathering<'_> {
    fn of(stage: &Stage) -> Gathering<'_> {
        Gathering { device: &stage.device, helpers: &stage.helpers, params: &stage.params }
    }

    /// The stage's gradients (`parts`: each member's, its own device's first), under its
    /// parameters' ids: its helpers' added to its own on its device, and sent on to its
    /// optimizer state's host where that is lodged. Each stage does this on its own thread
    /// while the stages before it drain, as the plan prices it
    /// ([`PipelinePlan::step_end`]).
    fn gathered(&self, parts: Vec<Grads>) -> Result<Grads> {
        let mut parts = parts.into_iter();
        let mut grads = parts.next().unwrap_or_default();
        add_gradients(self.helpers, self.params, parts, &mut grads, self.device)?;
        // A lodged parameter's gradient goes to its master.
        for param in self.params {
            let master = param.value().device().clone();
            if let Some(g) = grads.get(param.id())
                && g.device().info().id != master.info().id
            {
                let there = g.to_device(&master)?;
                grads.insert(param.id(), there);
            }
        }
        Ok(grads)
    }
}

/// Builds a stage's optimizer over its parameters (its state made where their values are:
/// the stage's device, or a lodged parameter's host).
type MakeOptimizer = Box<dyn Fn(Vec<Param>) -> Result<Box<dyn Optimizer>> + Send + Sync>;

/// A layered model trained over the stages of a [`PipelinePlan`].
pub struct Pipeline<M> {
    model: M,
    /// Copies of the model for the groups' helpers: helper `k` of any stage runs `copies[k]`.
    copies: Vec<M>,
    plan: PipelinePlan,
    stages: Vec<Stage>,
    make_optimizer: MakeOptimizer,
    /// Devices dropped after a fault, by label.
    evicted: Vec<String>,
    /// The fleet's record of who is in, when shared.
    membership: Option<Membership>,
    max_grad_norm: Option<f64>,
    step: u64,
    trace: Option<(Instant, Trace)>,
}

fn invalid(op: &str, device: &str, detail: String) -> Error {
    Error::InvalidArgument { op: op.into(), device: device.into(), detail }
}

impl<M: Layered> Pipeline<M> {
    /// Moves each stage's parameters to its device and builds its optimizer there with
    /// `optimizer` (given the stage's parameters, after the move, so that its state is
    /// made where they live; called again for a new plan after a failure). The model must
    /// have the plan's layers, and a parameter may belong to one stage only. Should moving
    /// a parameter fail (a device fault), some are moved and some not: build the model
    /// again.
    pub fn new(
        model: M,
        plan: PipelinePlan,
        optimizer: impl Fn(Vec<Param>) -> Result<Box<dyn Optimizer>> + Send + Sync + 'static,
    ) -> Result<Pipeline<M>> {
        Pipeline::with_copies(model, Vec::new(), plan, optimizer)
    }

    /// [`new`](Self::new) for a plan whose stages may be data-parallel groups
    /// ([`Candidate::group`]): `copies` are more instances of the model (built alike; their
    /// values do not matter), one per helper of the largest group. Helper `k` of a stage
    /// runs `copies[k]`'s layers of that stage, which take the model's values on the
    /// helper's device; the model's own parameters stay the ones that count (the lead's,
    /// updated by its optimizer, saved in snapshots).
    pub fn with_copies(
        model: M,
        copies: Vec<M>,
        plan: PipelinePlan,
        optimizer: impl Fn(Vec<Param>) -> Result<Box<dyn Optimizer>> + Send + Sync + 'static,
    ) -> Result<Pipeline<M>> {
        let make_optimizer: MakeOptimizer = Box::new(optimizer);
        let stages = stages(&model, &copies, &plan, &make_optimizer, Placement::Move)?;
        Ok(Pipeline {
            model,
            copies,
            plan,
            stages,
            make_optimizer,
            evicted: Vec::new(),
            membership: None,
            max_grad_norm: None,
            step: 0,
            trace: None,
        })
    }

    /// Shares `membership` (a fleet's, [`Fleet::membership`](crate::Fleet::membership)):
    /// a step on a stage device that another scheduler evicted fails at once with a
    /// `DeviceLost` naming it (recover as from any fault), and this pipeline's own
    /// evictions are recorded there for the others.
    pub fn with_membership(mut self, membership: Membership) -> Pipeline<M> {
        self.membership = Some(membership);
        self
    }

    /// Every parameter and all optimizer state, by name, copied to the host: what a
    /// checkpoint holds. `step` is the steps done; `state` the caller's own (data
    /// position, schedule).
    pub fn snapshot(&self, state: serde_json::Value) -> Result<Snapshot> {
        let mut optimizer = Vec::new();
        let mut optimizer_step = None;
        for stage in &self.stages {
            let (step, tensors) = stage.optimizer.state();
            if optimizer_step.is_some_and(|s| s != step) {
                return Err(invalid(
                    "Pipeline::snapshot",
                    &stage.label,
                    format!("its optimizer is at step {step}, the others at {optimizer_step:?}"),
                ));
            }
            optimizer_step = Some(step);
            for (name, t) in tensors {
                optimizer.push(HostTensor::read(&name, &t)?);
            }
        }
        let params = self
            .params()
            .iter()
            .map(|p| HostTensor::read(p.name(), &p.value()))
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            step: self.step,
            params,
            optimizer_step: optimizer_step.unwrap_or(0),
            optimizer,
            state,
        })
    }

    /// Puts back `snapshot`'s parameters and optimizer state, matched by name, each
    /// stage's part on its own device, whatever plan wrote it; training continues from
    /// its step. Nothing is half-restored: a snapshot that does not fit the model is an
    /// `Err` before any stage changes.
    pub fn restore(&mut self, snapshot: &Snapshot, path: &Path) -> Result<()> {
        let stages = self.restored(&self.plan, snapshot, path, false)?;
        self.install(stages, snapshot.step);
        Ok(())
    }

    /// [`restore`](Self::restore) in two halves, for replicas that restore together: the
    /// stages made (`shard`: the snapshot holds only the optimizer state this replica
    /// keeps, maybe none), then put in place.
    pub(super) fn restored_stages(
        &self,
        snapshot: &Snapshot,
        path: &Path,
        shard: bool,
    ) -> Result<Vec<Stage>> {
        self.restored(&self.plan, snapshot, path, shard)
    }

    pub(super) fn install(&mut self, stages: Vec<Stage>, step: u64) {
        self.stages = stages;
        self.step = step;
    }

    /// After a step failed with `error`, a fault of one stage's device: plans the layers
    /// again over `candidates` without that device (nor any dropped before), and restores
    /// every stage from `snapshot` (the last checkpoint) on the new plan. Training goes on
    /// from `snapshot.step`, and gives what a fresh resume from it would, bit for bit.
    /// `candidates` offer the memory they have free now (`Candidate::new` reads it).
    /// An error that is no device fault, or names no stage's device, is returned as is.
    pub fn recover(
        &mut self,
        error: Error,
        candidates: &[Candidate],
        snapshot: &Snapshot,
        path: &Path,
    ) -> Result<FleetEvent> {
        let failed = match error.device() {
            Some(d) if error.is_device_fault() && self.labels().any(|l| l == d) => d.to_string(),
            _ => return Err(error),
        };
        let out = |c: &Candidate| {
            let label = c.device.info().label();
            let fleet_out = self.membership.as_ref().is_some_and(|m| m.why_out(&label).is_some());
            label == failed || self.evicted.contains(&label) || fleet_out
        };
        // A group loses the members that are out; a helper leads where its lead is out.
        let survivors: Vec<Candidate> = candidates
            .iter()
            .filter_map(|c| {
                let mut members = c
                    .members()
                    .filter(|m| !out(m))
                    .map(|m| Candidate { helpers: Vec::new(), ..m.clone() });
                let lead = members.next()?;
                Some(Candidate { helpers: members.collect(), ..lead })
            })
            .collect();
        let slots = self.stages[0].optimizer.state_slots().len();
        let plan =
            PipelinePlan::search(self.plan.costs(), &survivors, self.plan.micro_batches, slots)?;
        // The old stages' optimizer state goes before the new is made, so a survivor never
        // holds both; they come back if the restore fails.
        let old = std::mem::take(&mut self.stages);
        let stages = match self.restored(&plan, snapshot, path, false) {
            Ok(stages) => stages,
            Err(e) => {
                self.stages = old;
                return Err(e);
            }
        };
        drop(old);
        if let Some(membership) = &self.membership {
            membership.evict(&failed, &error.to_string());
        }
        self.evicted.push(failed.clone());
        self.plan = plan;
        self.stages = stages;
        self.step = snapshot.step;
        let event = FleetEvent::Evicted { device: failed, reason: error.to_string() };
        if let Some((origin, trace)) = &mut self.trace {
            trace.push_fleet_event(&event, origin.elapsed());
        }
        Ok(event)
    }

    /// Every stage device's label, helpers included.
    fn labels(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().flat_map(|s| {
            std::iter::once(s.label.as_str()).chain(s.helpers.iter().map(|h| h.label.as_str()))
        })
    }

    /// Devices dropped after their faults, by label.
    pub fn evicted(&self) -> &[String] {
        &self.evicted
    }

    /// `plan`'s stages with `snapshot`'s values on their devices and fresh optimizers
    /// holding its state.
    fn restored(
        &self,
        plan: &PipelinePlan,
        snapshot: &Snapshot,
        path: &Path,
        shard: bool,
    ) -> Result<Vec<Stage>> {
        let all: Vec<Param> = plan
            .stages
            .iter()
            .flat_map(|s| s.layers.clone())
            .flat_map(|l| self.model.layer_params(l))
            .collect();
        let names: HashSet<&str> = all.iter().map(|p| p.name()).collect();
        // The whole snapshot must belong to the model: what no stage takes is a mistake.
        let whole = snapshot.part(&names);
        if whole.params.len() != snapshot.params.len()
            || whole.optimizer.len() != snapshot.optimizer.len()
        {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                detail: "holds parameters or optimizer state the model lacks".into(),
            });
        }
        let placement = Placement::Restore(snapshot, path, shard);
        stages(&self.model, &self.copies, plan, &self.make_optimizer, placement)
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn plan(&self) -> &PipelinePlan {
        &self.plan
    }

    /// The device the first stage's input goes to.
    pub fn input_device(&self) -> &DeviceRef {
        &self.stages[0].device
    }

    /// The model's output for `x` without recording a graph (evaluation, sampling): the
    /// stages one after another on this thread, `x` moved to each in turn.
    pub fn infer(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        // Lodged parameters' copies made once, not at every pass.
        self.params().iter().try_for_each(Param::renew_copy)?;
        no_grad(|| {
            let mut h = x.clone();
            for stage in &self.stages {
                h = self.model.forward_layers(
                    stage.layers.clone(),
                    &h.to_device(&stage.device)?,
                    ctx,
                )?;
            }
            Ok(h)
        })
    }

    /// Every stage's parameters, stage by stage.
    pub fn params(&self) -> Vec<Param> {
        self.stages.iter().flat_map(|s| s.params.iter().cloned()).collect()
    }

    /// The stages' optimizers, stage by stage (a schedule sets their learning rate).
    pub fn optimizers_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Optimizer>> {
        self.stages.iter_mut().map(|s| &mut s.optimizer)
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Clips the gradients of all stages together to this global norm before the update.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) {
        self.max_grad_norm = max_norm;
    }

    /// The plan with each stage's measured time per micro-batch beside its prediction.
    pub fn explain(&self) -> String {
        let measured: Vec<f64> =
            self.stages.iter().map(|s| s.measured.unwrap_or(f64::NAN)).collect();
        let measured = self.stages.iter().all(|s| s.measured.is_some()).then_some(&measured[..]);
        self.plan.explain_with(measured)
    }

    /// Records every stage's forwards, backwards and received copies from now on.
    pub fn start_trace(&mut self) {
        self.trace = Some((Instant::now(), Trace::default()));
    }

    pub fn take_trace(&mut self) -> Option<Trace> {
        self.trace.take().map(|(_, t)| t)
    }

    /// One training step over a batch of `batch` rows, cut into the plan's micro-batches.
    /// `input` makes rows `rows`' input on the given device (the first stage's, or a member
    /// of its group); `loss` turns the last layer's output for rows `rows` into one loss
    /// per row (`[rows.len(), ..]`) on the given device (the last stage's, or a member of
    /// its group). The step sums the losses over the batch, divides by `batch`, and
    /// updates every stage's parameters.
    pub fn step<I, L>(&mut self, batch: usize, input: I, loss: L) -> Result<PipelineReport>
    where
        I: Fn(Range<usize>, &DeviceRef) -> Result<Var> + Sync,
        L: Fn(&Var, Range<usize>, &DeviceRef) -> Result<Var> + Sync,
    {
        let started = Instant::now();
        let (mut grads, loss) = self.gradients(0..batch, batch, &input, &loss)?;
        let grad_norm = self.update(&mut grads)?;
        Ok(self.report(loss, grad_norm, started))
    }

    /// A step's report: its loss and norm, the stages' learned times, the time since
    /// `started`.
    pub(super) fn report(
        &self,
        loss: f64,
        grad_norm: Option<f64>,
        started: Instant,
    ) -> PipelineReport {
        PipelineReport {
            loss,
            stage_s: self.stages.iter().map(|s| s.measured.unwrap_or(0.0)).collect(),
            grad_norm,
            wall: started.elapsed(),
        }
    }

    /// The first half of a step: rows `rows` of a batch of `batch` through the stages,
    /// their gradients (their losses summed, over `batch`) accumulated over the plan's
    /// micro-batches, and the rows' part of the batch's mean loss. Nothing is updated.
    pub(super) fn gradients(
        &mut self,
        rows: Range<usize>,
        batch: usize,
        input: InputFn<'_>,
        loss: LossFn<'_>,
    ) -> Result<(Grads, f64)> {
        if let Some(membership) = &self.membership
            && let Some((label, why)) =
                self.labels().find_map(|l| membership.why_out(l).map(|why| (l.to_string(), why)))
        {
            return Err(Error::DeviceLost {
                device: label,
                detail: format!("out of the fleet ({why}): recover onto a new plan"),
            });
        }
        let micro_batches = self.plan.micro_batches;
        if rows.len() < micro_batches || rows.end > batch {
            return Err(invalid(
                "Pipeline::step",
                &self.stages[0].label,
                format!(
                    "rows {rows:?} of a batch of {batch} cannot make {micro_batches} micro-batches"
                ),
            ));
        }
        let rows = ranges(&even_shares(rows.len(), micro_batches), rows.start);
        // A group's members take whole rows of the micro-batch its plan was priced for.
        let planned = self.plan.costs().first().map_or(0, |l| l.rows);
        if let Some(stage) = self.stages.iter().find(|s| !s.helpers.is_empty())
            && let Some(r) = rows.iter().find(|r| r.len() != planned)
        {
            return Err(invalid(
                "Pipeline::step",
                &stage.label,
                format!(
                    "its stage is a group planned for micro-batches of {planned} rows, each \
                     member's share whole rows of those; this step's micro-batch {r:?} has {}: \
                     profile the layers with a micro-batch of the size you train with",
                    r.len()
                ),
            ));
        }
        // Helpers start from the lead's values, whoever changed them since (an optimizer,
        // another replica, a restore): the groups at once, each over its own links.
        let groups: Vec<(&[Helper], &[Param])> = (self.stages.iter())
            .filter(|s| !s.helpers.is_empty())
            .map(|s| (&s.helpers[..], &s.params[..]))
            .collect();
        at_once(
            groups,
            |_| "Pipeline::step, a group's values".into(),
            |(helpers, lead)| helpers.iter().try_for_each(|helper| take_values(helper, lead)),
        )?;
        let count = self.stages.len();
        // Each device's order of work: an interleaved plan's stages on one device share a
        // turn in it.
        let (devices, chunks) = (self.plan.devices(), self.plan.chunks());
        let orders: Vec<Vec<(usize, Work)>> = self.plan.orders();
        let turns: Vec<Option<Arc<Turn>>> = orders
            .iter()
            .enumerate()
            .map(|(d, order)| {
                (chunks > 1)
                    .then(|| Arc::new(Turn::new(order.iter().map(|w| w.0 * devices + d).collect())))
            })
            .collect();
        // Channel s carries activations from stage s to s + 1 and gradients back.
        let (act_tx, mut act_rx): (Vec<_>, Vec<_>) = (0..count).map(|_| channel()).unzip();
        let (grad_tx, mut grad_rx): (Vec<_>, Vec<_>) = (0..count).map(|_| channel()).unzip();
        let mut act_tx: Vec<Option<Sender<Message>>> = act_tx.into_iter().map(Some).collect();
        let mut grad_tx: Vec<Option<Sender<Message>>> = grad_tx.into_iter().map(Some).collect();
        let jobs: Vec<StageJob> = (0..count)
            .map(|s| StageJob {
                place: Place {
                    index: s,
                    count,
                    device: self.stages[s].device.clone(),
                    helpers: self.stages[s].helpers.iter().map(|h| h.device.clone()).collect(),
                    shares: self.stages[s].shares.clone(),
                    layers: self.stages[s].layers.clone(),
                    recompute: self.plan.stages[s].recompute.clone(),
                    work: (orders[s % devices].iter())
                        .filter(|w| w.0 == s / devices)
                        .map(|w| w.1)
                        .collect(),
                    turn: turns[s % devices].clone(),
                },
                send_forward: boxed_out(if s + 1 < count { act_tx[s].take() } else { None }),
                receive_forward: boxed_in(
                    (s > 0).then(|| std::mem::replace(&mut act_rx[s - 1], channel().1)),
                ),
                send_back: boxed_out(if s > 0 { grad_tx[s - 1].take() } else { None }),
                receive_back: boxed_in(
                    (s + 1 < count).then(|| std::mem::replace(&mut grad_rx[s], channel().1)),
                ),
            })
            .collect();
        drop((act_tx, grad_tx));
        let (model, copies, step) = (&self.model, &self.copies[..], self.step);
        let shared = Shared { model, copies, input, loss, rows: &rows, batch, step };
        let gatherings: Vec<Gathering<'_>> = self.stages.iter().map(Gathering::of).collect();
        let outcomes: Vec<std::thread::Result<std::result::Result<StageOutcome, Stop>>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (jobs.into_iter().zip(&gatherings))
                    .map(|(job, gathering)| {
                        let shared = &shared;
                        scope.spawn(move || {
                            let mut done = job.run(shared)?;
                            let parts = std::mem::take(&mut done.grads);
                            done.grads = vec![gathering.gathered(parts)?];
                            Ok(done)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join()).collect()
            });
        let mut done = Vec::with_capacity(count);
        let mut first_error = None;
        for (s, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(Ok(d)) => done.push(d),
                Ok(Err(Stop::Failed(e))) => {
                    first_error.get_or_insert(e);
                }
                Ok(Err(Stop::Neighbour)) => {}
                Err(panic) => {
                    first_error.get_or_insert(Error::Panicked {
                        op: format!("Pipeline::step, stage {s}"),
                        detail: panic_message(panic.as_ref()),
                    });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if done.len() != count {
            return Err(invalid("Pipeline::step", "-", "a stage stopped without a cause".into()));
        }
        let mut grads = Grads::default();
        for d in &mut done {
            for stage_grads in std::mem::take(&mut d.grads) {
                grads.accumulate(stage_grads)?;
            }
        }
        let mut losses = Vec::new();
        for (s, d) in done.into_iter().enumerate() {
            let stage = &mut self.stages[s];
            losses.extend(d.losses);
            // The busiest member's time: the group's pace.
            let mut secs = vec![0.0; stage.shares.len()];
            for w in &d.busy {
                secs[w.member] += w.secs;
            }
            let per_micro_batch =
                secs.iter().fold(0.0, |a: f64, &b| a.max(b)) / micro_batches as f64;
            stage.measured = Some(follow(stage.measured, per_micro_batch));
            if let Some((origin, trace)) = &mut self.trace {
                for w in d.busy {
                    let start = w.start.saturating_duration_since(*origin);
                    let device = match w.member {
                        0 => &stage.label,
                        k => &stage.helpers[k - 1].label,
                    };
                    // Copies in overlap the stage's work: a track of their own.
                    let track = match w.kind {
                        "transfer" => format!("{device} copies in"),
                        _ => device.clone(),
                    };
                    trace.push(&track, w.kind, w.name, start, w.duration);
                }
            }
        }
        // Added on the host in f64, in micro-batch order: the micro-batches' losses are
        // computed by then, and the sum does not round away their last bits.
        let loss = losses.iter().map(|l| Ok(l.to_f64_vec()?[0])).sum::<Result<f64>>()?;
        Ok((grads, loss))
    }

    /// The second half: clipping (when set) and every stage's optimizer step. Returns the
    /// gradients' norm before clipping, when clipping is on.
    pub(super) fn update(&mut self, grads: &mut Grads) -> Result<Option<f64>> {
        let grad_norm = self.clip(grads)?;
        self.step_optimizers(grads)?;
        Ok(grad_norm)
    }

    /// Clips `grads` (over this pipeline's parameters) to the global norm, when set.
    pub(super) fn clip(&self, grads: &mut Grads) -> Result<Option<f64>> {
        match self.max_grad_norm {
            Some(max) => Ok(Some(clip_grad_norm(&self.params(), grads, max)?)),
            None => Ok(None),
        }
    }

    /// Every stage's optimizer steps on what `grads` holds for its parameters (all of
    /// them, or a shard: a parameter with no gradient is left as it is).
    /// The stages step at once, each on its own device (and its lodged state's hosts), as
    /// the plan prices their syncs.
    pub(super) fn step_optimizers(&mut self, grads: &Grads) -> Result<()> {
        let stages: Vec<&mut Stage> = self.stages.iter_mut().collect();
        at_once(
            stages,
            |s| format!("Pipeline::step, stage {s}'s optimizer"),
            |stage| stage.optimizer.step(grads),
        )?;
        self.step += 1;
        Ok(())
    }

    /// Where the optimizer updating `param` (one of this pipeline's) wants its gradient:
    /// where its value, the master copy, lives (its stage's device, or its lodged state's).
    pub(super) fn update_device(&self, param: &Param) -> DeviceRef {
        param.value().device().clone()
    }

    /// Counts a step this pipeline took part in but did not update (a replica whose
    /// parameters another replica's optimizers updated).
    pub(super) fn advance(&mut self) {
        self.step += 1;
    }
}

/// An `InvalidArgument` where a (hand-edited) stage plan lodges its state other than as
/// a plan does: runs of its last layers, in order, each on another device than its own
/// and its helpers'.
fn check_state_on(stage: &StagePlan) -> Result<()> {
    let Some(first) = stage.state_on.first() else { return Ok(()) };
    let mut at = first.layers.start;
    let ids: Vec<_> = std::iter::once(&stage.device)
        .chain(stage.helpers.iter().map(|h| &h.device))
        .map(|d| d.info().id)
        .collect();
    for host in &stage.state_on {
        let why = if host.layers.start != at || host.layers.is_empty() {
            Some("runs that follow each other")
        } else if ids.contains(&host.device.info().id) {
            Some("other devices than its own and its helpers'")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(invalid(
                "Pipeline",
                &stage.label,
                format!(
                    "lodges the optimizer state of layers {:?} on {}: a stage lodges its last \
                     layers' state in {why}",
                    host.layers, host.label
                ),
            ));
        }
        at = host.layers.end;
    }
    if first.layers.start < stage.layers.start || at != stage.layers.end {
        return Err(invalid(
            "Pipeline",
            &stage.label,
            format!(
                "lodges the optimizer state of layers {}..{at}, not the last of its layers {:?}",
                first.layers.start, stage.layers
            ),
        ));
    }
    Ok(())
}

/// Each of `params`' (a stage's) optimizer state host, by the first of the stage's layers
/// that uses it (`None`: kept at home); `None` where the stage keeps all its state.
fn state_hosts<M: Layered>(
    model: &M,
    stage: &StagePlan,
    params: &[Param],
) -> Option<Vec<Option<DeviceRef>>> {
    if stage.state_on.is_empty() {
        return None;
    }
    let mut host_of: HashMap<VarId, Option<DeviceRef>> = HashMap::new();
    for layer in stage.layers.clone() {
        let host = stage.state_on.iter().find(|h| h.layers.contains(&layer));
        for param in model.layer_params(layer) {
            host_of.entry(param.id()).or_insert_with(|| host.map(|h| h.device.clone()));
        }
    }
    Some(params.iter().map(|p| host_of.get(&p.id()).cloned().flatten()).collect())
}

/// Where a new stage's parameter values come from.
enum Placement<'a> {
    /// Moved from wherever they are to the stage's device.
    Move,
    /// Uploaded from a checkpoint (the devices they were on may be gone); `true`: it holds
    /// only the optimizer state this pipeline keeps (a shard, maybe none).
    Restore(&'a Snapshot, &'a Path, bool),
}

/// The stages of `plan` over `model`: each parameter on its stage's device, or its master
/// on its optimizer state's host where the plan lodges that, and each stage's optimizer
/// built over them (restored from the snapshot, when restoring).
fn stages<M: Layered>(
    model: &M,
    copies: &[M],
    plan: &PipelinePlan,
    make_optimizer: &MakeOptimizer,
    placement: Placement<'_>,
) -> Result<Vec<Stage>> {
    // The plan's fields are public: check what a hand-edited plan could break.
    if plan.devices() == 0 || !plan.stages.len().is_multiple_of(plan.chunks()) {
        return Err(invalid(
            "Pipeline",
            "-",
            format!(
                "{} stages for a plan interleaved over {} stages a device",
                plan.stages.len(),
                plan.chunks()
            ),
        ));
    }
    let mut next = 0;
    for (s, stage) in plan.stages.iter().enumerate() {
        if stage.layers.start != next || stage.layers.is_empty() {
            return Err(invalid(
                "Pipeline",
                &stage.label,
                format!(
                    "stage {s} has layers {:?}: stages cover the layers in order",
                    stage.layers
                ),
            ));
        }
        next = stage.layers.end;
    }
    if next != model.depth() || next == 0 || plan.micro_batches == 0 {
        return Err(invalid(
            "Pipeline",
            "-",
            format!(
                "the plan covers {next} layers of the model's {} in {} micro-batches",
                model.depth(),
                plan.micro_batches
            ),
        ));
    }
    plan.check_split()?;
    let mut owner: HashMap<VarId, usize> = HashMap::new();
    for (s, stage) in plan.stages.iter().enumerate() {
        for param in stage.layers.clone().flat_map(|l| model.layer_params(l)) {
            if let Some(other) = owner.insert(param.id(), s).filter(|&o| o != s) {
                return Err(invalid(
                    "Pipeline",
                    &stage.label,
                    format!(
                        "parameter {} is used by stages {other} and {s}: tie it within one stage",
                        param.name()
                    ),
                ));
            }
        }
    }
    for stage in &plan.stages {
        check_state_on(stage)?;
    }
    let mut stages = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let params = model.params_of(stage.layers.clone());
        // Lodged parameters' master copies go where their optimizer state will be made, each
        // as soon as it is in place: the stage's device never holds more than one of them.
        let hosts = state_hosts(model, stage, &params).unwrap_or_default();
        let lodge = |i: usize| match hosts.get(i) {
            Some(Some(host)) => params[i].keep_master_on(host),
            _ => Ok(()),
        };
        let optimizer = match placement {
            Placement::Move => {
                for (i, param) in params.iter().enumerate() {
                    param.move_to(&stage.device)?;
                    lodge(i)?;
                }
                make_optimizer(params.clone())?
            }
            Placement::Restore(snapshot, path, shard) => {
                let names: HashSet<&str> = params.iter().map(|p| p.name()).collect();
                let part = snapshot.part(&names);
                // The values straight onto this device (the old ones may be unreadable),
                // then the optimizer state next to them.
                for (i, param) in params.iter().enumerate() {
                    let saved =
                        part.params.iter().find(|t| t.name == param.name()).ok_or_else(|| {
                            Error::Checkpoint {
                                path: path.display().to_string(),
                                detail: format!("has no parameter {}", param.name()),
                            }
                        })?;
                    param.put(Tensor::from_bytes(
                        &saved.bytes,
                        saved.dims.clone(),
                        saved.dtype,
                        &stage.device,
                    )?)?;
                    lodge(i)?;
                }
                let mut optimizer = make_optimizer(params.clone())?;
                match shard {
                    true => part.restore_optimizer_shard(&params, &mut *optimizer, path)?,
                    false => part.restore_optimizer(&params, &mut *optimizer, path)?,
                }
                optimizer
            }
        };
        let helpers = helpers(copies, &stage.layers, &stage.helpers, &params)?;
        stages.push(Stage {
            device: stage.device.clone(),
            label: stage.label.clone(),
            layers: stage.layers.clone(),
            optimizer,
            params,
            shares: stage.shares(),
            helpers,
            measured: None,
        });
    }
    Ok(stages)
}

fn boxed_out<'a>(tx: Option<Sender<Message>>) -> Option<Box<dyn Outbox + Send + 'a>> {
    tx.map(|tx| Box::new(tx) as Box<dyn Outbox + Send>)
}

fn boxed_in<'a>(rx: Option<Receiver<Message>>) -> Option<Box<dyn Inbox + Send + 'a>> {
    rx.map(|rx| Box::new(rx) as Box<dyn Inbox + Send>)
}
