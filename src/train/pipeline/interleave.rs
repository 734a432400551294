//! Interleaved plans: each device holds `v` chunks, non-adjacent stages of a pipeline of
//! `D·v` (device `d` the stages `d, d + D, …`), run under the interleaved 1F1B schedule
//! ([`interleaved`](super::schedule::interleaved)). Filling and draining the pipeline
//! then takes `1/v` of a micro-batch's trip through a device's layers instead of all of
//! it, the 1F1B bubble `(D − 1)/(M + D − 1)` shrinking about `v`-fold; each micro-batch
//! crosses `v` times as many links, and a device holds more micro-batches' activations.
//!
//! A search interleaves the best plain plan it found: the same devices in the same order,
//! the layers cut again into `v` stages a device by bisection on the pace (each device
//! within it and within its memory, each chunk near its even share), and the step with 2,
//! 3 or 4 chunks is kept where it plays shorter.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use super::cost::LayerCost;
use super::plan::{Candidate, PipelinePlan, Spot, StagePlan, check_micro_batches, per_byte, price};
use super::schedule::chunk_in_flight;
use super::simulate::play;
use crate::{Error, Result};

/// The most chunks a device takes when a search tries interleaving.
const MOST_CHUNKS: usize = 4;

/// How much slower than its even share of the pace a chunk may be, tried in turn
/// ([`fill`]).
const SLACKS: [f64; 3] = [1.0, 1.15, 1.3];

impl PipelinePlan {
    /// The interleaved plan of `cuts` (stages covering the layers in order) over `devices`:
    /// stage `i` on `devices[i % D]`, each device holding `cuts.len() / D` of them (two or
    /// more; single devices, not groups). Priced and checked like
    /// [`manual`](Self::manual): each device's stages together must fit its memory; where
    /// keeping every activation would not, each stage has what its parameters, state and
    /// workspace need and a share of the rest in proportion to its activations, and
    /// recomputes where that is short.
    pub fn interleaved(
        costs: &[LayerCost],
        cuts: Vec<Range<usize>>,
        devices: Vec<Candidate>,
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<PipelinePlan> {
        let slots = optimizer_slots as f64;
        PipelinePlan::interleaved_with_state(costs, &cuts, &devices, micro_batches, slots)
    }

    /// [`interleaved`](Self::interleaved) with the optimizer's state per parameter as a
    /// fraction.
    pub(crate) fn interleaved_with_state(
        costs: &[LayerCost],
        cuts: &[Range<usize>],
        devices: &[Candidate],
        micro_batches: usize,
        slots: f64,
    ) -> Result<PipelinePlan> {
        check_micro_batches(micro_batches)?;
        let invalid = |device: String, detail: String| Error::InvalidArgument {
            op: "PipelinePlan::interleaved".into(),
            device,
            detail,
        };
        let count = devices.len();
        if count < 2 || cuts.len() < 2 * count || !cuts.len().is_multiple_of(count) {
            return Err(invalid(
                "-".into(),
                format!(
                    "{} stages over {count} devices: interleaving takes two devices or more, \
                     each holding as many stages as the others, two or more",
                    cuts.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for c in devices {
            let detail = if !c.helpers.is_empty() {
                "leads a group: a device holding several stages runs them alone"
            } else if !seen.insert(c.device.info().id) {
                "is listed twice"
            } else {
                continue;
            };
            return Err(invalid(c.device.info().label(), detail.into()));
        }
        let mut next = 0;
        for (i, layers) in cuts.iter().enumerate() {
            if layers.start != next || layers.is_empty() || layers.end > costs.len() {
                return Err(invalid(
                    devices[i % count].device.info().label(),
                    format!(
                        "stage {i} has layers {layers:?}: stages must cover layers 0..{} in \
                         order, each at least one",
                        costs.len()
                    ),
                ));
            }
            next = layers.end;
        }
        if next != costs.len() {
            return Err(invalid(
                "-".into(),
                format!("the stages end at layer {next} of {}", costs.len()),
            ));
        }
        let chunks = cuts.len() / count;
        let held: Vec<Vec<usize>> =
            (0..count).map(|d| chunk_in_flight(d, count, chunks, micro_batches)).collect();
        let priced = |budget: &dyn Fn(usize) -> u64| -> Vec<StagePlan> {
            cuts.iter()
                .enumerate()
                .map(|(i, layers)| {
                    let device = &devices[i % count];
                    let c = Candidate { memory: budget(i), ..device.clone() };
                    let spot = Spot {
                        c: &c,
                        shares: &[1.0],
                        from_before: per_byte(
                            i.checked_sub(1).map(|j| &devices[j % count]),
                            device,
                        ),
                        from_after: per_byte(
                            (i + 1 < cuts.len()).then(|| &devices[(i + 1) % count]),
                            device,
                        ),
                        s: i,
                        count: cuts.len(),
                        lodging: false,
                        times: None,
                        held: Some(held[i % count][i / count]),
                    };
                    let mut stage = price(costs, layers.clone(), &spot, micro_batches, slots);
                    stage.available = device.memory;
                    stage
                })
                .collect()
        };
        let keeping = priced(&|_| u64::MAX);
        let fixed = |s: &StagePlan| s.memory.total() - s.memory.activations;
        let mut sums = vec![(0u64, 0u64); count];
        for (i, stage) in keeping.iter().enumerate() {
            sums[i % count].0 += fixed(stage);
            sums[i % count].1 += stage.memory.activations;
        }
        let fits = |d: usize| sums[d].0 + sums[d].1 <= devices[d].memory;
        let stages = if (0..count).all(fits) {
            keeping
        } else {
            // Only the devices short of room are priced again.
            priced(&|i| {
                if fits(i % count) {
                    return u64::MAX;
                }
                let (state, activations) = sums[i % count];
                let spare = devices[i % count].memory.saturating_sub(state);
                let own = &keeping[i];
                let share = own.memory.activations as f64 / activations.max(1) as f64;
                fixed(own) + (spare as f64 * share) as u64
            })
        };
        let plan = PipelinePlan { stages, micro_batches, costs: costs.into(), chunks };
        plan.check_memory()?;
        Ok(plan)
    }

    /// Each stage's layers and the candidate (of `candidates`) its device is; `None` where
    /// one is not there.
    pub(crate) fn stage_candidates(
        &self,
        candidates: &[Candidate],
    ) -> Option<Vec<(Range<usize>, Candidate)>> {
        (self.stages.iter())
            .map(|s| {
                let id = s.device.info().id;
                let c = candidates.iter().find(|c| c.device.info().id == id)?;
                Some((s.layers.clone(), c.clone()))
            })
            .collect()
    }

    /// `self` (a plain plan over some of `candidates`) or its best interleaving
    /// ([`best_interleaving`](Self::best_interleaving)), whichever plays the shorter step.
    pub(crate) fn interleaved_if_shorter(
        self,
        candidates: &[Candidate],
        slots: f64,
    ) -> PipelinePlan {
        match self.stage_candidates(candidates) {
            Some(stages) => PipelinePlan::best_interleaving(self, &stages, slots),
            None => self,
        }
    }

    /// `plain` (one stage a device, each `stages[s]`'s layers on its candidate) or, where
    /// it plays a shorter step ([`play`]: the formula is optimistic where the micro-batches
    /// are not whole groups, one per device), the same devices in the same order
    /// interleaved with 2 to 4 chunks each ([`interleaved_cut`]). A plan with groups or
    /// lodged optimizer state stays plain.
    pub(crate) fn best_interleaving(
        plain: PipelinePlan,
        stages: &[(Range<usize>, Candidate)],
        slots: f64,
    ) -> PipelinePlan {
        let step = |plan: &PipelinePlan| play(plan).makespan;
        let alone = plain.stages.iter().all(|s| s.helpers.is_empty() && s.state_on.is_empty());
        if plain.chunks != 1 || stages.len() < 2 || !alone {
            return plain;
        }
        let devices: Vec<Candidate> = stages.iter().map(|(_, c)| c.clone()).collect();
        let costs = plain.costs.clone();
        let mut best_step = step(&plain);
        let mut best = plain;
        for chunks in 2..=MOST_CHUNKS {
            if costs.len() < chunks * devices.len() {
                break;
            }
            let micro_batches = best.micro_batches;
            // Interleaving trades at most the bubble, `(D − 1)/M` of the step, for its pace.
            let ceiling = best.pace_s() * (1.0 + (devices.len() - 1) as f64 / micro_batches as f64);
            for slack in SLACKS {
                let Some(plan) =
                    interleaved_cut(&costs, &devices, chunks, micro_batches, slots, ceiling, slack)
                else {
                    continue;
                };
                let s = step(&plan);
                if s < best_step {
                    (best, best_step) = (plan, s);
                }
            }
        }
        best
    }
}

/// The best interleaved plan of `costs` over `devices` in this order with `chunks` each
/// whose pace is below `ceiling`: the smallest pace (a device's chunks' times summed) that
/// a fill ([`fill`], with `slack`) meets, found by bisection. `None` where none does.
fn interleaved_cut(
    costs: &Arc<[LayerCost]>,
    devices: &[Candidate],
    chunks: usize,
    micro_batches: usize,
    slots: f64,
    ceiling: f64,
    slack: f64,
) -> Option<PipelinePlan> {
    let count = devices.len();
    let by_device: Vec<Vec<usize>> =
        (0..count).map(|d| chunk_in_flight(d, count, chunks, micro_batches)).collect();
    let held: Vec<usize> = (0..count * chunks).map(|i| by_device[i % count][i / count]).collect();
    let fill = |pace: f64| fill(costs, devices, chunks, &held, micro_batches, slots, (pace, slack));
    let mut found = fill(ceiling)?;
    // No pace is below every device's share of the work in proportion to its speed.
    let whole = |c: &Candidate| -> f64 {
        costs.iter().map(|l| l.forward_secs(&c.profile) + l.backward_secs(&c.profile)).sum()
    };
    let mut lo = 1.0 / devices.iter().map(|c| 1.0 / whole(c).max(1e-12)).sum::<f64>();
    let mut hi = ceiling;
    while hi - lo > 1e-3 * hi {
        let mid = 0.5 * (lo + hi);
        match fill(mid) {
            Some(stages) => (found, hi) = (stages, mid),
            None => lo = mid,
        }
    }
    let plan = PipelinePlan { stages: found, micro_batches, costs: costs.clone(), chunks };
    plan.check_memory().ok()?;
    Some(plan)
}

/// Stages in order, each taking the most layers that keep its device within `pace` and
/// its memory so far (chunk `c` of a device within `(c + 1)/v` of both, so a chunk that
/// took less leaves its device's next one more) and itself within `slack` times its
/// even share of the pace. The stages, if every layer found one.
///
/// The slack matters: the schedule runs a group of micro-batches through every device's
/// first chunks, then their second ones, so a chunk much slower than the others stalls
/// the devices after it even where its device's chunks add up to the pace.
fn fill(
    costs: &[LayerCost],
    devices: &[Candidate],
    chunks: usize,
    held: &[usize],
    micro_batches: usize,
    slots: f64,
    (pace, slack): (f64, f64),
) -> Option<Vec<StagePlan>> {
    let count = devices.len();
    let total = count * chunks;
    let depth = costs.len();
    let mut time = vec![0.0; count];
    let mut memory = vec![0u64; count];
    let mut stages = Vec::with_capacity(total);
    let mut start = 0;
    for i in 0..total {
        let (d, c) = (i % count, i / count);
        let device = &devices[d];
        let so_far = (c + 1) as f64 / chunks as f64;
        let time_left = (pace * so_far - time[d]).min(slack * pace / chunks as f64);
        let room = ((device.memory as f64 * so_far) as u64).saturating_sub(memory[d]);
        let budget = Candidate { memory: room, ..device.clone() };
        let priced = |end: usize| -> Option<StagePlan> {
            let spot = Spot {
                c: &budget,
                shares: &[1.0],
                from_before: per_byte(i.checked_sub(1).map(|j| &devices[j % count]), device),
                from_after: per_byte((i + 1 < total).then(|| &devices[(i + 1) % count]), device),
                s: i,
                count: total,
                lodging: false,
                times: None,
                held: Some(held[i]),
            };
            let stage = price(costs, start..end, &spot, micro_batches, slots);
            (stage.time() <= time_left && stage.memory.total() <= room).then_some(stage)
        };
        // A layer at least for each stage after this one; the last takes the rest.
        let last_end = depth.checked_sub(total - i - 1)?;
        let stage = if i + 1 == total {
            priced(depth)?
        } else {
            let mut best = priced(start + 1)?;
            let (mut lo, mut hi) = (start + 1, last_end + 1);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                match priced(mid) {
                    Some(stage) => (best, lo) = (stage, mid),
                    None => hi = mid,
                }
            }
            best
        };
        time[d] += stage.time();
        memory[d] += stage.memory.total();
        start = stage.layers.end;
        let mut stage = stage;
        stage.available = device.memory;
        stages.push(stage);
    }
    Some(stages)
}
