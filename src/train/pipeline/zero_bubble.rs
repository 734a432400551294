//! Zero-bubble pipelining (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, its
//! ZB-H1 schedule): a stage's backward pass in two parts. The first computes the gradient
//! of the stage's input, which the stage before is waiting for, and sends it at once; the
//! second, the gradients of the stage's weights, which nobody waits for, runs later, where
//! the stage would otherwise wait. Under 1F1B the drain is a chain of whole backward
//! passes, one stage after another; split, it is a chain of input gradients only, and the
//! weights' parts fill the waits along it.
//!
//! A stage holds a micro-batch from its forward pass to its weights' part: its activations,
//! and between the two parts the output gradients the weights' part reads
//! ([`LayerCost::kept_grad_bytes`](super::LayerCost)). As in ZB-H1, a stage may hold as
//! many as 1F1B's first stage does (stage `s` puts off `s` weights' parts, so holds `s`
//! more than under 1F1B), as far as its memory allows. A stage splits only where it has
//! room for 1F1B's micro-batches and their kept gradients; the first stage never does
//! (nobody waits for its input's gradient), nor a group or a stage that recomputes.
//!
//! The order is ZB-H1's ([`zero_bubble`](super::zero_bubble)): 1F1B's forwards and
//! backwards, each backward followed by its weights' part, but for the first few put off
//! to the end (as many as the stage has room to hold), which fill the waits of the drain.
//! The forwards and backwards keep 1F1B's order, so the stages wait on each other as
//! under 1F1B and never deadlock.

use super::plan::PipelinePlan;
use super::schedule::{Work, in_flight, one_f_one_b, zero_bubble};
use super::simulate::play;

impl PipelinePlan {
    /// This plan with its stages' backward passes split where they have the room, played
    /// in the zero-bubble order; `None` where no stage can split (an interleaved plan, one
    /// stage, every later stage short of room or recomputing).
    pub fn zero_bubble(&self) -> Option<PipelinePlan> {
        if self.splits_backward() {
            return Some(self.clone());
        }
        if self.chunks != 1 || self.stages.len() < 2 {
            return None;
        }
        let mut plan = self.clone();
        let (count, m) = (plan.stages.len(), self.micro_batches);
        // ZB-H1 bounds each stage by 1F1B's peak, the first stage's.
        let most = in_flight(0, count, m);
        let mut any = false;
        for (s, stage) in plan.stages.iter_mut().enumerate().skip(1) {
            if !stage.helpers.is_empty() || !stage.recompute.is_empty() || stage.weight_s <= 0.0 {
                continue;
            }
            // Without recomputation each micro-batch in flight keeps the same bytes.
            let held = in_flight(s, count, m) as u64;
            let each = stage.memory.activations / held
                + stage.layers.clone().map(|l| self.costs[l].kept_grad_bytes as u64).sum::<u64>();
            // The weights' part makes a layer's gradients before they join the sums, while
            // the micro-batches put off hold theirs.
            let weights_part =
                stage.layers.clone().map(|l| self.costs[l].param_bytes as u64).max().unwrap_or(0);
            let rest = stage.memory.total() - stage.memory.activations + weights_part;
            let room = stage.available.saturating_sub(rest) / each.max(1);
            let can = room.min(most as u64);
            if can < held {
                continue;
            }
            stage.memory.activations = can * each;
            stage.memory.workspace += weights_part;
            stage.split = Some(can as usize);
            any = true;
        }
        any.then_some(plan)
    }

    /// `self` or its [`zero_bubble`](Self::zero_bubble) form, whichever plays the shorter
    /// step.
    pub(crate) fn zero_bubble_if_shorter(self) -> PipelinePlan {
        match self.zero_bubble() {
            Some(split) if play(&split).makespan < play(&self).makespan => split,
            _ => self,
        }
    }

    /// Whether some stage runs its backward pass in two parts.
    pub fn splits_backward(&self) -> bool {
        self.stages.iter().any(|s| s.split.is_some())
    }

    /// Each device's list of work, in order, as pairs of its chunk and the work: 1F1B
    /// ([`one_f_one_b`](super::one_f_one_b)), interleaved
    /// ([`interleaved`](super::interleaved)), or zero-bubble (this module's).
    pub fn orders(&self) -> Vec<Vec<(usize, Work)>> {
        let (devices, chunks, m) = (self.devices(), self.chunks, self.micro_batches);
        if !self.splits_backward() {
            return (0..devices).map(|d| super::interleaved(d, devices, chunks, m)).collect();
        }
        let count = self.stages.len();
        (self.stages.iter().enumerate())
            .map(|(s, stage)| {
                let list = match stage.split {
                    Some(held) => zero_bubble(s, count, m, held - in_flight(s, count, m)),
                    None => one_f_one_b(s, count, m),
                };
                list.into_iter().map(|w| (0, w)).collect()
            })
            .collect()
    }
}
