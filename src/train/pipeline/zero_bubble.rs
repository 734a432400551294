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
//! more than under 1F1B), as far as its memory allows. A stage with no room for more (or
//! that recomputes) still splits with none put off where one micro-batch's kept gradients
//! fit: its input's gradient goes back before its weights' part runs. The first stage
//! never splits (nobody waits for its input's gradient), nor does a group.
//!
//! The order is ZB-H1's ([`zero_bubble`](super::zero_bubble)): 1F1B's forwards and
//! backwards, each weights' part after its backward pass, but `d` backward passes late (as
//! many as the stage has room to hold more than under 1F1B), the last `d` of them at the
//! end, where they fill the waits of the drain. The forwards and backwards keep 1F1B's
//! order, so the stages wait on each other as under 1F1B and never deadlock.

use std::ops::Range;

use super::cost::LayerCost;
use super::plan::PipelinePlan;
use super::schedule::{Work, in_flight, one_f_one_b, zero_bubble};
use crate::{Error, Result};

impl PipelinePlan {
    /// This plan with its stages' backward passes split where they have the room, played
    /// in the zero-bubble order (itself, where it is split already); `None` where no stage
    /// can split (an interleaved plan, one stage, every later stage a group or short of
    /// room for one micro-batch's kept gradients).
    pub fn zero_bubble(&self) -> Option<PipelinePlan> {
        if self.splits_backward() {
            return Some(self.clone());
        }
        if self.chunks != 1 || self.stages.len() < 2 || self.micro_batches == 0 {
            return None;
        }
        let mut plan = self.clone();
        let (count, m) = (plan.stages.len(), self.micro_batches);
        // ZB-H1 bounds each stage by 1F1B's peak, the first stage's.
        let most = in_flight(0, count, m);
        let mut any = false;
        for (s, stage) in plan.stages.iter_mut().enumerate().skip(1) {
            if !stage.helpers.is_empty() || stage.weight_s <= 0.0 {
                continue;
            }
            let (kept, weights_part) = split_needs(&self.costs, &stage.layers);
            let held = in_flight(s, count, m) as u64;
            if stage.recompute.is_empty() {
                // Without recomputation each micro-batch in flight keeps the same bytes.
                let each = stage.memory.activations / held + kept;
                let rest = stage.memory.total() - stage.memory.activations + weights_part;
                let can = (stage.available.saturating_sub(rest) / each.max(1)).min(most as u64);
                if can > held {
                    stage.memory.activations = can * each;
                    stage.memory.workspace += weights_part;
                    stage.split = Some(can as usize);
                    any = true;
                    continue;
                }
            }
            // Nothing put off: the input's gradient still goes back before the weights' part
            // runs, which holds one micro-batch's kept gradients where the whole pass held
            // the gradients of its activations.
            if stage.memory.total() + kept <= stage.available {
                stage.memory.workspace += kept;
                stage.split = Some(held as usize);
                any = true;
            }
        }
        any.then_some(plan)
    }

    /// An `InvalidArgument` where a hand-edited plan splits what cannot run split: an
    /// interleaved plan, a group, or a stage holding fewer micro-batches than 1F1B gives it
    /// or more than the step has.
    pub(super) fn check_split(&self) -> Result<()> {
        let (count, m) = (self.stages.len(), self.micro_batches);
        for (s, stage) in self.stages.iter().enumerate() {
            let Some(held) = stage.split else { continue };
            let why = if self.chunks != 1 {
                "an interleaved plan does not split"
            } else if !stage.helpers.is_empty() {
                "a group does not split"
            } else if held < in_flight(s, count, m) || held > m {
                "it must hold from 1F1B's micro-batches in flight up to the step's"
            } else {
                continue;
            };
            return Err(Error::InvalidArgument {
                op: "Pipeline".into(),
                device: stage.label.clone(),
                detail: format!("stage {s} splits its backward passes holding {held}: {why}"),
            });
        }
        Ok(())
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
                    Some(held) => {
                        zero_bubble(s, count, m, held.saturating_sub(in_flight(s, count, m)))
                    }
                    None => one_f_one_b(s, count, m),
                };
                list.into_iter().map(|w| (0, w)).collect()
            })
            .collect()
    }
}

/// What splitting the backward passes of `layers` needs beyond a whole pass: one
/// micro-batch's kept output gradients, and the largest layer's gradients, which the
/// weights' part makes before they join the running sums while the micro-batches put off
/// hold theirs.
pub(super) fn split_needs(costs: &[LayerCost], layers: &Range<usize>) -> (u64, u64) {
    let kept = layers.clone().map(|l| costs[l].kept_grad_bytes as u64).sum();
    let weights_part = layers.clone().map(|l| costs[l].param_bytes as u64).max().unwrap_or(0);
    (kept, weights_part)
}
