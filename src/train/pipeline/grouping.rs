//! Stage groups formed by the search: where a device the plan leaves out, or two
//! neighbouring stages' devices, would take a stage's micro-batches faster as a
//! data-parallel group ([`Candidate::group`]), each taking whole rows of every micro-batch.
//!
//! From the best plan of single-device stages, each round prices the moves (two
//! neighbouring stages merge into one group; a spare device joins a stage as a helper; up
//! to 256 of them), with the layers cut again for the new stages, and keeps the one that
//! shortens the predicted step most, until none does.

use super::cost::LayerCost;
use super::plan::{Candidate, PipelinePlan, Search};
use crate::Result;

/// The most rounds of moves, and the most cuts one round prices.
const ROUNDS: usize = 16;
const TRIES: usize = 256;

impl PipelinePlan {
    /// [`search`](Self::search), then data-parallel groups formed where they shorten the
    /// predicted step: a device the plan leaves out joins a stage as a helper, or two
    /// neighbouring stages become one stage of both devices (led by the one with the most
    /// memory, which keeps the optimizer state), the layers cut again each time. Groups
    /// share whole rows of each micro-batch, so micro-batches of one row (`costs`
    /// profiled on one) get the plain search's plan. Run the plan with
    /// [`Pipeline::with_copies`](crate::train::Pipeline::with_copies) and
    /// [`copies_needed`](Self::copies_needed) copies of the model.
    pub fn search_with_groups(
        costs: &[LayerCost],
        candidates: &[Candidate],
        micro_batches: usize,
        optimizer_slots: usize,
    ) -> Result<PipelinePlan> {
        let slots = optimizer_slots as f64;
        let mut plan =
            PipelinePlan::search_with_state(costs, candidates, micro_batches, slots, true)?;
        if costs.first().map_or(0, |l| l.rows) < 2 {
            return Ok(plan.interleaved_if_shorter(candidates, slots));
        }
        let id = |c: &Candidate| c.device.info().id;
        // The plan's stages as candidates, in order, and the single devices it leaves out.
        let found: Option<Vec<Candidate>> = plan
            .stages
            .iter()
            .map(|s| {
                let helpers: Vec<_> = s.helpers.iter().map(|h| h.device.info().id).collect();
                candidates
                    .iter()
                    .find(|c| {
                        id(c) == s.device.info().id
                            && c.helpers.iter().map(id).eq(helpers.iter().copied())
                    })
                    .cloned()
            })
            .collect();
        let Some(mut stages) = found else {
            return Ok(plan.interleaved_if_shorter(candidates, slots));
        };
        let used: std::collections::HashSet<_> = (plan.stages.iter())
            .flat_map(|s| std::iter::once(&s.device).chain(s.helpers.iter().map(|h| &h.device)))
            .map(|d| d.info().id)
            .collect();
        let mut spare: Vec<Candidate> = candidates
            .iter()
            .filter(|c| c.helpers.is_empty() && !used.contains(&id(c)))
            .cloned()
            .collect();
        for _ in 0..ROUNDS {
            let mut moves: Vec<(Vec<Candidate>, Option<usize>)> = Vec::new();
            for s in 1..stages.len() {
                if let Ok(merged) = merged(&stages[s - 1], &stages[s]) {
                    let mut list = stages.clone();
                    list.splice(s - 1..=s, [merged]);
                    moves.push((list, None));
                }
            }
            for (u, extra) in spare.iter().enumerate() {
                for s in 0..stages.len() {
                    if let Ok(joined) = with_helper(&stages[s], extra.clone()) {
                        let mut list = stages.clone();
                        list[s] = joined;
                        moves.push((list, Some(u)));
                    }
                }
            }
            let mut best: Option<(PipelinePlan, Vec<Candidate>, Option<usize>)> = None;
            for (list, took) in moves.into_iter().take(TRIES) {
                let search = Search::new(costs, list.iter().collect(), micro_batches, slots);
                let order: Vec<usize> = (0..list.len()).collect();
                let Some(cut) = search.best_for(&order) else { continue };
                let bar = best.as_ref().map_or(&plan, |b| &b.0).predicted_step_s();
                if cut.predicted_step_s() < bar * (1.0 - 1e-9) {
                    best = Some((cut, list, took));
                }
            }
            let Some((better, list, took)) = best else { break };
            (plan, stages) = (better, list);
            if let Some(u) = took {
                spare.remove(u);
            }
        }
        // Where no group helps, interleaving still may (a plan with groups stays as it is).
        Ok(plan.interleaved_if_shorter(candidates, slots))
    }

    /// How many copies of the model a run of this plan needs
    /// ([`Pipeline::with_copies`](crate::train::Pipeline::with_copies)): one per helper of
    /// its largest group.
    pub fn copies_needed(&self) -> usize {
        self.stages.iter().map(|s| s.helpers.len()).max().unwrap_or(0)
    }
}

/// `c` without its helpers.
fn alone(c: &Candidate) -> Candidate {
    Candidate { helpers: Vec::new(), ..c.clone() }
}

/// `stage`'s group with `extra` as one more helper.
fn with_helper(stage: &Candidate, extra: Candidate) -> Result<Candidate> {
    let mut helpers = stage.helpers.clone();
    helpers.push(extra);
    Candidate::group(alone(stage), helpers)
}

/// Two stages' devices as one group, led by the device with the most memory.
fn merged(a: &Candidate, b: &Candidate) -> Result<Candidate> {
    let mut members: Vec<Candidate> = a.members().chain(b.members()).map(alone).collect();
    let lead = (0..members.len()).max_by_key(|&i| (members[i].memory, usize::MAX - i)).unwrap_or(0);
    let lead = members.remove(lead);
    Candidate::group(lead, members)
}
