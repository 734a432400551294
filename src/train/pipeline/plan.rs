//! Where each layer runs: contiguous stages, each on one device or on a data-parallel group
//! of devices, sized so that the slowest stage is as fast as it can be while every stage
//! fits its devices' memory.
//!
//! A group ([`Candidate::group`]) is priced member by member: each member holds a copy of
//! the stage's layers and takes a share of every micro-batch's rows in proportion to its
//! speed on the model; the stage's pass takes as long as its slowest member's share plus
//! the copies of that share to and from the lead, and once a step the members' gradients
//! go to the lead and the updated parameters come back.
//!
//! A stage's time per micro-batch is its layers' forward and backward passes, or the
//! copies it receives where those are slower (the activation from the stage before, the
//! gradient from the one after: the runtime reads them ahead, overlapping its work);
//! under 1F1B a step takes a micro-batch's trip through every stage (copies included),
//! `M − 1` more at the pace ([`PipelinePlan::pace_s`]: the slowest stage's time, or a
//! round trip's share where the copies make that longer), and the stages' once-a-step
//! syncs. For a device order and a stage count, the smallest feasible bottleneck is found
//! by bisection, each candidate checked by a greedy fill (each stage takes the most layers
//! that keep it, its copies in included, under the bottleneck and within its device's
//! memory, found by bisection too; optimal for a fixed order where
//! adding a layer never makes a stage cheaper or smaller, which a smaller output or a
//! different choice of layers to recompute can, rarely: the cut is then feasible, not
//! always the best). A few orders are tried (as given, fastest first, most memory first:
//! the first stage holds the most micro-batches in flight) and stage counts on a grid
//! (every count to 12, then about a tenth apart), refined between the best one's
//! neighbours; the best predicted step wins.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::cost::LayerCost;
use super::schedule::in_flight;
use super::simulate::play;
use super::zero_bubble::split_needs;
use crate::plan::{DeviceProfile, proportional};
use crate::{DeviceId, DeviceRef, Error, Result};

/// A device that may take a stage: the device, its calibrated profile, and the bytes it
/// has free for this job; with `helpers`, the lead of a data-parallel group that takes a
/// stage together.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub device: DeviceRef,
    pub profile: DeviceProfile,
    pub memory: u64,
    /// The rest of the group (empty: the device alone). Each holds a copy of the stage's
    /// layers and takes a share of every micro-batch's rows, in proportion to its speed;
    /// this device receives and sends the stage's messages and keeps its optimizer state.
    pub helpers: Vec<Candidate>,
}

impl Candidate {
    /// `device` with `profile`, offering the memory the device reports free now.
    pub fn new(device: DeviceRef, profile: DeviceProfile) -> Result<Candidate> {
        let memory = device.memory()?.free;
        Ok(Candidate { device, profile, memory, helpers: Vec::new() })
    }

    /// `lead` and `helpers` as one stage's data-parallel group (the devices of one machine
    /// under one MPI rank, say). Each device may appear once, and a group does not nest.
    pub fn group(lead: Candidate, helpers: Vec<Candidate>) -> Result<Candidate> {
        let group = Candidate { helpers, ..lead };
        group.check_group("Candidate::group")?;
        Ok(group)
    }

    /// The group's devices, the lead first.
    pub fn members(&self) -> impl Iterator<Item = &Candidate> {
        std::iter::once(self).chain(&self.helpers)
    }

    fn check_group(&self, op: &str) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for member in self.members() {
            let label = member.device.info().label();
            let detail = if !std::ptr::eq(member, self) && !member.helpers.is_empty() {
                "has helpers of its own: groups do not nest"
            } else if !seen.insert(member.device.info().id) {
                "appears twice in one group"
            } else {
                continue;
            };
            return Err(Error::InvalidArgument {
                op: op.into(),
                device: label,
                detail: detail.into(),
            });
        }
        Ok(())
    }
}

/// The memory a stage needs, by what it is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageMemory {
    /// Its parameters; of those whose state lodges on a [`StateHost`], only the ones its
    /// matmuls do not read cast (a bf16 model's norms), the master copies of the others
    /// living with their state.
    pub params: u64,
    /// The parameters' copies in the compute dtype, one a step
    /// ([`LayerCost::copy_bytes`]).
    pub copies: u64,
    /// Gradients accumulated over the step's micro-batches.
    pub grads: u64,
    pub optimizer: u64,
    /// What the micro-batches in flight keep for their backward passes, and their inputs.
    pub activations: u64,
    /// Temporaries of one layer's backward pass (a gradient of about every buffer its
    /// forward pass wrote, kept or not, plus what it makes anew, such as attention's
    /// weights) and the gradient that arrives for it.
    pub workspace: u64,
    /// What it keeps for stages whose optimizer state it hosts ([`StateHost`]).
    pub lodged: u64,
}

impl StageMemory {
    pub fn total(&self) -> u64 {
        self.params
            + self.copies
            + self.grads
            + self.optimizer
            + self.activations
            + self.workspace
            + self.lodged
    }
}

/// Where part of a stage's optimizer state lives when its own device lacks the room for
/// it: another stage's device with memory to spare, which keeps the master copy of the
/// parameters of some of the stage's layers, their optimizer state and the gradients that
/// arrive for them, runs their update, and sends the new values back once a step as the
/// stage's forward passes read them, a bf16 model's weights in bf16 (ZeRO-Offload's idea,
/// onto peers rather than the host; [`Param::keep_master_on`](crate::train::Param::keep_master_on)). A stage's state may spread over
/// several hosts, a run of its layers on each, the first layers' kept at home where there
/// is room for them. Its stage's `sync_s` counts those copies.
#[derive(Clone, Debug)]
pub struct StateHost {
    pub device: DeviceRef,
    pub label: String,
    /// The stage's layers whose parameters' state it keeps.
    pub layers: Range<usize>,
    /// Bytes it keeps for them.
    pub bytes: u64,
}

/// One stage of a plan.
#[derive(Clone, Debug)]
pub struct StagePlan {
    pub layers: Range<usize>,
    pub device: DeviceRef,
    pub label: String,
    /// Predicted seconds per micro-batch: forward, backward, and receiving its input (from
    /// the stage before) and its output's gradient (from the stage after).
    pub forward_s: f64,
    pub backward_s: f64,
    pub receive_forward_s: f64,
    pub receive_backward_s: f64,
    /// Of `backward_s`, the seconds of the weights' gradients: the part a split backward
    /// pass runs later (0 for a group, which does not split).
    pub weight_s: f64,
    /// Where it runs its backward passes in two parts, the weights' part later
    /// ([`PipelinePlan::zero_bubble`]): the most micro-batches it holds, each from its
    /// forward pass to its weights' part. `memory` then counts their activations and the
    /// output gradients kept between the two parts.
    pub split: Option<usize>,
    pub memory: StageMemory,
    /// The device's memory offered to the job.
    pub available: u64,
    /// The slower direction of the device's link, bytes per second: what its gradients
    /// cross in an all-reduce.
    pub link_bytes_per_s: f64,
    /// The layers (ascending; none, some or all of `layers`) whose activations the stage
    /// does not keep: it runs their forward passes again just before its backward pass,
    /// keeping only the inputs of those runs of layers (and the input of a kept run after
    /// one, which the recomputed run's graph would have held). Chosen where the activations of
    /// the micro-batches in flight would not fit, at the price of those forward passes.
    pub recompute: Vec<usize>,
    /// The rest of the stage's data-parallel group (empty: `device` alone).
    pub helpers: Vec<HelperPlan>,
    /// `device`'s share of each micro-batch's rows (1 alone).
    pub share: f64,
    /// Seconds a step spends bringing the helpers' gradients to `device` and the updated
    /// parameters back, and the same with a [`StateHost`].
    pub sync_s: f64,
    /// Of `sync_s`, the gradients' way (to `device`, to the state's host): it starts as soon
    /// as the stage has done its last unit of work, while the stages before it drain. The
    /// rest waits for every stage's gradients (the clip reads their global norm).
    pub gather_s: f64,
    /// Of `sync_s`, the new values' way back from the state's hosts: the stage reads them
    /// before its first forward pass of the next step, while the stages before it fill
    /// the pipeline ([`PipelinePlan::refill_s`]).
    pub values_s: f64,
    /// Where the stage's optimizer state lives, where not on `device`: runs of its layers,
    /// in order, each on a host (empty: all on `device`; the layers before the first run
    /// keep theirs on `device`).
    pub state_on: Vec<StateHost>,
}

/// A helper of a stage's group: a device with a copy of the stage's layers.
#[derive(Clone, Debug)]
pub struct HelperPlan {
    pub device: DeviceRef,
    pub label: String,
    /// Its share of each micro-batch's rows.
    pub share: f64,
    /// What it holds: the stage's parameters and gradients, its rows' activations (the
    /// optimizer state stays with the lead).
    pub memory: StageMemory,
    pub available: u64,
}

impl StagePlan {
    /// Each member's share of a micro-batch's rows, `device` first (`[1]` alone).
    pub fn shares(&self) -> Vec<f64> {
        std::iter::once(self.share).chain(self.helpers.iter().map(|h| h.share)).collect()
    }

    /// `explain`'s mark for recomputation: nothing, ` rc` (every layer) or ` rc 2/5` (some).
    pub fn recompute_mark(&self) -> String {
        match self.recompute.len() {
            0 => String::new(),
            n if n == self.layers.len() => " rc".into(),
            n => format!(" rc {n}/{}", self.layers.len()),
        }
    }

    /// Predicted seconds per micro-batch at this stage's steady pace: its two passes, or
    /// the copies it receives where those take longer (they are received ahead, while
    /// the stage computes).
    pub fn time(&self) -> f64 {
        stage_time(self.forward_s, self.backward_s, self.receive_forward_s, self.receive_backward_s)
    }

    /// Predicted seconds of the first part of its backward pass: all of it, unless split.
    pub fn input_s(&self) -> f64 {
        if self.split.is_some() { self.backward_s - self.weight_s } else { self.backward_s }
    }

    /// Predicted seconds of one micro-batch's trip through this stage when nothing
    /// overlaps: its copies in, then its passes.
    pub fn trip_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.receive_forward_s + self.receive_backward_s
    }

    /// An `OutOfMemory` naming the device, the stage (`s`) and the bytes where a member's
    /// part does not fit its device.
    fn check_memory(&self, s: usize) -> Result<()> {
        let members = std::iter::once((&self.label, self.memory, self.available))
            .chain(self.helpers.iter().map(|h| (&h.label, h.memory, h.available)));
        for (label, m, available) in members {
            if m.total() <= available {
                continue;
            }
            return Err(Error::OutOfMemory {
                op: "PipelinePlan".into(),
                device: label.clone(),
                detail: format!(
                    "stage {s} (layers {}..{}{}) needs {} bytes (parameters {}, their copies in \
                     the compute dtype {}, gradients {}, optimizer state {}, activations {}, \
                     workspace {}, other stages' optimizer state lodged here {}) and the \
                     device offers {available}",
                    self.layers.start,
                    self.layers.end,
                    if *label == self.label {
                        String::new()
                    } else {
                        format!(", a helper of {}", self.label)
                    },
                    m.total(),
                    m.params,
                    m.copies,
                    m.grads,
                    m.optimizer,
                    m.activations,
                    m.workspace,
                    m.lodged,
                ),
            });
        }
        Ok(())
    }

    /// Stage `index` of `count` of a pipeline over MPI ranks (this rank's), layers `layers`
    /// of the model `costs` describes, on `group`: this machine's devices
    /// ([`Candidate::group`], or one alone), each member's share of the rows and memory
    /// priced and checked. Its neighbours are other machines: receiving from them is not
    /// priced.
    pub fn for_rank(
        costs: &[LayerCost],
        layers: Range<usize>,
        (index, count): (usize, usize),
        group: &Candidate,
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<StagePlan> {
        check_micro_batches(micro_batches)?;
        group.check_group("StagePlan::for_rank")?;
        if layers.is_empty() || layers.end > costs.len() || index >= count {
            return Err(Error::InvalidArgument {
                op: "StagePlan::for_rank".into(),
                device: group.device.info().label(),
                detail: format!(
                    "stage {index} of {count} with layers {layers:?} of a model of {}",
                    costs.len()
                ),
            });
        }
        let shares = group_shares(costs, group);
        let spot = Spot {
            c: group,
            shares: &shares,
            from_before: 0.0,
            from_after: 0.0,
            s: index,
            count,
            lodging: false,
            times: None,
            held: None,
        };
        let stage = price(costs, layers, &spot, micro_batches, optimizer_slots as f64);
        stage.check_memory(index)?;
        Ok(stage)
    }
}

/// A stage's pace per micro-batch: its two passes, or the two copies it receives (a thread
/// of the stage's receives the next ones while it computes) where those are slower.
fn stage_time(forward: f64, backward: f64, receive_forward: f64, receive_backward: f64) -> f64 {
    (forward + backward).max(receive_forward + receive_backward)
}

/// Stages, micro-batches and what the plan predicts.
#[derive(Clone, Debug)]
pub struct PipelinePlan {
    pub stages: Vec<StagePlan>,
    pub micro_batches: usize,
    /// What the plan was made from, to plan again (over other devices, after a failure);
    /// shared by the many plans a search prices.
    pub(super) costs: Arc<[LayerCost]>,
    /// Stages per device: 1, or an interleaved plan's chunks ([`interleaved`](Self::interleaved)).
    pub(super) chunks: usize,
}

impl PipelinePlan {
    /// The plan of `stages` as the caller chose them (a layer range and a device each),
    /// priced and checked: a stage whose memory does not fit its device is an `Err`
    /// naming the device, the stage and the bytes, before anything is moved or run.
    /// `optimizer_slots` is the optimizer's state per parameter, in parameters (AdamW's
    /// two moments: 2).
    pub fn manual(
        costs: &[LayerCost],
        stages: Vec<(Range<usize>, Candidate)>,
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<PipelinePlan> {
        PipelinePlan::manual_with_state(costs, stages, micro_batches, optimizer_slots as f64)
    }

    /// [`manual`](Self::manual) with the optimizer's state per parameter as a fraction:
    /// a shard of it (ZeRO stage 1 over `R` replicas keeps `slots / R` on each).
    pub(crate) fn manual_with_state(
        costs: &[LayerCost],
        stages: Vec<(Range<usize>, Candidate)>,
        micro_batches: usize,
        optimizer_slots: f64,
    ) -> Result<PipelinePlan> {
        check_micro_batches(micro_batches)?;
        if stages.is_empty() || costs.is_empty() {
            return Err(Error::InvalidArgument {
                op: "PipelinePlan::manual".into(),
                device: "-".into(),
                detail: format!("{} stages over {} layers", stages.len(), costs.len()),
            });
        }
        for (i, (_, c)) in stages.iter().enumerate() {
            c.check_group("PipelinePlan::manual")?;
            for member in c.members() {
                let id = member.device.info().id;
                let other = |d: &Candidate| d.members().any(|m| m.device.info().id == id);
                if let Some(j) = stages[..i].iter().position(|(_, d)| other(d)) {
                    return Err(Error::InvalidArgument {
                        op: "PipelinePlan::manual".into(),
                        device: member.device.info().label(),
                        detail: format!("takes stages {j} and {i}: a device holds one stage"),
                    });
                }
            }
        }
        let mut next = 0;
        for (i, (layers, c)) in stages.iter().enumerate() {
            if layers.start != next || layers.is_empty() || layers.end > costs.len() {
                return Err(Error::InvalidArgument {
                    op: "PipelinePlan::manual".into(),
                    device: c.device.info().label(),
                    detail: format!(
                        "stage {i} has layers {layers:?}: stages must cover layers 0..{} in \
                         order, each at least one",
                        costs.len()
                    ),
                });
            }
            next = layers.end;
        }
        if next != costs.len() {
            return Err(Error::InvalidArgument {
                op: "PipelinePlan::manual".into(),
                device: "-".into(),
                detail: format!("the stages end at layer {next} of {}", costs.len()),
            });
        }
        let count = stages.len();
        let priced = |lodging: bool| -> Vec<StagePlan> {
            stages
                .iter()
                .enumerate()
                .map(|(s, (layers, c))| {
                    let shares = group_shares(costs, c);
                    let spot = Spot {
                        c,
                        shares: &shares,
                        from_before: per_byte(s.checked_sub(1).map(|i| &stages[i].1), c),
                        from_after: per_byte(stages.get(s + 1).map(|(_, c)| c), c),
                        s,
                        count,
                        lodging,
                        times: None,
                        held: None,
                    };
                    price(costs, layers.clone(), &spot, micro_batches, optimizer_slots)
                })
                .collect()
        };
        let plan =
            PipelinePlan { stages: priced(false), micro_batches, costs: costs.into(), chunks: 1 };
        let Err(error) = plan.check_memory() else { return Ok(plan) };
        // A stage short of room for its optimizer state may lodge it with another.
        let lodged = (optimizer_slots > 0.0).then(|| lodge(priced(true), costs, optimizer_slots));
        match lodged.flatten() {
            Some(stages) => {
                let plan = PipelinePlan { stages, micro_batches, costs: costs.into(), chunks: 1 };
                plan.check_memory().map_err(|_| error)?;
                Ok(plan)
            }
            None => Err(error),
        }
    }

    /// The best plan of `costs` (from [`profile_layers`](super::profile_layers)) over
    /// `candidates`, or an `Err` when no split of the layers fits their memory. Where
    /// interleaving the best plan's devices ([`interleaved`](Self::interleaved), 2 to 4
    /// stages each) or splitting its backward passes ([`zero_bubble`](Self::zero_bubble))
    /// plays a shorter step, the shorter of those.
    pub fn search(
        costs: &[LayerCost],
        candidates: &[Candidate],
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<PipelinePlan> {
        let slots = optimizer_slots as f64;
        let plain = PipelinePlan::search_with_state(costs, candidates, micro_batches, slots, true)?;
        // Each candidate played once.
        let plain_step = play(&plain).makespan;
        let split = plain.zero_bubble().map(|split| (play(&split).makespan, split));
        let (step, best) = match split {
            Some((step, split)) if step < plain_step => (step, split),
            _ => (plain_step, plain.clone()),
        };
        let interleaved = plain.interleaved_if_shorter(candidates, slots);
        Ok(if interleaved.chunks() > 1 && play(&interleaved).makespan < step {
            interleaved
        } else {
            best
        })
    }

    /// [`search`](Self::search) that also picks how many micro-batches a batch of `batch`
    /// rows is cut into: every count that divides it, with `costs` (profiled for
    /// micro-batches of `costs[0].rows` rows) scaled to each size, the shortest predicted
    /// step kept. Fewer, larger micro-batches launch fewer kernels, hold more activations
    /// and leave a larger bubble.
    pub fn search_batch(
        costs: &[LayerCost],
        candidates: &[Candidate],
        batch: usize,
        optimizer_slots: usize,
    ) -> Result<PipelinePlan> {
        let profiled = costs.first().map_or(0, |l| l.rows);
        if batch == 0 || profiled == 0 {
            return Err(Error::InvalidArgument {
                op: "PipelinePlan::search_batch".into(),
                device: "-".into(),
                detail: format!(
                    "a batch of {batch} rows, costs of micro-batches of {profiled} rows"
                ),
            });
        }
        let mut best: Option<(PipelinePlan, f64)> = None;
        let mut first_error = None;
        for micro_batches in (1..=batch).filter(|&m| batch.is_multiple_of(m)) {
            let scaled: Vec<LayerCost> =
                costs.iter().map(|l| l.with_rows(batch / micro_batches)).collect();
            match PipelinePlan::search(&scaled, candidates, micro_batches, optimizer_slots) {
                Ok(plan) => {
                    // Played: the formula is optimistic for some interleaved plans.
                    let step = play(&plan).makespan;
                    if best.as_ref().is_none_or(|b| step < b.1) {
                        best = Some((plan, step));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (best, first_error) {
            (Some((plan, _)), _) => Ok(plan),
            (None, Some(error)) => Err(error),
            // A batch of one row or more tries one micro-batch at least.
            (None, None) => Err(Error::InvalidArgument {
                op: "PipelinePlan::search_batch".into(),
                device: "-".into(),
                detail: format!("no micro-batch count divides a batch of {batch} rows"),
            }),
        }
    }

    /// [`search`](Self::search) with the optimizer's state per parameter as a fraction;
    /// `swaps`: whether to improve the best sorted order by swapping devices (a few hundred
    /// more cuts to try).
    pub(crate) fn search_with_state(
        costs: &[LayerCost],
        candidates: &[Candidate],
        micro_batches: usize,
        optimizer_slots: f64,
        swaps: bool,
    ) -> Result<PipelinePlan> {
        check_micro_batches(micro_batches)?;
        if candidates.is_empty() || costs.is_empty() {
            return Err(Error::InvalidArgument {
                op: "PipelinePlan::search".into(),
                device: "-".into(),
                detail: format!("{} candidates for {} layers", candidates.len(), costs.len()),
            });
        }
        // A device listed twice would be counted twice: the first listing stands.
        let mut seen = std::collections::HashSet::new();
        let mut usable: Vec<&Candidate> = Vec::with_capacity(candidates.len());
        for c in candidates {
            c.check_group("PipelinePlan::search")?;
            let priced =
                |m: &Candidate| costs.iter().all(|l| l.forward_secs(&m.profile).is_finite());
            if c.members().all(|m| !seen.contains(&m.device.info().id) && priced(m)) {
                seen.extend(c.members().map(|m| m.device.info().id));
                usable.push(c);
            }
        }
        let search = Search::new(costs, usable.clone(), micro_batches, optimizer_slots);
        let as_given: Vec<usize> = (0..usable.len()).collect();
        let mut fastest = as_given.clone();
        fastest.sort_by(|&a, &b| search.whole(a).total_cmp(&search.whole(b)));
        let mut roomiest = as_given.clone();
        roomiest.sort_by_key(|&i| std::cmp::Reverse(usable[i].memory));
        let mut best: Option<(PipelinePlan, &Vec<usize>, usize)> = None;
        for order in [&as_given, &fastest, &roomiest] {
            // Stage counts on a grid, then every count between the best one's neighbours
            // on it: a step's time varies smoothly with the count, and long pipelines over
            // big fleets have many.
            let most = order.len().min(costs.len());
            let grid = stage_counts(most);
            let mut tried = vec![None; most + 1];
            let mut try_count = |count: usize| -> Option<f64> {
                *tried[count].get_or_insert_with(|| {
                    let plan = search.best_for(&order[..count])?;
                    let step = plan.predicted_step_s();
                    if best.as_ref().is_none_or(|b| step < b.0.predicted_step_s()) {
                        best = Some((plan, order, count));
                    }
                    Some(step)
                })
            };
            let steps: Vec<Option<f64>> = grid.iter().map(|&c| try_count(c)).collect();
            let at = (0..grid.len()).filter(|&i| steps[i].is_some()).min_by(|&a, &b| {
                steps[a].unwrap_or(f64::MAX).total_cmp(&steps[b].unwrap_or(f64::MAX))
            });
            if let Some(at) = at {
                let from = if at > 0 { grid[at - 1] + 1 } else { 1 };
                let to = grid.get(at + 1).map_or(most, |&c| c - 1);
                for count in from..=to {
                    try_count(count);
                }
            }
        }
        let swapped = |(plan, order, count): (PipelinePlan, &Vec<usize>, usize)| match swaps {
            true => search.swapped(plan, order.clone(), count),
            false => plan,
        };
        best.map(swapped).ok_or_else(|| {
            let offered: u64 = usable.iter().flat_map(|c| c.members()).map(|m| m.memory).sum();
            let params = params_in(costs, &(0..costs.len()));
            let needed = (params as f64 * (2.0 + optimizer_slots)) as u64;
            Error::OutOfMemory {
                op: "PipelinePlan::search".into(),
                device: usable
                    .iter()
                    .map(|c| c.device.info().label())
                    .collect::<Vec<_>>()
                    .join(", "),
                detail: format!(
                    "no split of {} layers fits: parameters, gradients and optimizer state \
                     alone take {needed} bytes, {offered} are offered in all{}",
                    costs.len(),
                    if usable.len() < candidates.len() {
                        " (devices listed twice, or that cannot be priced, left out)"
                    } else {
                        ""
                    }
                ),
            }
        })
    }

    /// The layers' costs the plan was made from.
    pub fn costs(&self) -> &[LayerCost] {
        &self.costs
    }

    /// Predicted seconds of one step under 1F1B: a micro-batch's trip through every stage
    /// and back, `M − 1` more at the pipeline's pace ([`pace_s`](Self::pace_s)), then what
    /// the drain leaves of the syncs ([`step_end`](Self::step_end)), and what the fill
    /// does not hide of lodged values coming back ([`refill_s`](Self::refill_s)).
    ///
    /// Interleaved over `v` chunks a device, the trip is through chunks of `1/v` of a
    /// device's layers: the fill and drain take `1/v` of it, and the micro-batches `M − 1/v`
    /// paces (Megatron-LM's `(M + (D − 1)/v)` stage times, for even stages). Where `M` is
    /// not a multiple of the devices, the last, smaller group waits on the fill like a
    /// whole one: the step is longer than this ([`play`](super::play) it).
    pub fn predicted_step_s(&self) -> f64 {
        // The zero-bubble order is itself found by playing the plan.
        if self.splits_backward() {
            return super::play(self).makespan;
        }
        let sum: f64 = self.stages.iter().map(StagePlan::trip_s).sum();
        let v = self.chunks as f64;
        let m = self.micro_batches as f64;
        let paces = if m > 0.0 { m - 1.0 / v } else { 0.0 };
        self.step_end(&self.drained(sum / v + paces * self.pace_s())) + self.refill_s()
    }

    /// Stages per device: 1, or an interleaved plan's chunks.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The devices the stages run on: stage `s` on device `s % devices()`.
    pub fn devices(&self) -> usize {
        self.stages.len() / self.chunks.max(1)
    }

    /// Predicted seconds per micro-batch in the steady state: the slowest stage's
    /// [`time`](StagePlan::time), or, where it is longer, a round trip's share. Under 1F1B
    /// stage `s` starts micro-batch `m + S − s` just after `m`'s backward pass, which
    /// waits on `m`'s passes through every later stage and its copies both ways: that
    /// chain, over the `S − s` micro-batches it spans, bounds the pace. Copies that are
    /// hidden behind a stage's own work still lengthen the chain, so wide activations
    /// between well-balanced stages slow the pipeline down.
    ///
    /// Interleaved, a device's chunks take turns: its pace is the sum of theirs, and the
    /// slowest device's sets the pipeline's.
    pub fn pace_s(&self) -> f64 {
        if self.chunks > 1 {
            let devices = self.devices();
            return (0..devices)
                .map(|d| self.stages.iter().skip(d).step_by(devices).map(StagePlan::time).sum())
                .fold(0.0, f64::max);
        }
        let slowest = self.stages.iter().map(StagePlan::time).fold(0.0, f64::max);
        let mut chain = 0.0;
        let mut pace = slowest;
        for (s, stage) in self.stages.iter().enumerate().rev() {
            // A split stage's weights' part is off the chain (it still counts in `time`).
            chain += stage.forward_s + stage.input_s() + stage.receive_backward_s;
            // With no micro-batch `m + S − s` there is no such wait.
            let spans = self.stages.len() - s;
            if spans < self.micro_batches {
                pace = f64::max(pace, chain / spans as f64);
            }
            // Stage `s`'s own input is not in its chain, but in the ones before.
            chain += stage.receive_forward_s;
        }
        pace
    }

    /// Predicted seconds a step spends on the stages' syncs (groups gathering gradients and
    /// handing out values, lodged optimizer state updated and sent back) that its drain
    /// and its fill do not hide.
    pub fn sync_s(&self) -> f64 {
        self.step_end(&self.drained(0.0)) + self.refill_s()
    }

    /// Seconds the fill of a step waits on lodged values beyond its own pace: a stage
    /// reads its new values ([`StagePlan::values_s`]) before its first forward pass, which
    /// otherwise starts once the stages before it have passed it the first micro-batch.
    /// The first to wait holds up that micro-batch, and the step, by as long.
    pub fn refill_s(&self) -> f64 {
        let back = self.values_back();
        if self.chunks != 1 {
            return back.into_iter().fold(0.0, f64::max);
        }
        let (mut first_input, mut wait) = (0.0, 0.0f64);
        for (stage, back) in self.stages.iter().zip(back) {
            first_input += stage.receive_forward_s;
            wait = wait.max(back - first_input);
            first_input += stage.forward_s;
        }
        wait
    }

    /// When each stage's lodged values are back as its step starts: its own
    /// [`values_s`](StagePlan::values_s), or, where a host sends to several stages at once,
    /// when that host's link has sent all of theirs.
    pub(super) fn values_back(&self) -> Vec<f64> {
        let mut sending: FxHashMap<DeviceId, f64> = FxHashMap::default();
        let link = |host: &StateHost| {
            let id = host.device.info().id;
            self.stages.iter().find(|s| s.device.info().id == id).map(|s| s.link_bytes_per_s)
        };
        for host in self.stages.iter().flat_map(|s| &s.state_on) {
            if let Some(rate) = link(host) {
                let values = values_in(&self.costs, &host.layers);
                *sending.entry(host.device.info().id).or_default() += host_leg_s(values, rate);
            }
        }
        (self.stages.iter())
            .map(|stage| {
                let hosts = stage.state_on.iter().map(|h| sending.get(&h.device.info().id));
                hosts.fold(stage.values_s, |back, host| back.max(host.copied().unwrap_or(0.0)))
            })
            .collect()
    }

    /// When each stage does its last unit of work under the 1F1B formula, for a step whose
    /// last backward pass (stage 0's) ends at `last`: each stage's a backward pass (and the
    /// copy of its gradient) before the next one's. Interleaved, all at `last` (the drain
    /// is shorter; the syncs are priced as if it hid none of them).
    fn drained(&self, last: f64) -> Vec<f64> {
        let mut ended = Vec::with_capacity(self.stages.len());
        let mut at = last;
        for stage in &self.stages {
            ended.push(at);
            if self.chunks == 1 {
                at -= stage.input_s() + stage.receive_backward_s;
            }
        }
        ended
    }

    /// When a step ends, given when each stage did its last unit of work (`ended`): each
    /// stage's gradients leave as soon as it is done (a group's helpers' to its lead, a
    /// lodged stage's to its state's host), every device's link carrying its own in turn;
    /// the updates and a group's new values on the way to its helpers wait for all of
    /// them (the clip reads their global norm), then run at once, each link carrying its
    /// own. A lodged stage's new values come back in the next step's fill
    /// ([`refill_s`](Self::refill_s)).
    pub fn step_end(&self, ended: &[f64]) -> f64 {
        let (gathered, after) = self.sync_phases(ended);
        gathered + after
    }

    /// [`step_end`](Self::step_end) in its two phases: when every gradient is in place, and
    /// the seconds after that.
    pub(super) fn sync_phases(&self, ended: &[f64]) -> (f64, f64) {
        // Per device (by id): its link's gathers (ready at, seconds), and its seconds after.
        let mut links: FxHashMap<DeviceId, (Vec<(f64, f64)>, f64)> = FxHashMap::default();
        let id = |s: &StagePlan| s.device.info().id;
        for (stage, &end) in self.stages.iter().zip(ended) {
            let link = links.entry(id(stage)).or_default();
            link.0.push((end, stage.gather_s));
            link.1 += stage.sync_s - stage.gather_s - stage.values_s;
            for state in &stage.state_on {
                // The host's link carries its part's gradients in too.
                let host = state.device.info().id;
                if let Some(h) = self.stages.iter().find(|s| id(s) == host) {
                    let params = params_in(&self.costs, &state.layers);
                    let leg = host_leg_s(params, h.link_bytes_per_s);
                    links.entry(host).or_default().0.push((end, leg));
                }
            }
        }
        let mut gathered = ended.iter().copied().fold(0.0, f64::max);
        let mut after = 0.0f64;
        for (mut gathers, seconds_after) in links.into_values() {
            gathers.sort_by(|a, b| a.0.total_cmp(&b.0));
            let done = gathers.iter().fold(f64::MIN, |t, &(ready, secs)| t.max(ready) + secs);
            gathered = gathered.max(done);
            after = after.max(seconds_after);
        }
        (gathered, after)
    }

    /// The share of the devices' time a step leaves idle (the pipeline's bubble).
    pub fn bubble(&self) -> f64 {
        let busy: f64 =
            self.stages.iter().map(StagePlan::time).sum::<f64>() * self.micro_batches as f64;
        let span = self.predicted_step_s() * self.devices() as f64;
        if span > 0.0 { (1.0 - busy / span).max(0.0) } else { 0.0 }
    }

    /// A table per stage: layers, device, memory used and offered, predicted times; then
    /// the step and its bubble. `measured` adds each stage's measured seconds per
    /// micro-batch where known.
    pub fn explain_with(&self, measured: Option<&[f64]>) -> String {
        let schedule = match self.chunks {
            _ if self.splits_backward() => {
                "zero-bubble 1F1B (ZB-H1; `w`: backward passes split, the weights' part later)"
                    .to_string()
            }
            1 => "1F1B".to_string(),
            v => format!("interleaved 1F1B over {} devices, {v} stages each", self.devices()),
        };
        let mut out = format!(
            "pipeline: {} stages, {} micro-batches, {schedule}\n{:<7} {:<11} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            self.stages.len(),
            self.micro_batches,
            "stage",
            "layers",
            "device",
            "mem MiB",
            "free MiB",
            "fwd ms",
            "bwd ms",
            "meas ms",
        );
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        // Free: what the device has left once all its stages hold theirs.
        let devices = self.devices().max(1);
        let held: Vec<u64> = (0..devices)
            .map(|d| self.stages.iter().skip(d).step_by(devices).map(|s| s.memory.total()).sum())
            .collect();
        for (s, stage) in self.stages.iter().enumerate() {
            let measured = measured
                .and_then(|m| m.get(s))
                .map_or("-".to_string(), |t| format!("{:.3}", t * 1e3));
            let _ = writeln!(
                out,
                "{:<7} {:<11} {:<16} {:>10.1} {:>10.1} {:>10.3} {:>10.3} {:>10}",
                s,
                format!(
                    "{}..{}{}{}",
                    stage.layers.start,
                    stage.layers.end,
                    stage.recompute_mark(),
                    if stage.split.is_some() { " w" } else { "" }
                ),
                stage.label,
                mib(stage.memory.total()),
                mib(stage.available.saturating_sub(held[s % devices])),
                stage.forward_s * 1e3,
                stage.backward_s * 1e3,
                measured,
            );
            for host in &stage.state_on {
                let _ = writeln!(
                    out,
                    "{:<7} {:<11} {:<16} {:>10.1}",
                    "",
                    format!("{}..{}", host.layers.start, host.layers.end),
                    format!("state on {}", host.label),
                    mib(host.bytes),
                );
            }
            for helper in &stage.helpers {
                let _ = writeln!(
                    out,
                    "{:<7} {:<11} {:<16} {:>10.1} {:>10.1}",
                    "",
                    format!("+{:.0}% rows", helper.share * 100.0),
                    helper.label,
                    mib(helper.memory.total()),
                    mib(helper.available.saturating_sub(helper.memory.total())),
                );
            }
        }
        let slowest = self.stages.iter().map(StagePlan::time).fold(0.0, f64::max);
        let pace = self.pace_s();
        let _ = writeln!(
            out,
            "predicted step {:.3} ms, pace {:.3} ms a micro-batch{}, bubble {:.1}%{}",
            self.predicted_step_s() * 1e3,
            pace * 1e3,
            // Where the round trip's copies, not the slowest stage, set it.
            if self.chunks == 1 && pace > slowest * (1.0 + 1e-9) {
                " (the round trip's)"
            } else {
                ""
            },
            self.bubble() * 100.0,
            if self.stages.iter().any(|s| !s.recompute.is_empty()) {
                " (rc: activations recomputed in the backward pass, of how many layers)"
            } else {
                ""
            }
        );
        out
    }

    /// [`explain_with`](Self::explain_with) the predictions alone.
    pub fn explain(&self) -> String {
        self.explain_with(None)
    }

    pub(super) fn check_memory(&self) -> Result<()> {
        if self.chunks > 1 {
            return self.check_device_memory();
        }
        for (s, stage) in self.stages.iter().enumerate() {
            stage.check_memory(s)?;
        }
        Ok(())
    }

    /// Interleaved: each device's chunks together within its memory.
    fn check_device_memory(&self) -> Result<()> {
        let devices = self.devices();
        for d in 0..devices {
            let chunks: Vec<(usize, &StagePlan)> =
                self.stages.iter().enumerate().skip(d).step_by(devices).collect();
            let need: u64 = chunks.iter().map(|(_, c)| c.memory.total()).sum();
            let available = chunks[0].1.available;
            if need <= available {
                continue;
            }
            let parts: Vec<String> = chunks
                .iter()
                .map(|(s, c)| {
                    format!(
                        "stage {s} (layers {}..{}) {} (parameters {}, activations {})",
                        c.layers.start,
                        c.layers.end,
                        c.memory.total(),
                        c.memory.params,
                        c.memory.activations
                    )
                })
                .collect();
            return Err(Error::OutOfMemory {
                op: "PipelinePlan::interleaved".into(),
                device: chunks[0].1.label.clone(),
                detail: format!(
                    "its {} chunks need {need} bytes ({}) and the device offers {available}",
                    chunks.len(),
                    parts.join(", ")
                ),
            });
        }
        Ok(())
    }
}

pub(super) fn check_micro_batches(micro_batches: usize) -> Result<()> {
    if micro_batches == 0 {
        return Err(Error::InvalidArgument {
            op: "PipelinePlan".into(),
            device: "-".into(),
            detail: "a step needs at least one micro-batch".into(),
        });
    }
    Ok(())
}

/// Where a stage sits: its device (or group, with each member's share of the rows), its
/// neighbours' devices, and its place in the pipeline.
pub(super) struct Spot<'a> {
    pub c: &'a Candidate,
    pub shares: &'a [f64],
    /// Seconds per byte of a copy from the stage before (0 for the first stage) and from
    /// the one after (0 for the last): worked out once per spot, not per priced cut.
    pub from_before: f64,
    pub from_after: f64,
    pub s: usize,
    pub count: usize,
    /// Priced without the lead's optimizer state, which [`lodge`] places afterwards.
    pub lodging: bool,
    /// Per member, each layer's forward and backward seconds on its share, where known
    /// (the search has them at hand).
    pub times: Option<&'a [Vec<(f64, f64)>]>,
    /// The most micro-batches in flight, where not 1F1B's for stage `s` of `count`
    /// (a chunk of an interleaved plan).
    pub held: Option<usize>,
}

impl Spot<'_> {
    /// Layer `l`'s forward seconds on member `k` (of `profile`, taking `share`).
    fn forward_s(
        &self,
        costs: &[LayerCost],
        k: usize,
        l: usize,
        share: f64,
        profile: &DeviceProfile,
    ) -> f64 {
        match self.times {
            Some(times) => times[k][l].0,
            None => member_times(&costs[l], share, profile).0,
        }
    }
}

/// Stage counts worth trying first, up to `most`: every count to 12, then about a tenth
/// apart.
fn stage_counts(most: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = (1..=most.min(12)).collect();
    let mut c = 12.0f64;
    while (c as usize) < most {
        c *= 1.1;
        counts.push((c.ceil() as usize).min(most));
    }
    counts.dedup();
    counts
}

/// Each member's share of a micro-batch's rows: whole rows in proportion to its speed on
/// the whole model, as the runtime cuts them (`[1]` for a device alone).
fn group_shares(costs: &[LayerCost], c: &Candidate) -> Vec<f64> {
    if c.helpers.is_empty() {
        return vec![1.0];
    }
    let whole = |p: &DeviceProfile| {
        costs.iter().map(|l| l.forward_secs(p) + l.backward_secs(p)).sum::<f64>()
    };
    let rates: Vec<f64> = c.members().map(|m| 1.0 / whole(&m.profile)).collect();
    let rows = costs.first().map_or(0, |l| l.rows);
    match proportional(&rates, rows).filter(|_| rows > 0) {
        Some(counts) => counts.iter().map(|&n| n as f64 / rows as f64).collect(),
        None => {
            let total: f64 = rates.iter().sum();
            rates.iter().map(|r| r / total).collect()
        }
    }
}

/// `bytes` scaled to a member's share of the rows.
fn part(bytes: usize, share: f64) -> u64 {
    (bytes as f64 * share) as u64
}

/// Running sums over a stage's layers on one member, for its share of the rows.
#[derive(Clone, Copy, Default)]
struct Sums {
    forward_s: f64,
    backward_s: f64,
    params: u64,
    copies: u64,
    /// Of `params`, those cast for its matmuls ([`LayerCost::cast_bytes`]).
    casts: u64,
    kept: u64,
    /// The most one layer's backward pass holds beyond what is kept: the gradients of what
    /// its forward pass wrote (or, recomputing, its activations), its transients, the
    /// gradient of its output, and its input's two (a residual layer's input gets one
    /// through the branch and one around it, then their sum).
    largest: u64,
}

impl Sums {
    /// Layer `l` of `costs` added, on a member taking `share` of the rows.
    fn add(
        &mut self,
        costs: &[LayerCost],
        l: usize,
        share: f64,
        (forward_s, backward_s): (f64, f64),
    ) {
        let layer = &costs[l];
        let input = l.checked_sub(1).map_or(0, |i| costs[i].output_bytes);
        self.forward_s += forward_s;
        self.backward_s += backward_s;
        self.params += layer.param_bytes as u64;
        self.copies += layer.copy_bytes as u64;
        self.casts += layer.cast_bytes as u64;
        self.kept += part(layer.activation_bytes, share);
        let made = layer.written_bytes.max(layer.activation_bytes);
        let backward = made + layer.transient_bytes + layer.output_bytes + 2 * input;
        self.largest = self.largest.max(part(backward, share));
    }
}

/// What a fill needs of a stage's price, by its place and its layers.
#[derive(Default)]
struct Memo {
    /// Each place seen (the devices before, at and after the stage, its index, the stage
    /// count, whether state lodges), numbered.
    places: FxHashMap<(usize, usize, usize, usize, usize, bool), u64>,
    /// By place number and first layer, the prices by end (one lookup a stage and fill;
    /// a fill's bisection over the ends then indexes).
    priced: FxHashMap<(u64, usize), Vec<Option<Priced>>>,
}

#[derive(Clone, Copy)]
struct Priced {
    /// Whether the lead and every helper have the room.
    fits: bool,
    /// [`StageCost::time`].
    time: f64,
    /// Its passes and both copies in.
    round_trip: f64,
    recomputes: bool,
    /// The lead's memory, all of it.
    total: u64,
}

/// A stage's predicted times and memory: the lead's memory, and each helper's.
#[derive(Clone)]
struct StageCost {
    forward_s: f64,
    backward_s: f64,
    receive_forward_s: f64,
    receive_backward_s: f64,
    memory: StageMemory,
    helpers: Vec<StageMemory>,
    sync_s: f64,
    gather_s: f64,
    /// The layers whose activations are recomputed in the backward pass, ascending.
    recompute: Vec<usize>,
}

impl StageCost {
    fn time(&self) -> f64 {
        stage_time(self.forward_s, self.backward_s, self.receive_forward_s, self.receive_backward_s)
    }

    fn fits(&self, c: &Candidate) -> bool {
        self.memory.total() <= c.memory
            && self.helpers.iter().zip(&c.helpers).all(|(m, h)| m.total() <= h.memory)
    }
}

/// Seconds to move `bytes` from `from`'s device to `to`'s: once over their peer links where
/// the one reaches the other ([`Device::reaches`](crate::Device::reaches)) and both links'
/// rates are known, at the slower; else through the host, the sender's download and then
/// the receiver's upload.
pub(super) fn copy_s(from: &Candidate, to: &Candidate, bytes: u64) -> f64 {
    bytes as f64 * per_byte(Some(from), to)
}

/// [`copy_s`] per byte; 0 where there is no sender.
pub(super) fn per_byte(from: Option<&Candidate>, to: &Candidate) -> f64 {
    let Some(from) = from else { return 0.0 };
    match (from.profile.peer_bytes_per_s, to.profile.peer_bytes_per_s) {
        (Some(a), Some(b)) if from.device.reaches(&*to.device) => 1.0 / a.min(b),
        _ => {
            1.0 / from.profile.device_to_host_bytes_per_s
                + 1.0 / to.profile.host_to_device_bytes_per_s
        }
    }
}

/// The cost of `layers` (summed per member in `sums`) at `spot`: keeping every
/// micro-batch's activations where they fit; otherwise recomputing some layers' in the
/// backward pass, those that free the most bytes per second of forward pass first, until
/// they fit (all of them, if nothing less does).
fn stage_cost(
    costs: &[LayerCost],
    layers: &Range<usize>,
    sums: &[Sums],
    spot: &Spot<'_>,
    micro_batches: usize,
    slots: f64,
) -> StageCost {
    let input_bytes = layers.start.checked_sub(1).map_or(0, |i| costs[i].output_bytes);
    let output_bytes = costs[layers.end - 1].output_bytes;
    let receive_forward_s = input_bytes as f64 * spot.from_before;
    let receive_backward_s = output_bytes as f64 * spot.from_after;
    let in_flight =
        spot.held.unwrap_or_else(|| in_flight(spot.s, spot.count, micro_batches)) as u64;
    let lead = spot.c;
    // A stage reads its next input and its next gradient ahead of its work.
    let from_next = if spot.s + 1 < spot.count { output_bytes as u64 } else { 0 };
    let read_ahead = input_bytes as u64 + from_next;
    let last = spot.s + 1 == spot.count;
    // The last stage's loss keeps what its own graph saved through each backward pass,
    // which no layer's cost counts: for a cross-entropy, about two f32 copies of the
    // logits (their probabilities, and the gradient made of them).
    let loss_bytes = match last {
        true => 2 * 4 * output_bytes / costs[layers.end - 1].dtype.size_in_bytes().max(1),
        false => 0,
    };
    let cost = |recompute: &[usize]| {
        let all = recompute.len() == layers.len();
        let mut stage = StageCost {
            forward_s: 0.0,
            backward_s: 0.0,
            receive_forward_s,
            receive_backward_s,
            memory: StageMemory::default(),
            helpers: Vec::with_capacity(lead.helpers.len()),
            sync_s: 0.0,
            gather_s: 0.0,
            recompute: recompute.to_vec(),
        };
        for (k, ((member, sums), &share)) in lead.members().zip(sums).zip(spot.shares).enumerate() {
            // The lead's part of a received input is a view of the whole, which it keeps.
            let input = if k == 0 { input_bytes as u64 } else { part(input_bytes, share) };
            // The last stage's members turn their rows into losses: nothing to gather.
            let output = if last { 0 } else { part(output_bytes, share) };
            // A helper's rows come from the lead, and what it makes of them goes back.
            let (copy_forward, copy_backward) = if k == 0 {
                (0.0, 0.0)
            } else {
                let (there, back) = (|b| copy_s(lead, member, b), |b| copy_s(member, lead, b));
                (there(input) + back(output), there(output) + back(input))
            };
            let joined = part(costs[layers.end - 1].joined_bytes, share);
            // Ending here, the stage keeps the join and frees the parts the last layer's
            // activations count (which a next layer of the stage would have kept).
            let ending = joined.saturating_sub(part(costs[layers.end - 1].handed_bytes, share));
            let last_again = recompute.last() == Some(&(layers.end - 1));
            let layer_forward = |l: usize| spot.forward_s(costs, k, l, share, &member.profile);
            let again = recomputed(costs, recompute, layers, sums, share, layer_forward);
            // Joining the output to hand it on: a launch writing it (and reading its parts).
            let join = match joined {
                0 => 0.0,
                bytes => member.profile.latency_s + 2.0 * bytes as f64 / member.profile.bytes_per_s,
            };
            stage.forward_s = stage.forward_s.max(sums.forward_s + join + copy_forward);
            stage.backward_s =
                stage.backward_s.max(sums.backward_s + again.forward_s + copy_backward);
            let memory = StageMemory {
                // Where its state and master copies are lodged, the lead keeps only the
                // copies its forward passes read (until [`lodge`] keeps some at home).
                params: match k == 0 && spot.lodging {
                    true => sums.params.saturating_sub(sums.casts),
                    false => sums.params,
                },
                copies: sums.copies,
                grads: sums.params,
                // The lead alone keeps optimizer state; helpers copy the updated values.
                optimizer: if k == 0 && !spot.lodging {
                    state_bytes(sums.params, slots)
                } else {
                    0
                },
                // Each micro-batch in flight keeps its input, the kept layers' activations
                // and the input of every run of layers after the first; during a backward
                // pass, one micro-batch's recomputed activations live too. An output joined
                // to be handed on is kept with the last layer's activations.
                activations: if all {
                    in_flight * input + sums.kept + ending
                } else if last_again {
                    in_flight * (input + sums.kept - again.kept + again.inputs)
                        + again.kept
                        + ending
                } else {
                    in_flight * (input + sums.kept - again.kept + again.inputs + ending)
                        + again.kept
                },
                // The lead holds the output's gradient as it arrives, and in a group also the
                // members' parts of the output (and of that gradient) as it gathers (cuts);
                // and the next micro-batch's input and gradient, read ahead. A helper holds
                // its part of the output until sent, and of its gradient as it arrives.
                workspace: sums.largest
                    + match (k, lead.helpers.len()) {
                        (0, 0) => output_bytes as u64,
                        (0, _) => 2 * output_bytes as u64,
                        _ => 2 * output,
                    }
                    + if k == 0 { read_ahead } else { 0 }
                    + part(loss_bytes, share),
                lodged: 0,
            };
            if k == 0 {
                stage.memory = memory;
            } else {
                stage.helpers.push(memory);
                let gather = copy_s(member, lead, sums.params);
                stage.sync_s += gather + copy_s(lead, member, sums.params);
                stage.gather_s += gather;
            }
        }
        stage
    };
    let keeping = cost(&[]);
    if keeping.fits(lead) || in_flight <= 1 {
        return keeping;
    }
    let everything: Vec<usize> = layers.clone().collect();
    let all = cost(&everything);
    if !all.fits(lead) || layers.len() == 1 {
        return all;
    }
    // Recompute first the layers that free the most per second their forward pass takes
    // again (on the lead): the fewest of them that fit, found by bisection (freeing more
    // layers frees more memory, but for the inputs of the runs they split off).
    let lead_share = spot.shares[0];
    let mut freed: Vec<(f64, usize)> = everything
        .iter()
        .map(|&l| {
            let forward = spot.forward_s(costs, 0, l, lead_share, &lead.profile);
            // The last layer's join goes with its activations.
            let joined = if l + 1 == layers.end { costs[l].joined_bytes } else { 0 };
            ((costs[l].activation_bytes + joined) as f64 / forward.max(1e-12), l)
        })
        .collect();
    freed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let order: Vec<usize> = freed.into_iter().map(|(_, l)| l).collect();
    let first = |n: usize| {
        let mut chosen = order[..n].to_vec();
        chosen.sort_unstable();
        cost(&chosen)
    };
    let (mut lo, mut hi, mut best) = (0, order.len(), all);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let partly = first(mid);
        if partly.fits(lead) {
            (hi, best) = (mid, partly);
        } else {
            lo = mid;
        }
    }
    best
}

/// What recomputing `recompute` (ascending, within `layers`) costs a member taking `share`
/// of the rows: its forward passes again, the bytes its layers keep (which now live only
/// in a backward pass), and the inputs of the runs of layers after the first (kept
/// alongside the stage's input).
struct Recomputed {
    forward_s: f64,
    kept: u64,
    inputs: u64,
}

fn recomputed(
    costs: &[LayerCost],
    recompute: &[usize],
    layers: &Range<usize>,
    sums: &Sums,
    share: f64,
    layer_forward: impl Fn(usize) -> f64,
) -> Recomputed {
    if recompute.is_empty() {
        return Recomputed { forward_s: 0.0, kept: 0, inputs: 0 };
    }
    if recompute.len() == layers.len() {
        return Recomputed { forward_s: sums.forward_s, kept: sums.kept, inputs: 0 };
    }
    let mut again = Recomputed { forward_s: 0.0, kept: 0, inputs: 0 };
    for &l in recompute {
        again.forward_s += layer_forward(l);
        again.kept += part(costs[l].activation_bytes, share);
    }
    debug_assert!(
        recompute.windows(2).all(|w| w[0] < w[1]) && recompute.iter().all(|l| layers.contains(l)),
        "recompute {recompute:?} is not ascending within {layers:?}"
    );
    // One walk over the layers beside the ascending `recompute` (this is the planner's
    // innermost loop).
    let mut next = recompute.iter().peekable();
    let mut before = None;
    for l in layers.clone() {
        let this = next.next_if_eq(&&l).is_some();
        if before.is_some_and(|b| b != this) {
            again.inputs += part(costs[l - 1].output_bytes, share);
        }
        before = Some(this);
    }
    again
}

/// `layers` as the stage at `spot`, priced.
pub(super) fn price(
    costs: &[LayerCost],
    layers: Range<usize>,
    spot: &Spot<'_>,
    micro_batches: usize,
    slots: f64,
) -> StagePlan {
    let sums: Vec<Sums> = spot
        .c
        .members()
        .zip(spot.shares)
        .map(|(member, &share)| {
            let mut sums = Sums::default();
            for l in layers.clone() {
                sums.add(costs, l, share, member_times(&costs[l], share, &member.profile));
            }
            sums
        })
        .collect();
    let cost = stage_cost(costs, &layers, &sums, spot, micro_batches, slots);
    let helpers = spot
        .c
        .helpers
        .iter()
        .zip(&spot.shares[1..])
        .zip(cost.helpers)
        .map(|((h, &share), memory)| HelperPlan {
            device: h.device.clone(),
            label: h.device.info().label(),
            share,
            memory,
            available: h.memory,
        })
        .collect();
    let weight_s = match spot.c.helpers.is_empty() {
        true => layers.clone().map(|l| costs[l].weight_secs(&spot.c.profile)).sum(),
        false => 0.0,
    };
    StagePlan {
        layers,
        device: spot.c.device.clone(),
        label: spot.c.device.info().label(),
        forward_s: cost.forward_s,
        backward_s: cost.backward_s,
        receive_forward_s: cost.receive_forward_s,
        receive_backward_s: cost.receive_backward_s,
        weight_s,
        split: None,
        memory: cost.memory,
        available: spot.c.memory,
        link_bytes_per_s: spot
            .c
            .profile
            .host_to_device_bytes_per_s
            .min(spot.c.profile.device_to_host_bytes_per_s),
        recompute: cost.recompute,
        helpers,
        share: spot.shares[0],
        sync_s: cost.sync_s,
        gather_s: cost.gather_s,
        values_s: 0.0,
        state_on: Vec::new(),
    }
}

/// Optimizer state of `params` bytes of parameters at `slots` per parameter.
fn state_bytes(params: u64, slots: f64) -> u64 {
    (params as f64 * slots) as u64
}

/// What a host keeps for a stage whose state it takes: a master copy of the parameters,
/// room for the gradients that arrive, and the state.
fn lodged_bytes(params: u64, slots: f64) -> u64 {
    (params as f64 * (slots + 2.0)) as u64
}

/// What a stage keeps at home for layer `layer`'s state: the state, and the master copies
/// of the parameters it casts for its matmuls, which a stage priced as lodging does not
/// keep otherwise (its forward passes read the copies).
fn at_home_bytes(costs: &[LayerCost], layer: usize, slots: f64) -> u64 {
    state_bytes(costs[layer].param_bytes as u64, slots) + costs[layer].cast_bytes as u64
}

/// Seconds `bytes` (a lodged stage's gradients or its new values) take over one end's link
/// (`bytes_per_s`).
fn host_leg_s(bytes: u64, bytes_per_s: f64) -> f64 {
    bytes as f64 / bytes_per_s
}

/// The parameters' bytes of `layers`.
fn params_in(costs: &[LayerCost], layers: &Range<usize>) -> u64 {
    layers.clone().map(|l| costs[l].param_bytes as u64).sum()
}

/// What the new values of `layers`' lodged parameters take on their way back from their
/// host: the copies the stage's forward passes read (those cast for its matmuls in the
/// compute dtype, the others as they are).
fn values_in(costs: &[LayerCost], layers: &Range<usize>) -> u64 {
    let values = |l: &LayerCost| l.param_bytes.saturating_sub(l.cast_bytes) + l.copy_bytes;
    layers.clone().map(|l| values(&costs[l]) as u64).sum()
}

/// A stage's state placed: per host (a stage index; the stage's own where it keeps some),
/// the run of the stage's layers whose state it keeps and the bytes it keeps for them.
/// Empty: all at home.
type Hosts = Vec<(usize, Range<usize>, u64)>;

/// A home for each stage's optimizer state, given per stage its memory need without that
/// state, its layers and its device's memory: its own device where the whole state fits
/// beside the rest; else, largest first, layer by layer: at home while its own device has
/// room, then on the stage devices with the most room left, a run of layers on each while
/// it has room. Lodging a stage's state whole would need one host with room for all of
/// it: a deep model's fast, small chips can need more than any one chip has spare, though
/// the fleet has plenty. `None` when some state finds no room.
fn homes(
    stages: &[(u64, Range<usize>, u64)],
    costs: &[LayerCost],
    slots: f64,
) -> Option<Vec<Hosts>> {
    let mut placed: Vec<Hosts> = vec![Vec::new(); stages.len()];
    place_states(stages, costs, slots, |s, host, layer, bytes| match placed[s].last_mut() {
        Some((h, run, kept)) if *h == host => {
            run.end = layer + 1;
            *kept += bytes;
        }
        _ => placed[s].push((host, layer..layer + 1, bytes)),
    })?;
    Some(placed)
}

/// [`homes`]' placement, handing each layer's state of the stages that do not keep all
/// of theirs to `placed(stage, host, layer, bytes)` in order; `None` when some state
/// finds no room.
fn place_states(
    stages: &[(u64, Range<usize>, u64)],
    costs: &[LayerCost],
    slots: f64,
    mut placed: impl FnMut(usize, usize, usize, u64),
) -> Option<()> {
    let mut free: Vec<i128> =
        stages.iter().map(|(need, _, memory)| *memory as i128 - *need as i128).collect();
    let mut rest = Vec::new();
    for (s, (_, layers, _)) in stages.iter().enumerate() {
        let state: u64 = layers.clone().map(|l| at_home_bytes(costs, l, slots)).sum();
        match state as i128 <= free[s] {
            true => free[s] -= state as i128,
            false => rest.push(s),
        }
    }
    rest.sort_by_key(|&s| std::cmp::Reverse(params_in(costs, &stages[s].1)));
    for s in rest {
        let mut host = None;
        // What the zero-bubble schedule needs to split its backward passes: room its own
        // state does not take.
        let layers = stages[s].1.clone();
        let (kept, weights_part) = split_needs(costs, &layers);
        let split = kept + weights_part;
        for layer in layers {
            let params = costs[layer].param_bytes as u64;
            let home = at_home_bytes(costs, layer, slots);
            if host.is_none() && free[s] >= (home + split) as i128 {
                free[s] -= home as i128;
                placed(s, s, layer, home);
                continue;
            }
            let bytes = lodged_bytes(params, slots);
            // The run's host while it has room, else the roomiest other stage's device.
            let h = match host {
                Some(h) if free[h] >= bytes as i128 => h,
                _ => (0..stages.len()).filter(|&h| h != s).max_by_key(|&h| free[h])?,
            };
            if free[h] < bytes as i128 {
                return None;
            }
            free[h] -= bytes as i128;
            host = Some(h);
            placed(s, h, layer, bytes);
        }
    }
    Some(())
}

/// Stages priced without their optimizer state (`Spot::lodging`) with that state placed
/// ([`homes`]): kept at home where it fits, else lodged on [`StateHost`]s (some layers'
/// at home where there is room for them), whose memory counts it and whose stage's step
/// counts the copies. `None` when some state finds no
/// room.
fn lodge(mut stages: Vec<StagePlan>, costs: &[LayerCost], slots: f64) -> Option<Vec<StagePlan>> {
    let needs: Vec<(u64, Range<usize>, u64)> =
        stages.iter().map(|s| (s.memory.total(), s.layers.clone(), s.available)).collect();
    let homes = homes(&needs, costs, slots)?;
    for (s, hosts) in homes.into_iter().enumerate() {
        let layers = stages[s].layers.clone();
        let masters = |layers: &Range<usize>| -> u64 {
            layers.clone().map(|l| costs[l].cast_bytes as u64).sum()
        };
        if hosts.is_empty() {
            stages[s].memory.optimizer = state_bytes(params_in(costs, &layers), slots);
            stages[s].memory.params += masters(&layers);
            continue;
        }
        // The lodged layers' gradients go to their hosts and the new values come back,
        // each way over this stage's link (all of them) and each host's (its part), one
        // host after another as the runtime copies them.
        let (mut grads, mut values) = ((0, 0f64), (0, 0f64));
        for (host, layers, bytes) in hosts {
            if host == s {
                stages[s].memory.optimizer += bytes - masters(&layers);
                stages[s].memory.params += masters(&layers);
                continue;
            }
            stages[host].memory.lodged += bytes;
            let link = stages[host].link_bytes_per_s;
            let (part, back) = (params_in(costs, &layers), values_in(costs, &layers));
            grads = (grads.0 + part, grads.1 + host_leg_s(part, link));
            values = (values.0 + back, values.1 + host_leg_s(back, link));
            let (device, label) = (stages[host].device.clone(), stages[host].label.clone());
            stages[s].state_on.push(StateHost { device, label, layers, bytes });
        }
        let own = stages[s].link_bytes_per_s;
        let grads_s = host_leg_s(grads.0, own) + grads.1;
        let values_s = host_leg_s(values.0, own) + values.1;
        stages[s].sync_s += grads_s + values_s;
        stages[s].gather_s += grads_s;
        stages[s].values_s += values_s;
    }
    Some(stages)
}

/// A layer's forward and backward seconds on a member's share of the rows: launches as
/// for the whole rows, flops and bytes in proportion.
pub(super) fn member_times(layer: &LayerCost, share: f64, profile: &DeviceProfile) -> (f64, f64) {
    if share == 1.0 {
        return (layer.forward_secs(profile), layer.backward_secs(profile));
    }
    if share == 0.0 {
        return (0.0, 0.0);
    }
    let part = layer.part(share);
    (part.forward_secs(profile), part.backward_secs(profile))
}

/// What a bisection's fills learnt of the plain cuts (no optimizer state lodged): the
/// highest bottleneck none met, and the lowest one met, with its cut. A stage only gets
/// dearer with each layer it takes, so the plain cut with the smallest bottleneck lies
/// between the two.
#[derive(Default)]
struct PlainFills {
    refused: f64,
    met: Option<(f64, Vec<Range<usize>>)>,
}

impl PlainFills {
    /// A fill at `bottleneck` gave `outcome` (a cut, and whether it lodges).
    fn saw(&mut self, bottleneck: f64, outcome: Option<&(Vec<Range<usize>>, bool)>) {
        match outcome {
            Some((cut, false)) => {
                if self.met.as_ref().is_none_or(|(met, _)| bottleneck < *met) {
                    self.met = Some((bottleneck, cut.clone()));
                }
            }
            _ => self.refused = self.refused.max(bottleneck),
        }
    }
}

pub(super) struct Search<'a> {
    /// Shared with the plans it makes.
    costs: Arc<[LayerCost]>,
    /// The stages priced so far.
    memo: RefCell<Memo>,
    candidates: Vec<&'a Candidate>,
    /// Per candidate, each member's share of the rows.
    shares: Vec<Vec<f64>>,
    /// Per candidate and member, each layer's forward and backward seconds on its share.
    times: Vec<Vec<Vec<(f64, f64)>>>,
    /// Per candidate and member, the seconds of both passes of the layers before each
    /// layer boundary (`times` summed, `L + 1` of them).
    before: Vec<Vec<Vec<f64>>>,
    micro_batches: usize,
    slots: f64,
}

impl<'a> Search<'a> {
    pub(super) fn new(
        costs: &'a [LayerCost],
        candidates: Vec<&'a Candidate>,
        micro_batches: usize,
        slots: f64,
    ) -> Search<'a> {
        let shares: Vec<Vec<f64>> = candidates.iter().map(|c| group_shares(costs, c)).collect();
        let times = candidates
            .iter()
            .zip(&shares)
            .map(|(c, shares)| {
                c.members()
                    .zip(shares)
                    .map(|(m, &share)| {
                        costs.iter().map(|l| member_times(l, share, &m.profile)).collect()
                    })
                    .collect()
            })
            .collect::<Vec<Vec<Vec<(f64, f64)>>>>();
        let before = times
            .iter()
            .map(|members| {
                let summed = |times: &Vec<(f64, f64)>| {
                    std::iter::once(0.0)
                        .chain(times.iter().scan(0.0, |sum, (f, b)| {
                            *sum += f + b;
                            Some(*sum)
                        }))
                        .collect()
                };
                members.iter().map(summed).collect()
            })
            .collect();
        Search {
            costs: costs.into(),
            before,
            memo: RefCell::default(),
            candidates,
            shares,
            times,
            micro_batches,
            slots,
        }
    }

    /// `plan` (of `order[..count]`) improved by swapping two devices' places, a used one with
    /// another or with one left out, while a swap shortens the predicted step, within a
    /// budget of tries: where memory rather than speed decides what a device can take (and
    /// whose spare room takes others' optimizer state), no sort order is the best one.
    fn swapped(&self, mut plan: PipelinePlan, mut order: Vec<usize>, count: usize) -> PipelinePlan {
        // About as many stage costs tried whatever the pipeline's depth.
        let tries_allowed = (1600 / order.len().max(1)).clamp(24, 200);
        let mut tries = 0;
        let mut improved = true;
        while improved && tries < tries_allowed {
            improved = false;
            for i in 0..count {
                for j in i + 1..order.len() {
                    if tries == tries_allowed {
                        return plan;
                    }
                    tries += 1;
                    order.swap(i, j);
                    match self.best_for(&order[..count]) {
                        Some(better)
                            if better.predicted_step_s()
                                < plan.predicted_step_s() * (1.0 - 1e-9) =>
                        {
                            plan = better;
                            improved = true;
                        }
                        _ => order.swap(i, j),
                    }
                }
            }
        }
        plan
    }

    /// Forward and backward seconds of the whole model on candidate `i` (its slowest
    /// member's share, for a group).
    fn whole(&self, i: usize) -> f64 {
        self.times[i]
            .iter()
            .map(|member| member.iter().map(|(f, b)| f + b).sum::<f64>())
            .fold(0.0, f64::max)
    }

    fn spot(&self, order: &[usize], s: usize, lodging: bool) -> Spot<'_> {
        let c = self.candidates[order[s]];
        Spot {
            c,
            shares: &self.shares[order[s]],
            from_before: per_byte(s.checked_sub(1).map(|i| self.candidates[order[i]]), c),
            from_after: per_byte(order.get(s + 1).map(|&i| self.candidates[i]), c),
            s,
            count: order.len(),
            lodging,
            times: Some(&self.times[order[s]]),
            held: None,
        }
    }

    /// The plan over exactly these candidates in this order with the smallest bottleneck,
    /// if any fits.
    pub(super) fn best_for(&self, order: &[usize]) -> Option<PipelinePlan> {
        // Lodging lowers the bottleneck a fill can meet, but its copies cost once a step:
        // where the best cut lodges, the best cut that does not may still be the better.
        let (lodging, plain_fills) = self.bisect(order, true, None)?;
        if lodging.stages.iter().all(|s| s.state_on.is_empty()) {
            return Some(lodging);
        }
        match self.bisect(order, false, Some(plain_fills)) {
            Some((plain, _)) if plain.predicted_step_s() <= lodging.predicted_step_s() => {
                Some(plain)
            }
            _ => Some(lodging),
        }
    }

    /// The cut over these candidates in this order with the smallest bottleneck
    /// (`may_lodge`: letting optimizer state lodge where memory refuses), if any fits; and
    /// what its fills learnt of the plain cuts (none lodging), where a plain bisection can
    /// start (`known`).
    fn bisect(
        &self,
        order: &[usize],
        may_lodge: bool,
        known: Option<PlainFills>,
    ) -> Option<(PipelinePlan, PlainFills)> {
        // Devices that together lack the room for the parameters, their gradients and
        // their optimizer state hold no cut.
        let room: u64 = order
            .iter()
            .flat_map(|&i| self.candidates[i].members())
            .map(|m| m.memory)
            .fold(0, u64::saturating_add);
        let params = params_in(&self.costs, &(0..self.costs.len())) as f64;
        if (room as f64) < params * (2.0 + self.slots) {
            return None;
        }
        // No bottleneck is below the fluid one, every device's share of the work in
        // proportion to its speed (`1 / Σ 1/wholeᵢ`): start at twice that and double
        // until a fill succeeds. Past about 64 times the whole model's compute on the
        // slowest device (copies and recomputation can make a stage dearer, but not that
        // much), only memory can refuse.
        let slowest = order.iter().map(|&i| self.whole(i)).fold(0.0, f64::max).max(1e-9);
        let fluid = 1.0 / order.iter().map(|&i| 1.0 / self.whole(i).max(1e-12)).sum::<f64>();
        let mut plain_fills = PlainFills::default();
        let mut fill = |bottleneck: f64| {
            // A stage only gets dearer with each layer it takes: below a bottleneck where
            // the plain fill failed, it fails too.
            let plain_refused = bottleneck <= plain_fills.refused;
            let outcome = self.fill(order, bottleneck, may_lodge, plain_refused);
            plain_fills.saw(bottleneck, outcome.as_ref());
            outcome
        };
        let (mut lo, mut hi, mut found);
        if let Some(PlainFills { refused, met: Some((met, cut)) }) = known {
            // Between what an earlier bisection's plain fills refused and met.
            (lo, hi, found) = (refused, met, (cut, false));
        } else {
            lo = known.map_or(fluid, |k| k.refused.max(fluid));
            hi = (2.0 * lo).max(1e-9);
            let mut met = None;
            while hi <= 128.0 * slowest {
                if let Some(cut) = fill(hi) {
                    met = Some(cut);
                    break;
                }
                lo = hi;
                hi *= 2.0;
            }
            found = met?;
            // Should a fill meet the fluid bottleneck (layers priced unevenly across
            // devices can), search below it too.
            if lo == fluid
                && let Some(cut) = fill(lo)
            {
                (found, hi, lo) = (cut, lo, 0.0);
            }
        }
        // To 0.1%: closer changes the step by less than a layer's price does.
        for _ in 0..60 {
            if hi - lo <= 1e-3 * hi {
                break;
            }
            let mid = 0.5 * (lo + hi);
            match fill(mid) {
                Some(cut) => {
                    hi = mid;
                    found = cut;
                }
                None => lo = mid,
            }
        }
        let (cut, lodging) = found;
        let stages: Vec<StagePlan> = cut
            .into_iter()
            .enumerate()
            .map(|(s, layers)| {
                let spot = self.spot(order, s, lodging);
                price(&self.costs, layers, &spot, self.micro_batches, self.slots)
            })
            .collect();
        let stages = if lodging { lodge(stages, &self.costs, self.slots)? } else { stages };
        let plan = PipelinePlan {
            stages,
            micro_batches: self.micro_batches,
            costs: self.costs.clone(),
            chunks: 1,
        };
        Some((plan, plain_fills))
    }

    /// Each stage in turn takes as many layers as keep it within `bottleneck` (its passes
    /// and, where 1F1B's round trip through it repeats, its copies in too) and its memory;
    /// the cut, if every layer found a stage and every stage a layer.
    /// Where the stages' own memory is what limits them, the fill again with every
    /// optimizer state free to move to a stage with room to spare ([`lodge`]): the cut, and
    /// whether it lodges. (`plain_refused`: a plain fill at this bottleneck or above is
    /// known to fail, so only the lodging one is tried.)
    fn fill(
        &self,
        order: &[usize],
        bottleneck: f64,
        may_lodge: bool,
        plain_refused: bool,
    ) -> Option<(Vec<Range<usize>>, bool)> {
        let memory_bound = match plain_refused && may_lodge {
            true => true,
            false => match self.fill_as(order, bottleneck, false) {
                Ok(cut) => return Some((cut, false)),
                Err(memory_bound) => memory_bound,
            },
        };
        if !may_lodge || self.slots <= 0.0 || !memory_bound {
            return None;
        }
        self.fill_as(order, bottleneck, true).ok().map(|cut| (cut, true))
    }

    /// The cut, or whether memory (a stage out of room, or recomputing) had a part in
    /// refusing it.
    fn fill_as(
        &self,
        order: &[usize],
        bottleneck: f64,
        lodging: bool,
    ) -> std::result::Result<Vec<Range<usize>>, bool> {
        let mut memory_bound = false;
        let layers = self.costs.len();
        let mut cut = Vec::with_capacity(order.len());
        let mut needs = Vec::with_capacity(order.len());
        let mut start = 0;
        for s in 0..order.len() {
            let spot = self.spot(order, s, lodging);
            let last = s + 1 == order.len();
            // Leave at least one layer for each later stage; the last takes the rest.
            let max_end = layers - (order.len() - s - 1);
            let times = &self.times[order[s]];
            // How far the passes alone stay within the bottleneck (copies and
            // recomputation only add to a stage's time): the last end within it for every
            // member, by bisection on the summed times.
            let before = &self.before[order[s]];
            let within = |end: usize| before.iter().all(|b| b[end] - b[start] <= bottleneck);
            let (mut reach, mut beyond) = (start, max_end + 1);
            while beyond - reach > 1 {
                let mid = (reach + beyond) / 2;
                if within(mid) { reach = mid } else { beyond = mid }
            }
            // A stage's price depends on its device, its neighbours' (their links), its
            // place and its layers, not on the bottleneck or the rest of the order: the
            // fills of a bisection and the orders of a swap search meet it again and again.
            let neighbour = |i: Option<&usize>| i.copied().unwrap_or(usize::MAX);
            let place = (
                neighbour(s.checked_sub(1).map(|p| &order[p])),
                order[s],
                neighbour(order.get(s + 1)),
                s,
                order.len(),
                lodging,
            );
            let mut memo = self.memo.borrow_mut();
            let Memo { places, priced: known } = &mut *memo;
            let fresh = places.len() as u64;
            let place = *places.entry(place).or_insert(fresh);
            // This stage's prices by end, from `start + 1` on.
            let by_end = known.entry((place, start)).or_default();
            let mut priced = |end: usize| {
                let i = end - start - 1;
                if by_end.len() <= i {
                    by_end.resize(i + 1, None);
                }
                *by_end[i].get_or_insert_with(|| {
                    let sums: Vec<Sums> = times
                        .iter()
                        .zip(spot.shares)
                        .map(|(times, &share)| {
                            let mut sums = Sums::default();
                            for (l, &time) in times.iter().enumerate().take(end).skip(start) {
                                sums.add(&self.costs, l, share, time);
                            }
                            sums
                        })
                        .collect();
                    let cost = stage_cost(
                        &self.costs,
                        &(start..end),
                        &sums,
                        &spot,
                        self.micro_batches,
                        self.slots,
                    );
                    Priced {
                        fits: cost.fits(spot.c),
                        time: cost.time(),
                        round_trip: cost.forward_s
                            + cost.backward_s
                            + cost.receive_forward_s
                            + cost.receive_backward_s,
                        recomputes: !cost.recompute.is_empty(),
                        total: cost.memory.total(),
                    }
                })
            };
            // Within the bottleneck with its copies in too, where 1F1B's round trip through
            // it repeats (a micro-batch `m + S − s` exists): what keeps every round trip
            // within it ([`PipelinePlan::pace_s`]).
            let round_trips = order.len() - s < self.micro_batches;
            let feasible = |cost: &Priced| {
                cost.fits
                    && cost.time <= bottleneck
                    && (!round_trips || cost.round_trip <= bottleneck)
            };
            // The longest feasible run of layers from `start`, by bisection: a stage only
            // gets dearer and fuller with each layer it takes. The last takes the rest.
            let (mut lo, mut hi) = (start, reach + 1);
            let mut taken = None;
            if last {
                (lo, hi) = (layers - 1, layers + usize::from(reach >= layers));
            }
            // The first end refused, where the passes alone were within the bottleneck.
            let mut refused = None;
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                let cost = priced(mid);
                if feasible(&cost) {
                    taken = Some((mid, (cost.total, spot.c.memory)));
                    lo = mid;
                } else {
                    refused = Some(cost);
                    hi = mid;
                }
            }
            // Did memory have a part in it (a stage out of room, or recomputing)?
            if let Some(cost) = refused {
                memory_bound |= cost.recomputes || !cost.fits;
            }
            let (end, (total, memory)) = taken.ok_or(memory_bound)?;
            cut.push(start..end);
            needs.push((total, start..end, memory));
            start = end;
        }
        if lodging && place_states(&needs, &self.costs, self.slots, |_, _, _, _| {}).is_none() {
            return Err(true);
        }
        Ok(cut)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sim::{SimDevice, SimProfile};
    use crate::{CpuDevice, DType};

    /// A layer of `gflop` forward matmul gigaflops, `mib` MiB of parameters, and
    /// activations and output of `act_mib` MiB per micro-batch of 12 rows.
    fn layer(gflop: f64, mib: usize, act_mib: usize) -> LayerCost {
        LayerCost {
            param_bytes: mib << 20,
            copy_bytes: 0,
            cast_bytes: 0,
            activation_bytes: act_mib << 20,
            transient_bytes: 0,
            output_bytes: 1 << 20,
            joined_bytes: 0,
            handed_bytes: 0,
            matmul_flops: gflop * 1e9,
            recomputed_flops: 0.0,
            weight_flops: gflop * 1e9,
            kept_grad_bytes: 0,
            written_bytes: 0,
            ops: 1,
            dtype: DType::F32,
            rows: 12,
        }
    }

    fn chips(specs: &[(f64, u64)]) -> Vec<Candidate> {
        let host: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
        specs
            .iter()
            .enumerate()
            .map(|(i, &(tflops, gib))| {
                let profile = SimProfile::new("chip")
                    .with_flops(tflops * 1e12)
                    .with_latency(std::time::Duration::ZERO)
                    .with_link(1e12)
                    .with_memory(gib << 30);
                let sim = SimDevice::new(host.clone(), profile.clone(), i).unwrap();
                let device: DeviceRef = Arc::new(sim);
                let profile = DeviceProfile::simulated(device.info(), &profile);
                Candidate::new(device, profile).unwrap()
            })
            .collect()
    }

    /// The search's plain cut (one stage a device), not interleaved.
    fn plain(costs: &[LayerCost], fleet: &[Candidate], micro_batches: usize) -> PipelinePlan {
        PipelinePlan::search_with_state(costs, fleet, micro_batches, 2.0, true).unwrap()
    }

    fn layers_per_stage(plan: &PipelinePlan) -> Vec<(usize, String)> {
        plan.stages.iter().map(|s| (s.layers.len(), s.label.clone())).collect()
    }

    #[test]
    fn stages_take_layers_in_proportion_to_speed() {
        let costs = vec![layer(100.0, 1, 1); 8];
        let fleet = chips(&[(1.0, 64), (3.0, 64)]);
        let plan = plain(&costs, &fleet, 32);
        let mut cut = layers_per_stage(&plan);
        cut.sort();
        assert_eq!(
            cut,
            vec![(2, "sim:0".to_string()), (6, "sim:1".to_string())],
            "{}",
            plan.explain()
        );
        // Equal layers per stage (Megatron's cut) would leave the fast chip idle half the
        // time: the searched plan beats it by the predicted step.
        let uniform = PipelinePlan::manual(
            &costs,
            vec![(0..4, fleet[1].clone()), (4..8, fleet[0].clone())],
            32,
            2,
        )
        .unwrap();
        let gain = uniform.predicted_step_s() / plan.predicted_step_s();
        assert!(gain > 1.4, "searched {} vs uniform {}", plan.explain(), uniform.explain());
    }

    #[test]
    fn memory_caps_the_layers_a_fast_chip_takes_unless_its_state_can_lodge_elsewhere() {
        // 8 layers of 1 GiB of parameters (4 GiB with gradients and AdamW's state).
        let costs = vec![layer(100.0, 1024, 1); 8];
        // The slow chip has room to spare: the fast chip's 10 GiB hold the parameters and
        // gradients of four layers, 2 GiB each, and their optimizer state (with a master
        // copy of the parameters and room for their gradients) lives on the slow chip.
        let fleet = chips(&[(10.0, 10), (1.0, 40)]);
        let plan = plain(&costs, &fleet, 8);
        for stage in &plan.stages {
            assert!(stage.memory.total() <= stage.available, "{}", plan.explain());
        }
        let fast = plan.stages.iter().find(|s| s.label == "sim:0").expect("the fast chip is used");
        let slow = plan.stages.iter().find(|s| s.label == "sim:1").expect("the slow chip too");
        assert_eq!(fast.layers.len(), 4, "{}", plan.explain());
        assert_eq!(fast.memory.optimizer, 0);
        let [host] = &fast.state_on[..] else { panic!("one host: {}", plan.explain()) };
        assert_eq!((host.label.as_str(), host.bytes), ("sim:1", 4 * (4 << 30)));
        assert_eq!(host.layers, fast.layers);
        assert_eq!(slow.memory.lodged, host.bytes);
        assert!(fast.sync_s > 0.0 && slow.state_on.is_empty());
        // With no room to spare, the fast chip takes what its memory holds with its state.
        let tight = chips(&[(10.0, 10), (1.0, 26)]);
        let plan = plain(&costs, &tight, 8);
        let fast = plan.stages.iter().find(|s| s.label == "sim:0").expect("the fast chip is used");
        assert_eq!(fast.layers.len(), 2, "{}", plan.explain());
        assert!(plan.stages.iter().all(|s| s.state_on.is_empty()), "{}", plan.explain());
        // And a model that fits nowhere is refused with the bytes it needs.
        let err = PipelinePlan::search(&vec![layer(1.0, 8192, 1); 8], &fleet, 8, 2).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    /// Activations cross between chips with peer links once, over the slower link; between
    /// chips without, through the host: the sender's download, then the receiver's upload.
    #[test]
    fn copies_between_peers_are_priced_once_over_the_slower_link() {
        let costs = vec![layer(1.0, 1, 1); 2];
        let host: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
        let chip = |i: usize, peer: Option<f64>| {
            let mut profile = SimProfile::new("chip").with_link(1e9).with_memory(1 << 30);
            if let Some(rate) = peer {
                profile = profile.with_peer_link(rate);
            }
            let device: DeviceRef =
                Arc::new(SimDevice::new(host.clone(), profile.clone(), i).unwrap());
            Candidate::new(device.clone(), DeviceProfile::simulated(device.info(), &profile))
                .unwrap()
        };
        let received = |a: Candidate, b: Candidate| {
            let plan = PipelinePlan::manual(&costs, vec![(0..1, a), (1..2, b)], 4, 2).unwrap();
            (plan.stages[1].receive_forward_s, plan.stages[0].receive_backward_s)
        };
        let mib = (1 << 20) as f64;
        assert_eq!(received(chip(0, Some(8e9)), chip(1, Some(4e9))), (mib / 4e9, mib / 4e9));
        let through_host = 2.0 * mib / 1e9;
        assert_eq!(received(chip(0, Some(8e9)), chip(1, None)), (through_host, through_host));
        assert_eq!(received(chip(0, None), chip(1, None)), (through_host, through_host));
    }

    #[test]
    fn a_stages_gradients_leave_while_the_stages_before_it_drain_and_values_return_as_they_fill() {
        let costs = vec![layer(100.0, 1024, 1); 8];
        let fleet = chips(&[(10.0, 10), (1.0, 40)]);
        // The fast chip last: it ends its step first, and its state lodges on the slow one.
        let stages = vec![(0..4, fleet[1].clone()), (4..8, fleet[0].clone())];
        let plan = PipelinePlan::manual(&costs, stages, 8, 2).unwrap();
        let last = &plan.stages[1];
        assert!(!last.state_on.is_empty(), "{}", plan.explain());
        // Its gradients' way to the host hides behind the slow stage's last backward pass,
        // the new values' way back behind the slow stage's first forward pass of the next
        // step: nothing is left of them.
        assert!(last.gather_s > 0.0 && last.gather_s < plan.stages[0].backward_s);
        assert!(last.values_s > 0.0 && last.values_s < plan.stages[0].forward_s);
        assert!((last.sync_s - last.gather_s - last.values_s).abs() < 1e-12);
        assert_eq!(plan.sync_s(), 0.0);
        let played = play(&plan);
        assert!(played.ended[1] + last.gather_s < played.ended[0], "{:?}", played.ended);
        let last_work = played.ended.iter().copied().fold(0.0, f64::max);
        assert!((played.makespan - last_work).abs() < 1e-9);

        // The fast chip first: nothing fills before it, and the step waits on its values.
        let stages = vec![(0..4, fleet[0].clone()), (4..8, fleet[1].clone())];
        let plan = PipelinePlan::manual(&costs, stages, 8, 2).unwrap();
        let first = &plan.stages[0];
        assert!(!first.state_on.is_empty(), "{}", plan.explain());
        assert!(first.values_s > 0.0);
        assert!((plan.refill_s() - first.values_s).abs() < 1e-12);
        let played = play(&plan);
        // The same plan with its values back at once: a step that much shorter.
        let mut at_once = plan.clone();
        for stage in &mut at_once.stages {
            stage.sync_s -= stage.values_s;
            stage.values_s = 0.0;
            // Its gradients' way to the host stays in its own `gather_s`.
            stage.state_on.clear();
        }
        assert!((played.makespan - play(&at_once).makespan - first.values_s).abs() < 1e-9);
    }

    /// Two stages lodging on one chip both wait, as their steps start, for that chip's
    /// link to send the values of both.
    #[test]
    fn stages_lodging_on_one_host_share_its_link_for_their_values() {
        let costs = vec![layer(100.0, 1024, 1); 8];
        let fleet = chips(&[(1.0, 40), (10.0, 10), (10.0, 10)]);
        let stages =
            vec![(0..2, fleet[0].clone()), (2..5, fleet[1].clone()), (5..8, fleet[2].clone())];
        let plan = PipelinePlan::manual(&costs, stages, 8, 2).unwrap();
        let hosted: Vec<&StateHost> = plan.stages.iter().flat_map(|s| &s.state_on).collect();
        assert!(
            hosted.len() == 2 && hosted.iter().all(|h| h.label == "sim:0"),
            "{}",
            plan.explain()
        );
        let sent: f64 = (hosted.iter())
            .map(|h| host_leg_s(values_in(&costs, &h.layers), plan.stages[0].link_bytes_per_s))
            .sum();
        let back = plan.values_back();
        assert_eq!(back[0], 0.0);
        for s in 1..3 {
            assert!(back[s] >= sent && back[s] >= plan.stages[s].values_s, "{back:?}");
        }
    }

    #[test]
    fn the_first_stage_holds_the_most_micro_batches_in_flight() {
        let costs = vec![layer(1.0, 1, 100); 4];
        let fleet = chips(&[(1.0, 64), (1.0, 64), (1.0, 64), (1.0, 64)]);
        let stages = (0..4).map(|i| (i..i + 1, fleet[i].clone())).collect();
        let plan = PipelinePlan::manual(&costs, stages, 8, 2).unwrap();
        let held: Vec<u64> = plan.stages.iter().map(|s| s.memory.activations >> 20).collect();
        // Stage s holds 4 − s micro-batches: its layer's 100 MiB and the 1 MiB input each.
        assert_eq!(held, vec![400, 303, 202, 101]);
        assert!(plan.bubble() > 0.0 && plan.bubble() < 0.5, "{}", plan.explain());
    }

    #[test]
    fn a_group_shares_rows_by_speed_and_keeps_one_copy_of_the_optimizer_state() {
        let costs = vec![layer(100.0, 16, 8); 8];
        let fleet = chips(&[(3.0, 64), (1.0, 64)]);
        let group = Candidate::group(fleet[0].clone(), vec![fleet[1].clone()]).unwrap();
        let alone = PipelinePlan::manual(&costs, vec![(0..8, fleet[0].clone())], 4, 2).unwrap();
        let plan = PipelinePlan::manual(&costs, vec![(0..8, group.clone())], 4, 2).unwrap();
        let (lead, helper) = (&plan.stages[0], &plan.stages[0].helpers[0]);
        // 12 rows cut 3 : 1, as the chips' speeds.
        assert_eq!((lead.share, helper.share), (0.75, 0.25), "{}", plan.explain());
        let gain = alone.stages[0].time() / lead.time();
        assert!((1.3..=1.34).contains(&gain), "a fourth more speed gives {gain}");
        // Both hold the parameters and their gradients; the lead alone the optimizer state;
        // each its rows' activations.
        assert_eq!(helper.memory.params, lead.memory.params);
        assert_eq!((helper.memory.optimizer, lead.memory.optimizer), (0, 2 * lead.memory.params));
        assert_eq!(helper.memory.activations * 3, lead.memory.activations);
        assert!(lead.sync_s > 0.0 && plan.predicted_step_s() > lead.time() * 4.0);
        // A rank's stage over its own devices is priced the same way.
        let rank = StagePlan::for_rank(&costs, 0..8, (0, 1), &group, 4, 2).unwrap();
        assert_eq!((rank.memory, rank.share, rank.time()), (lead.memory, lead.share, lead.time()));
        let err = StagePlan::for_rank(&costs, 0..9, (0, 1), &group, 4, 2).unwrap_err();
        assert!(err.to_string().contains("0..9"), "{err}");
        // The search takes a group as one candidate.
        let searched = PipelinePlan::search(&costs, std::slice::from_ref(&group), 4, 2).unwrap();
        assert_eq!(searched.stages[0].helpers.len(), 1, "{}", searched.explain());
        // A helper too small for its copy of the layers is refused by name.
        let small = chips(&[(3.0, 64), (1.0, 0)]);
        let group = Candidate::group(small[0].clone(), vec![small[1].clone()]).unwrap();
        let err = PipelinePlan::manual(&costs, vec![(0..8, group)], 4, 2).unwrap_err();
        assert!(err.to_string().contains("sim:1"), "{err}");
    }

    #[test]
    fn the_search_picks_the_micro_batches_launches_and_the_bubble_call_for() {
        let host: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
        let fleet = |latency_us: u64| -> Vec<Candidate> {
            (0..2)
                .map(|i| {
                    let profile = SimProfile::new("chip")
                        .with_flops(1e12)
                        .with_latency(std::time::Duration::from_micros(latency_us))
                        .with_link(1e12);
                    let device: DeviceRef =
                        Arc::new(SimDevice::new(host.clone(), profile.clone(), i).unwrap());
                    let profile = DeviceProfile::simulated(device.info(), &profile);
                    Candidate::new(device, profile).unwrap()
                })
                .collect()
        };
        let layers = |gflop: f64, ops: usize| vec![LayerCost { ops, ..layer(gflop, 1, 1) }; 4];
        // Arithmetic dominates: as many micro-batches as rows, the bubble smallest.
        let plan = PipelinePlan::search_batch(&layers(100.0, 1), &fleet(0), 12, 2).unwrap();
        assert_eq!(plan.micro_batches, 12, "{}", plan.explain());
        assert_eq!(plan.costs()[0].rows, 1);
        assert!((plan.costs()[0].matmul_flops - 100e9 / 12.0).abs() < 1.0);
        // Launches dominate: one micro-batch of every row.
        let plan = PipelinePlan::search_batch(&layers(0.001, 1000), &fleet(100), 12, 2).unwrap();
        assert_eq!(plan.micro_batches, 1, "{}", plan.explain());
        let err = PipelinePlan::search_batch(&layers(1.0, 1), &fleet(0), 0, 2).unwrap_err();
        assert!(err.to_string().contains("0 rows"), "{err}");
    }
}
