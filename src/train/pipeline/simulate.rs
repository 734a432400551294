//! Plays a plan's schedule (1F1B, interleaved or zero-bubble) event by event, on its predicted times: what a step takes
//! before a single byte moves, bubbles and uneven stages included.
//!
//! As the runtime does it: each stage runs its list in order on its own; a forward starts
//! when the stage is free and the activation from the stage before has been received; a
//! backward when the gradient from the stage after has. A stage receives on a thread of
//! its own per direction, one message ahead: the copy of micro-batch `m` starts once the
//! sender has finished it and the stage has taken `m − 1`, and overlaps the stage's work.
//! The stages of an interleaved plan that share a device take turns in its order.

use super::plan::PipelinePlan;
use super::schedule::Work;

/// The outcome of playing one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Played {
    /// Seconds from the step's start (its first forward pass, or the lodged values it
    /// waits for) to the last unit of work, then what of the syncs it did not hide
    /// ([`PipelinePlan::step_end`]).
    pub makespan: f64,
    /// Per device (per stage, where each device holds one), the seconds it was busy.
    pub busy: Vec<f64>,
    /// Per stage, when it did its last unit of work: when its gradients may leave.
    pub ended: Vec<f64>,
}

impl Played {
    /// The share of the devices' time spent idle.
    pub fn bubble(&self) -> f64 {
        let span = self.makespan * self.busy.len() as f64;
        if span > 0.0 { 1.0 - self.busy.iter().sum::<f64>() / span } else { 0.0 }
    }
}

/// Plays `plan` with its `micro_batches`.
pub fn play(plan: &PipelinePlan) -> Played {
    let stages = plan.stages.len();
    let devices = plan.devices();
    let micro_batches = plan.micro_batches;
    let lists = plan.orders();
    // When each stage's forward and backward of each micro-batch finished.
    let mut forward_done = vec![vec![f64::NAN; micro_batches]; stages];
    let mut backward_done = vec![vec![f64::NAN; micro_batches]; stages];
    let mut next = vec![0usize; devices];
    // A stage starts once its lodged values are back ([`PipelinePlan::refill_s`]).
    let mut free = vec![0f64; devices];
    for (s, back) in plan.values_back().into_iter().enumerate() {
        free[s % devices] = free[s % devices].max(back);
    }
    // When each stage last took a received activation, and a received gradient.
    let mut took_forward = vec![0f64; stages];
    let mut took_backward = vec![0f64; stages];
    let mut busy = vec![0f64; devices];
    let mut ended = vec![0f64; stages];
    let mut left: usize = lists.iter().map(Vec::len).sum();
    while left > 0 {
        let before = left;
        for d in 0..devices {
            // Run this device's list as far as its inputs allow.
            while let Some(&(chunk, work)) = lists[d].get(next[d]) {
                let s = chunk * devices + d;
                let stage = &plan.stages[s];
                // When its input was sent (NaN: not yet), and what receiving it takes.
                let (sent, receive, took, last_taken) = match work {
                    Work::Forward(_) if s == 0 => (0.0, 0.0, stage.forward_s, 0.0),
                    Work::Forward(m) => (
                        forward_done[s - 1][m],
                        stage.receive_forward_s,
                        stage.forward_s,
                        took_forward[s],
                    ),
                    Work::Backward(m) if s + 1 == stages => {
                        (forward_done[s][m], 0.0, stage.input_s(), 0.0)
                    }
                    Work::Backward(m) => (
                        backward_done[s + 1][m],
                        stage.receive_backward_s,
                        stage.input_s(),
                        took_backward[s],
                    ),
                    // Its own backward pass came before it in the list.
                    Work::Weights(_) => (0.0, 0.0, stage.weight_s, 0.0),
                };
                if sent.is_nan() {
                    break;
                }
                let ready = sent.max(last_taken) + receive;
                let start = free[d].max(ready);
                let end = start + took;
                match work {
                    Work::Forward(m) => {
                        forward_done[s][m] = end;
                        took_forward[s] = start;
                    }
                    Work::Backward(m) => {
                        backward_done[s][m] = end;
                        took_backward[s] = start;
                    }
                    Work::Weights(_) => {}
                }
                free[d] = end;
                ended[s] = end;
                busy[d] += took;
                next[d] += 1;
                left -= 1;
            }
        }
        if left == before {
            // Cannot happen for the schedules' lists (their tests play every shape), but a
            // stuck play must not spin.
            return Played { makespan: f64::INFINITY, busy, ended };
        }
    }
    // Each stage's gradients leave once it is done (a group's members' to the lead, a
    // lodged stage's to its state's host); the updates and a group's values on the way to
    // its helpers once all have arrived.
    Played { makespan: plan.step_end(&ended), busy, ended }
}
