//! The 1F1B schedule (PipeDream-Flush, Megatron's default) as data: for each stage, the
//! order in which it runs its micro-batches' forward and backward passes.
//!
//! Stage `s` of `S` first runs `min(S - s - 1, M)` forwards (warm-up), then alternates one
//! forward with one backward, then runs the backwards left (cool-down). So stage `s` never
//! holds more than `S - s` micro-batches' activations, however many micro-batches a step
//! has: the memory of GPipe's "all forwards, then all backwards" would grow with `M`.

/// One unit of a stage's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// The forward pass of micro-batch `m` through the stage's layers.
    Forward(usize),
    /// The backward pass of micro-batch `m`.
    Backward(usize),
}

/// The order of work for stage `stage` of `stages`, over `micro_batches` (none for a
/// stage past the last).
pub fn one_f_one_b(stage: usize, stages: usize, micro_batches: usize) -> Vec<Work> {
    if stage >= stages {
        return Vec::new();
    }
    let warm_up = (stages - stage - 1).min(micro_batches);
    let mut work: Vec<Work> = (0..warm_up).map(Work::Forward).collect();
    let (mut forward, mut backward) = (warm_up, 0);
    while backward < micro_batches {
        if forward < micro_batches {
            work.push(Work::Forward(forward));
            forward += 1;
        }
        work.push(Work::Backward(backward));
        backward += 1;
    }
    work
}

/// The most micro-batches whose activations stage `stage` holds at once under 1F1B.
pub fn in_flight(stage: usize, stages: usize, micro_batches: usize) -> usize {
    stages.saturating_sub(stage).min(micro_batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Work::{Backward as B, Forward as F};

    #[test]
    fn four_stages_eight_micro_batches() {
        assert_eq!(
            one_f_one_b(0, 4, 8),
            [F(0), F(1), F(2), F(3), B(0), F(4), B(1), F(5), B(2), F(6), B(3), F(7), B(4)]
                .into_iter()
                .chain([B(5), B(6), B(7)])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            one_f_one_b(3, 4, 8),
            (0..8).flat_map(|m| [F(m), B(m)]).collect::<Vec<_>>(),
            "the last stage turns each forward straight round"
        );
        assert_eq!(one_f_one_b(0, 4, 2), vec![F(0), F(1), B(0), B(1)]);
    }

    /// Plays the stages against each other: every forward after the previous stage's, every
    /// backward after the next stage's. A schedule that deadlocks, or holds more
    /// activations than `in_flight` says, fails.
    #[test]
    fn every_schedule_runs_to_the_end_within_its_memory() {
        for stages in 1..=6 {
            for micro_batches in 1..=9 {
                let lists: Vec<Vec<Work>> =
                    (0..stages).map(|s| one_f_one_b(s, stages, micro_batches)).collect();
                for list in &lists {
                    assert_eq!(list.len(), 2 * micro_batches);
                }
                let mut next = vec![0; stages];
                let mut done = vec![std::collections::HashSet::new(); stages];
                let mut held = vec![0usize; stages];
                loop {
                    let mut moved = false;
                    for s in 0..stages {
                        let Some(&work) = lists[s].get(next[s]) else { continue };
                        let ready = match work {
                            F(_) if s == 0 => true,
                            F(m) => done[s - 1].contains(&F(m)),
                            B(m) if s + 1 == stages => done[s].contains(&F(m)),
                            B(m) => done[s + 1].contains(&B(m)),
                        };
                        if ready {
                            match work {
                                F(_) => held[s] += 1,
                                B(_) => held[s] -= 1,
                            }
                            assert!(held[s] <= in_flight(s, stages, micro_batches));
                            done[s].insert(work);
                            next[s] += 1;
                            moved = true;
                        }
                    }
                    if !moved {
                        break;
                    }
                }
                assert!(
                    (0..stages).all(|s| next[s] == lists[s].len()),
                    "deadlock: {stages} stages, {micro_batches} micro-batches"
                );
            }
        }
    }
}
