//! Fleets larger than one pipeline: the chips dealt into data-parallel replicas, each
//! replica a pipeline planned over its own chips, the step's micro-batches shared among
//! the replicas by their speed, and the gradients all-reduced across them.
//!
//! Chips are sorted by speed and dealt in a snake (1, 2, …, R, R, …, 2, 1, …), so every
//! replica gets a like mix of fast and slow chips and its own stages can balance them.
//! Every replica count from one up to the micro-batches (on a geometric grid) is tried;
//! the plan with the shortest simulated step wins.

use std::fmt::Write as _;

use rayon::prelude::*;

use super::cost::LayerCost;
use super::plan::{Candidate, PipelinePlan};
use super::simulate::play;
use crate::plan::{Linear, equal_finish};
use crate::{Error, Result};

/// How many of the best shapes (replica count, dealing) are planned again with swaps.
const REFINED: usize = 6;

/// How many of the best replica counts of the first, coarse pass have the counts beside
/// them planned too.
const NEIGHBOURED: usize = 4;

/// The most stage passes (stages × micro-batches) a replica's step may have for the share
/// balancing to play it rather than price it by formula.
const PLAYED: usize = 4096;

/// A shape's plan: its simulated step, the plan, its groups of chips and the optimizer
/// state per parameter it was planned with.
type Planned = (f64, ReplicaPlan, Vec<Vec<Candidate>>, f64);

/// Data-parallel replicas of pipelines over one fleet.
#[derive(Clone, Debug)]
pub struct ReplicaPlan {
    /// Each replica's pipeline, with its share of the micro-batches.
    pub replicas: Vec<PipelinePlan>,
    /// Predicted seconds of the gradients' all-reduce across the replicas, after the last
    /// backward pass (a ring per chip's stages, at the slowest link it crosses).
    pub all_reduce_s: f64,
}

impl ReplicaPlan {
    /// The best plan of `costs` over `chips` for a step of `micro_batches`, or an `Err`
    /// when no replica count fits the chips' memory.
    pub fn search(
        costs: &[LayerCost],
        chips: &[Candidate],
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<ReplicaPlan> {
        ReplicaPlan::search_sharded(costs, chips, micro_batches, optimizer_slots, false)
    }

    /// [`search`](Self::search) for replicas that shard the optimizer state among them
    /// (`shard`: ZeRO stage 1, [`PipelineReplicas::shard_optimizer_state`]), each stage
    /// priced with `1/R` of its optimizer state.
    ///
    /// [`PipelineReplicas::shard_optimizer_state`]: super::PipelineReplicas::shard_optimizer_state
    pub fn search_sharded(
        costs: &[LayerCost],
        chips: &[Candidate],
        micro_batches: usize,
        optimizer_slots: usize,
        shard: bool,
    ) -> Result<ReplicaPlan> {
        // Each shape (replica count, dealing) planned on a core of its own, with its
        // simulated step (a play per replica: worth doing once).
        let plan_shape = |&(count, dealing): &(usize, Dealing)| -> Result<Planned> {
            let groups = deal(chips, count, dealing);
            let state = if shard {
                optimizer_slots as f64 / groups.len().max(1) as f64
            } else {
                optimizer_slots as f64
            };
            let plan = ReplicaPlan::over(costs, &groups, micro_batches, state, false)?;
            Ok((plan.step_s(), plan, groups, state))
        };
        let shapes = |counts: &[usize]| -> Vec<(usize, Dealing)> {
            counts.iter().flat_map(|&c| [(c, Dealing::Mixed), (c, Dealing::BySpeed)]).collect()
        };
        // The step changes smoothly with the replica count: every other count first (the
        // first and the last among them), then the counts beside the best few.
        let counts = replica_counts(chips.len().min(micro_batches));
        let mut first: Vec<usize> = counts.iter().copied().step_by(2).collect();
        if counts.len().is_multiple_of(2) {
            first.extend(counts.last());
        }
        let mut tried: Vec<(usize, Result<Planned>)> =
            shapes(&first).par_iter().map(|shape| (shape.0, plan_shape(shape))).collect();
        let mut ranked: Vec<(f64, usize)> = tried
            .iter()
            .filter_map(|(count, outcome)| outcome.as_ref().ok().map(|p| (p.0, *count)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        // A count's best dealing stands for it.
        let mut seen = Vec::new();
        ranked.retain(|(_, count)| {
            !seen.contains(count) && {
                seen.push(*count);
                true
            }
        });
        let mut beside: Vec<usize> = Vec::new();
        for (_, count) in ranked.iter().take(NEIGHBOURED) {
            let i = counts.iter().position(|c| c == count).unwrap_or(0);
            for j in [i.wrapping_sub(1), i + 1] {
                if let Some(&c) = counts.get(j)
                    && !first.contains(&c)
                    && !beside.contains(&c)
                {
                    beside.push(c);
                }
            }
        }
        let more: Vec<(usize, Result<Planned>)> =
            shapes(&beside).par_iter().map(|shape| (shape.0, plan_shape(shape))).collect();
        tried.extend(more);
        let mut planned = Vec::with_capacity(tried.len());
        let mut first_error = None;
        for (_, outcome) in tried {
            match outcome {
                Ok(p) => planned.push(p),
                // One replica over every chip is the roomiest: its error says why nothing
                // fits.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // The best shapes' replicas planned again with their devices' order searched too
        // (dearer, so only for those), the best of all kept.
        planned.sort_by(|a, b| a.0.total_cmp(&b.0));
        planned.truncate(REFINED);
        let best = planned
            .into_par_iter()
            .map(|(step, plan, groups, state)| {
                let better = match ReplicaPlan::over(costs, &groups, micro_batches, state, true) {
                    Ok(refined) if refined.step_s() < step => refined,
                    _ => plan,
                };
                let split = better.split_where_dear();
                (split.step_s(), split)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, plan)| plan);
        best.ok_or_else(|| {
            first_error.unwrap_or_else(|| Error::InvalidArgument {
                op: "ReplicaPlan::search".into(),
                device: "-".into(),
                detail: "no chips, or no micro-batches".into(),
            })
        })
    }

    /// The plan with exactly `count` replicas, each a like mix of fast and slow chips.
    pub fn with_replicas(
        costs: &[LayerCost],
        chips: &[Candidate],
        count: usize,
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<ReplicaPlan> {
        if count == 0 || chips.is_empty() {
            return Err(Error::InvalidArgument {
                op: "ReplicaPlan::with_replicas".into(),
                device: "-".into(),
                detail: format!("{count} replicas of {} chips", chips.len()),
            });
        }
        let groups = deal(chips, count, Dealing::Mixed);
        let plan = ReplicaPlan::over(costs, &groups, micro_batches, optimizer_slots as f64, true)?;
        Ok(plan.split_where_dear())
    }

    /// The replicas too long to play at every move of the shares (which
    /// [`over`](Self::over) tries split as it moves them) split where that plays shorter
    /// ([`PipelinePlan::zero_bubble`]): for the few plans the search refines.
    fn split_where_dear(self) -> ReplicaPlan {
        let replicas: Vec<PipelinePlan> = (self.replicas.into_par_iter())
            .map(|r| match r.zero_bubble().filter(|_| !cheap(&r)) {
                // Against the 1F1B formula, within a percent or so of its play.
                Some(split) if play(&split).makespan < step(&r) => split,
                _ => r,
            })
            .collect();
        let all_reduce_s = all_reduce_s(&replicas);
        ReplicaPlan { replicas, all_reduce_s }
    }

    /// One replica per group of chips.
    /// (`swaps`: as for [`PipelinePlan::search_with_state`].)
    fn over(
        costs: &[LayerCost],
        groups: &[Vec<Candidate>],
        micro_batches: usize,
        optimizer_slots: f64,
        swaps: bool,
    ) -> Result<ReplicaPlan> {
        let count = groups.len();
        if count == 0 {
            return Err(Error::InvalidArgument {
                op: "ReplicaPlan".into(),
                device: "-".into(),
                detail: "no chips".into(),
            });
        }
        // Planned for the whole step's micro-batches: the most any replica could hold in
        // flight, so each plan's memory holds whatever share it gets.
        let replicas: Vec<Result<PipelinePlan>> = groups
            .par_iter()
            .map(|group| {
                PipelinePlan::search_with_state(costs, group, micro_batches, optimizer_slots, swaps)
            })
            .collect();
        // The first replica's error, whichever core found one first.
        let replicas = replicas.into_iter().collect::<Result<Vec<_>>>()?;
        let mut shares = balanced_shares(&replicas, micro_batches);
        if shares.iter().sum::<usize>() < micro_batches {
            // No replica could be priced: even shares.
            shares = (0..count)
                .map(|r| micro_batches / count + usize::from(r < micro_batches % count))
                .collect();
        }
        // Each replica priced again for its own share: fewer micro-batches in flight may
        // fit without recomputing. A replica with no share has no part in the step.
        let mut shared: Vec<Shared> = Vec::with_capacity(count);
        for ((replica, share), group) in replicas.into_iter().zip(shares).zip(groups) {
            if share == 0 {
                continue;
            }
            let stages = replica.stage_candidates(group);
            shared.push(Shared::new(costs, stages, replica, share, optimizer_slots));
        }
        // Repricing moves the replicas' ends apart a little: micro-batches move, one at a
        // time, from the replica that ends last to the one that would end first with one
        // more, while that ends the step sooner.
        for _ in 0..2 * shared.len() {
            let (last, end) = (0..shared.len())
                .map(|r| (r, shared[r].makespan))
                .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
            let Some(to) = (0..shared.len())
                .filter(|&r| r != last)
                .min_by(|&a, &b| shared[a].one_more().total_cmp(&shared[b].one_more()))
            else {
                break;
            };
            if shared[last].plan.micro_batches <= 1 || shared[to].one_more() >= end {
                break;
            }
            let less = shared[last].reshared(costs, -1, optimizer_slots);
            let more = shared[to].reshared(costs, 1, optimizer_slots);
            if less.makespan.max(more.makespan) >= end {
                break;
            }
            (shared[last], shared[to]) = (less, more);
        }
        let replicas: Vec<PipelinePlan> = shared.into_iter().map(|s| s.plan).collect();
        let all_reduce_s = all_reduce_s(&replicas);
        Ok(ReplicaPlan { replicas, all_reduce_s })
    }

    /// Predicted seconds of one step: the slowest replica's simulated pipeline, then the
    /// all-reduce.
    pub fn step_s(&self) -> f64 {
        self.replicas.iter().map(|r| play(r).makespan).fold(0.0, f64::max) + self.all_reduce_s
    }

    /// A line per replica: its stages (layers per stage, devices), micro-batches and time.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "{} replicas, all-reduce {:.1} ms, step {:.1} ms\n",
            self.replicas.len(),
            self.all_reduce_s * 1e3,
            self.step_s() * 1e3
        );
        for (r, replica) in self.replicas.iter().enumerate() {
            let cut: Vec<String> = replica
                .stages
                .iter()
                .map(|s| format!("{}{}", s.layers.len(), s.recompute_mark()))
                .collect();
            let played = play(replica);
            let interleaved = match replica.chunks() {
                1 => String::new(),
                v => format!(" over {} devices, {v} each, interleaved", replica.devices()),
            };
            let _ = writeln!(
                out,
                "replica {r}: {} stages{interleaved} [{}], {} micro-batches, {:.1} ms, bubble {:.1}%",
                replica.stages.len(),
                cut.join(" "),
                replica.micro_batches,
                played.makespan * 1e3,
                played.bubble() * 100.0
            );
        }
        out
    }
}

/// Replica counts worth trying up to `max`: every count to 8, then about a fifth apart.
fn replica_counts(max: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = (1..=max.min(8)).collect();
    let mut c = 8.0f64;
    while (c as usize) < max {
        c *= 1.2;
        counts.push((c as usize).min(max));
    }
    counts.dedup();
    counts
}

/// How chips are dealt into replicas.
#[derive(Clone, Copy, Debug)]
enum Dealing {
    /// Fastest first, in a snake: every replica a like mix, balanced by its stages.
    Mixed,
    /// Fastest first, in runs: every replica of like chips (its stages even), the replicas
    /// unlike (balanced by their shares of the micro-batches).
    BySpeed,
}

/// `chips` sorted fastest first and dealt into `count` groups.
fn deal(chips: &[Candidate], count: usize, dealing: Dealing) -> Vec<Vec<Candidate>> {
    let rate = |c: &Candidate| c.profile.peak_matmul_rate();
    let mut sorted: Vec<&Candidate> = chips.iter().collect();
    sorted.sort_by(|a, b| rate(b).total_cmp(&rate(a)));
    let mut groups = vec![Vec::new(); count];
    let per = chips.len().div_ceil(count.max(1));
    for (i, chip) in sorted.into_iter().enumerate() {
        let group = match dealing {
            Dealing::Mixed if (i / count).is_multiple_of(2) => i % count,
            Dealing::Mixed => count - 1 - i % count,
            Dealing::BySpeed => (i / per).min(count - 1),
        };
        groups[group].push(chip.clone());
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// A replica's plan for its share of the micro-batches, with what repricing it needs and
/// its predicted step.
struct Shared {
    stages: Option<Vec<(std::ops::Range<usize>, Candidate)>>,
    /// The replica as planned for the whole step's micro-batches: what stands where it
    /// cannot be priced again for its share.
    whole: PipelinePlan,
    plan: PipelinePlan,
    makespan: f64,
}

impl Shared {
    /// `replica` priced again for `share` micro-batches over `stages`, where it can be.
    fn new(
        costs: &[LayerCost],
        stages: Option<Vec<(std::ops::Range<usize>, Candidate)>>,
        replica: PipelinePlan,
        share: usize,
        optimizer_slots: f64,
    ) -> Shared {
        let repriced = stages.clone().and_then(|stages| {
            PipelinePlan::manual_with_state(costs, stages, share, optimizer_slots).ok()
        });
        // The plan as searched holds any share; repriced, it may recompute where the search
        // lodged optimizer state instead (a manual plan lodges only what does not fit).
        let mut kept = replica.clone();
        kept.micro_batches = share;
        let kept_step = step(&kept);
        let (mut plan, mut makespan) = match repriced.map(|plan| (step(&plan), plan)) {
            Some((makespan, plan)) if makespan <= kept_step => (plan, makespan),
            _ => (kept, kept_step),
        };
        // Split where playing it is cheap; the rest are tried once the shares are set.
        if cheap(&plan)
            && let Some(split) = plan.zero_bubble()
        {
            let played = play(&split).makespan;
            if played < makespan {
                (plan, makespan) = (split, played);
            }
        }
        Shared { stages, whole: replica, plan, makespan }
    }

    /// The same replica with `change` more micro-batches.
    fn reshared(&self, costs: &[LayerCost], change: isize, optimizer_slots: f64) -> Shared {
        let share = self.plan.micro_batches.saturating_add_signed(change);
        Shared::new(costs, self.stages.clone(), self.whole.clone(), share, optimizer_slots)
    }

    /// About when it would end with one more micro-batch.
    fn one_more(&self) -> f64 {
        self.makespan + self.plan.pace_s()
    }
}

/// Whether playing a replica's step is cheap enough to do at every move of the shares.
fn cheap(plan: &PipelinePlan) -> bool {
    plan.stages.len() * plan.micro_batches <= PLAYED
}

/// A replica's step: played where that is cheap; else the 1F1B formula, within a percent
/// or so of it.
fn step(plan: &PipelinePlan) -> f64 {
    match cheap(plan) {
        true => play(plan).makespan,
        false => plan.predicted_step_s(),
    }
}

/// Micro-batches per replica (summing to `micro_batches`; all zeros where no replica has
/// a positive, finite pace) that end the replicas' steps
/// together: replica `r`'s step with `m` of them takes about a micro-batch's trip through
/// its stages and its syncs, then `m − 1` more at its pace (the 1F1B
/// formula, [`PipelinePlan::predicted_step_s`]; interleaved over `v` chunks, `1/v` of the
/// trip and `m − 1/v` paces). Sharing by pace alone would leave the
/// replicas with long pipelines and few micro-batches, whose fill and drain weigh most,
/// finishing last. A replica whose trip alone outlasts the others' steps gets none.
pub fn balanced_shares(replicas: &[PipelinePlan], micro_batches: usize) -> Vec<usize> {
    let costs: Vec<Linear> = replicas
        .iter()
        .map(|r| {
            let pace = r.pace_s();
            let trip: f64 = r.stages.iter().map(|s| s.trip_s()).sum();
            // Interleaved, the trip is through chunks of a device's layers.
            let fixed = (trip - pace) / r.chunks() as f64 + r.sync_s();
            Linear { fixed, per_unit: pace }
        })
        .collect();
    equal_finish(&costs, micro_batches)
}

/// A ring all-reduce of every layer's gradient among the replicas' stages that hold it:
/// each chip sends and receives `2(R − 1)/R` of its stages' gradient bytes over its link,
/// all chips at once; the step waits for the slowest.
fn all_reduce_s(replicas: &[PipelinePlan]) -> f64 {
    let count = replicas.len();
    if count < 2 {
        return 0.0;
    }
    let factor = 2.0 * (count - 1) as f64 / count as f64;
    replicas
        .iter()
        .flat_map(|r| {
            // An interleaved replica's device holds every `devices()`-th stage.
            let devices = r.devices();
            (0..devices).map(move |d| {
                let held = r.stages.iter().skip(d).step_by(devices);
                let grads: f64 = held.map(|s| s.memory.grads as f64).sum();
                grads / r.stages[d].link_bytes_per_s
            })
        })
        .map(|secs| factor * secs)
        .fold(0.0, f64::max)
}
