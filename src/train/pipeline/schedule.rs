//! The 1F1B schedule (PipeDream-Flush, Megatron's default) as data: for each stage, the
//! order in which it runs its micro-batches' forward and backward passes.
//!
//! Stage `s` of `S` first runs `min(S - s - 1, M)` forwards (warm-up), then alternates one
//! forward with one backward, then runs the backwards left (cool-down). So stage `s` never
//! holds more than `S - s` micro-batches' activations, however many micro-batches a step
//! has: the memory of GPipe's "all forwards, then all backwards" would grow with `M`.
//!
//! Zero-bubble ([`zero_bubble`]): 1F1B with each backward pass in two parts, the weights'
//! part later, where the stage would wait.
//!
//! Interleaved (Megatron-LM's schedule, Narayanan et al. 2021): each of `D` devices holds
//! `v` chunks, non-adjacent stages `d, d + D, …, d + (v − 1)·D` of a pipeline of `D·v`
//! stages. A micro-batch goes round the devices `v` times, each pass through a chunk of
//! `1/v` of a device's layers, so filling and draining the pipeline takes `1/v` of the
//! time: the bubble shrinks `v`-fold, for more messages and more activations in flight.

/// One unit of a stage's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// The forward pass of micro-batch `m` through the stage's layers.
    Forward(usize),
    /// The backward pass of micro-batch `m`; where the stage's list has a
    /// [`Weights`](Work::Weights) of `m` too, only its first part (the gradient of the
    /// stage's input, which the stage before waits for).
    Backward(usize),
    /// The second part of a split backward pass of micro-batch `m` (a zero-bubble
    /// schedule's): the gradients of the stage's weights, which no stage waits for.
    Weights(usize),
}

impl Work {
    /// Its micro-batch.
    pub fn micro_batch(self) -> usize {
        match self {
            Work::Forward(m) | Work::Backward(m) | Work::Weights(m) => m,
        }
    }
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

/// The zero-bubble order of stage `stage` of `stages` (ZB-H1, Qi et al. 2024) whose
/// backward passes are split: 1F1B's forwards and backwards in 1F1B's order, each weights'
/// part `deferred` backward passes after its own (ZB-H1 puts them `stage` late), the last
/// `deferred` at the end. The drain's chain of backward passes then waits on fewer weights'
/// parts, and those fill the stages' waits. The stage holds up to `deferred` more
/// micro-batches than under 1F1B.
pub fn zero_bubble(
    stage: usize,
    stages: usize,
    micro_batches: usize,
    deferred: usize,
) -> Vec<Work> {
    let mut work = Vec::with_capacity(3 * micro_batches);
    let (mut backwards, mut weights) = (0, 0);
    for w in one_f_one_b(stage, stages, micro_batches) {
        work.push(w);
        if let Work::Backward(_) = w {
            backwards += 1;
            if backwards > deferred {
                work.push(Work::Weights(weights));
                weights += 1;
            }
        }
    }
    work.extend((weights..micro_batches).map(Work::Weights));
    work
}

/// The most micro-batches whose activations stage `stage` holds at once under 1F1B.
pub fn in_flight(stage: usize, stages: usize, micro_batches: usize) -> usize {
    stages.saturating_sub(stage).min(micro_batches)
}

/// The order of work for device `device` of `devices`, each holding `chunks` stages
/// (chunk `c` is stage `c·devices + device`), over `micro_batches`: pairs of a chunk and
/// its work. One chunk is [`one_f_one_b`].
///
/// Micro-batches go in groups of `devices`: a group's
/// forwards run chunk by chunk, its backwards chunk by chunk from the last. Device `d`
/// first runs `2(D − d − 1) + (v − 1)·D` forwards (Megatron-LM's warm-up: the first
/// backward of the last chunk needs the first micro-batch through every stage), then
/// alternates one forward with one backward, then runs the backwards left. Each chunk
/// runs its own forwards, and its backwards, in micro-batch order.
pub fn interleaved(
    device: usize,
    devices: usize,
    chunks: usize,
    micro_batches: usize,
) -> Vec<(usize, Work)> {
    if device >= devices || chunks == 0 {
        return Vec::new();
    }
    if chunks == 1 {
        return one_f_one_b(device, devices, micro_batches).into_iter().map(|w| (0, w)).collect();
    }
    // Planned for whole groups, the micro-batches past the last dropped: work never waits
    // on another micro-batch's, so what is left still runs to the end (Megatron's order
    // deadlocks on a smaller last group).
    let padded = micro_batches.div_ceil(devices) * devices;
    let groups: Vec<std::ops::Range<usize>> =
        (0..padded).step_by(devices).map(|start| start..start + devices).collect();
    let forwards: Vec<(usize, Work)> = groups
        .iter()
        .flat_map(|g| (0..chunks).flat_map(move |c| g.clone().map(move |m| (c, Work::Forward(m)))))
        .collect();
    let backwards: Vec<(usize, Work)> = groups
        .iter()
        .flat_map(|g| {
            (0..chunks).rev().flat_map(move |c| g.clone().map(move |m| (c, Work::Backward(m))))
        })
        .collect();
    let total = forwards.len();
    let warm_up = (2 * (devices - device - 1) + (chunks - 1) * devices).min(total);
    let mut work: Vec<(usize, Work)> = forwards[..warm_up].to_vec();
    for (i, &backward) in backwards.iter().enumerate() {
        if let Some(&forward) = forwards.get(warm_up + i) {
            work.push(forward);
        }
        work.push(backward);
    }
    work.retain(|(_, w)| w.micro_batch() < micro_batches);
    work
}

/// Per chunk of device `device` (as [`interleaved`]), the most micro-batches whose
/// activations it holds at once.
pub fn chunk_in_flight(
    device: usize,
    devices: usize,
    chunks: usize,
    micro_batches: usize,
) -> Vec<usize> {
    let mut held = vec![0usize; chunks];
    let mut most = vec![0usize; chunks];
    for (c, work) in interleaved(device, devices, chunks, micro_batches) {
        match work {
            Work::Forward(_) => {
                held[c] += 1;
                most[c] = most[c].max(held[c]);
            }
            Work::Backward(_) => held[c] -= 1,
            Work::Weights(_) => {}
        }
    }
    most
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

    #[test]
    fn zero_bubble_puts_off_the_first_weights_parts() {
        use Work::Weights as W;
        // ZB-H1's third of four stages: one forward of warm-up, two weights' parts put off.
        assert_eq!(
            zero_bubble(2, 4, 5, 2),
            [F(0), F(1), B(0), F(2), B(1), F(3), B(2), W(0), F(4), B(3), W(1), B(4), W(2)]
                .into_iter()
                .chain([W(3), W(4)])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            zero_bubble(3, 4, 2, 0),
            [F(0), B(0), W(0), F(1), B(1), W(1)],
            "none put off: each backward pass at once followed by its weights' part"
        );
    }

    /// Plays the devices against each other, each running its list in order: every
    /// forward after the previous stage's, every backward after the next stage's. A
    /// schedule that deadlocks, or holds more activations than `chunk_in_flight` says
    /// (`in_flight` for plain 1F1B, one chunk a device), fails.
    #[test]
    fn every_interleaved_schedule_runs_to_the_end_within_its_memory() {
        for devices in 1..=6 {
            for chunks in 1..=4 {
                for micro_batches in 1..=13 {
                    let stages = devices * chunks;
                    let lists: Vec<Vec<(usize, Work)>> = (0..devices)
                        .map(|d| interleaved(d, devices, chunks, micro_batches))
                        .collect();
                    let mut next = vec![0; devices];
                    let mut done = vec![std::collections::HashSet::new(); stages];
                    let mut held = vec![0usize; stages];
                    loop {
                        let mut moved = false;
                        for d in 0..devices {
                            let Some(&(c, work)) = lists[d].get(next[d]) else { continue };
                            let s = c * devices + d;
                            let ready = match work {
                                F(_) if s == 0 => true,
                                F(m) => done[s - 1].contains(&F(m)),
                                B(m) if s + 1 == stages => done[s].contains(&F(m)),
                                B(m) => done[s + 1].contains(&B(m)),
                                Work::Weights(_) => unreachable!("no split pass here"),
                            };
                            if ready {
                                match work {
                                    F(_) => held[s] += 1,
                                    _ => held[s] -= 1,
                                }
                                let most = chunk_in_flight(d, devices, chunks, micro_batches);
                                assert!(held[s] <= most[c]);
                                if chunks == 1 {
                                    assert_eq!(most[0], in_flight(d, devices, micro_batches));
                                }
                                done[s].insert(work);
                                next[d] += 1;
                                moved = true;
                            }
                        }
                        if !moved {
                            break;
                        }
                    }
                    assert!(
                        (0..devices).all(|d| next[d] == lists[d].len()),
                        "deadlock: {devices} devices, {chunks} chunks, {micro_batches} micro-batches"
                    );
                    for s in 0..stages {
                        let (d, c) = (s % devices, s / devices);
                        let own: Vec<Work> =
                            lists[d].iter().filter(|w| w.0 == c).map(|w| w.1).collect();
                        let forwards: Vec<Work> = (0..micro_batches).map(F).collect();
                        let backwards: Vec<Work> = (0..micro_batches).map(B).collect();
                        let (f, b): (Vec<Work>, Vec<Work>) =
                            own.iter().partition(|w| matches!(w, F(_)));
                        assert_eq!(
                            (f, b),
                            (forwards, backwards),
                            "stage {s} runs each pass once, in order"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn two_devices_two_chunks_four_micro_batches() {
        assert_eq!(
            interleaved(0, 2, 2, 4),
            [(0, F(0)), (0, F(1)), (1, F(0)), (1, F(1)), (0, F(2)), (1, B(0)), (0, F(3))]
                .into_iter()
                .chain([(1, B(1)), (1, F(2)), (0, B(0)), (1, F(3)), (0, B(1))])
                .chain([(1, B(2)), (1, B(3)), (0, B(2)), (0, B(3))])
                .collect::<Vec<_>>()
        );
        assert_eq!(chunk_in_flight(0, 2, 2, 4), vec![4, 2]);
        assert_eq!(
            interleaved(1, 3, 1, 4),
            one_f_one_b(1, 3, 4).into_iter().map(|w| (0, w)).collect::<Vec<_>>()
        );
    }
}
