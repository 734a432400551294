//! A discrete-event simulation of a plan on chips that behave like given [`SimProfile`]s:
//! what the planner's shares would really cost on a fleet no machine here has (10 or 1000
//! chips of mixed speeds and links), without computing anything.
//!
//! Each share goes through its stages in order, as [`execute`](super::execute) runs them: one
//! upload per input operand, the kernel, one download. A chip's kernel time is its profile's
//! [`SimProfile::op_time`] of the share's part, at the chip's slowdown. Transfers run at the
//! chip's link speed, and, when a host bandwidth is given, share it fairly with every other
//! transfer in flight (max-min fair: no transfer gets more than its link), which is where
//! shares interact and the simulation is more than a sum.

use std::time::Duration;

use manychips_api::Op;
use manychips_sim::SimProfile;

use super::cut::cut;
use super::packed;
use super::planned::{Phases, Plan};
use super::price::secs;

/// A simulated chip: its profile and how much slower than it it really runs.
#[derive(Clone, Debug)]
pub struct Chip {
    pub profile: SimProfile,
    /// 1 is the profile's speed; 2 is a chip throttled to half speed.
    pub slowdown: f64,
}

impl Chip {
    pub fn new(profile: SimProfile) -> Chip {
        Chip { profile, slowdown: 1.0 }
    }
}

/// What the simulation found: each share's stage times (in the plan's order) and the time
/// the last one finished.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulated {
    pub phases: Vec<Phases>,
    pub makespan: Duration,
}

impl Simulated {
    /// Copies the simulated times into `plan` as if they had been measured, so a planner can
    /// [`learn`](super::Planner::learn) from a simulated run.
    pub fn record(&self, plan: &mut Plan) {
        for (share, phases) in plan.shares.iter_mut().zip(&self.phases) {
            share.measured = Some(*phases);
        }
        plan.measured = Some(self.makespan);
    }
}

/// One stage of one share: a transfer of `bytes` or a kernel of fixed `seconds`.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Transfer { latency: f64, bytes: f64, link: f64 },
    Kernel { seconds: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Upload,
    Kernel,
    Download,
}

/// Simulates `plan` for `op` on `chips` (one per planner member, in member order; a share
/// names its member). Inputs start in host memory and the result goes back there, as for a
/// planner whose source and destination are not members. `host_bytes_per_s`: the bandwidth
/// all transfers share (`None`: each chip's link is its own).
pub fn simulate(plan: &Plan, op: &Op, chips: &[Chip], host_bytes_per_s: Option<f64>) -> Simulated {
    // The stages of every share, each tagged with the phase it counts towards.
    let mut queues: Vec<Vec<(Kind, Stage)>> = plan
        .shares
        .iter()
        .map(|share| {
            let chip = &chips[share.member];
            let part = match plan.axis {
                Some(axis) => cut(op, axis, share.start, share.len),
                None => op.clone(),
            };
            let k = chip.slowdown;
            let latency = chip.profile.latency.as_secs_f64() * k;
            let link = chip.profile.link_bytes_per_s / k;
            let mut stages: Vec<(Kind, Stage)> = part
                .inputs()
                .iter()
                .map(|v| {
                    let bytes = packed::bytes(v) as f64;
                    (Kind::Upload, Stage::Transfer { latency, bytes, link })
                })
                .collect();
            stages.push((
                Kind::Kernel,
                Stage::Kernel { seconds: chip.profile.op_time(&part).as_secs_f64() * k },
            ));
            let out = part.output();
            let bytes = (out.numel() * out.dtype.size_in_bytes()) as f64;
            stages.push((Kind::Download, Stage::Transfer { latency, bytes, link }));
            stages.reverse(); // popped from the back
            stages
        })
        .collect();

    let n = queues.len();
    let mut phases = vec![[0.0f64; 3]; n];
    // The stage each share is in: its kind, when it started, and what is left of it (seconds
    // of latency, then bytes or kernel seconds).
    let mut current: Vec<Option<Running>> = vec![None; n];
    let mut now = 0.0f64;
    let start_next = |i: usize, queues: &mut Vec<Vec<(Kind, Stage)>>, now: f64| {
        queues[i].pop().map(|(kind, stage)| Running {
            kind,
            stage,
            started: now,
            left: left(&stage),
        })
    };
    for (i, slot) in current.iter_mut().enumerate() {
        *slot = start_next(i, &mut queues, now);
    }
    loop {
        let rates = transfer_rates(&current, host_bytes_per_s);
        // The next event: some stage finishing.
        let mut step = f64::INFINITY;
        for (run, rate) in current.iter().zip(&rates) {
            if let Some(run) = run {
                step = step.min(run.time_to_finish(*rate));
            }
        }
        if !step.is_finite() {
            break;
        }
        now += step;
        for i in 0..n {
            let Some(run) = &mut current[i] else { continue };
            if run.advance(step, rates[i]) {
                phases[i][run.kind as usize] += now - run.started;
                current[i] = start_next(i, &mut queues, now);
            }
        }
    }
    Simulated {
        phases: phases.iter().map(|p| Phases::from_secs(p[0], p[1], p[2])).collect(),
        makespan: secs(now),
    }
}

#[derive(Clone, Copy, Debug)]
struct Running {
    kind: Kind,
    stage: Stage,
    started: f64,
    /// Latency seconds still to wait, then bytes (transfer) or seconds (kernel) still to go.
    left: (f64, f64),
}

fn left(stage: &Stage) -> (f64, f64) {
    match *stage {
        Stage::Transfer { latency, bytes, .. } => (latency, bytes),
        Stage::Kernel { seconds } => (0.0, seconds),
    }
}

/// Tolerance for "finished", relative to what the stage started with.
const DONE: f64 = 1e-12;

impl Running {
    /// Seconds until this stage finishes at `rate` (bytes/s for a transfer past its latency).
    fn time_to_finish(&self, rate: f64) -> f64 {
        let (latency, rest) = self.left;
        if latency > DONE {
            return latency;
        }
        match self.stage {
            Stage::Kernel { .. } => rest,
            Stage::Transfer { .. } if rest <= DONE => 0.0,
            Stage::Transfer { .. } => rest / rate,
        }
    }

    /// Moves on by `dt` seconds; true when the stage is finished.
    fn advance(&mut self, dt: f64, rate: f64) -> bool {
        let (latency, rest) = &mut self.left;
        if *latency > DONE {
            *latency -= dt;
            return false;
        }
        *rest -= match self.stage {
            Stage::Kernel { .. } => dt,
            Stage::Transfer { .. } => dt * rate,
        };
        let scale = match self.stage {
            Stage::Kernel { seconds } => seconds,
            Stage::Transfer { bytes, .. } => bytes,
        };
        *rest <= DONE * scale.max(1.0)
    }

    /// True while moving bytes (past its latency): the state that takes host bandwidth.
    fn moving(&self) -> Option<f64> {
        match self.stage {
            Stage::Transfer { link, .. } if self.left.0 <= DONE => Some(link),
            _ => None,
        }
    }
}

/// Bytes/s of every share's transfer in flight: its link, or a max-min fair part of the
/// host bandwidth when that is the tighter limit.
fn transfer_rates(current: &[Option<Running>], host: Option<f64>) -> Vec<f64> {
    let links: Vec<Option<f64>> = current.iter().map(|r| r.and_then(|r| r.moving())).collect();
    let mut rates: Vec<f64> = links.iter().map(|l| l.unwrap_or(0.0)).collect();
    let Some(host) = host else { return rates };
    let mut waiting: Vec<usize> = (0..links.len()).filter(|&i| links[i].is_some()).collect();
    waiting.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
    let mut budget = host;
    let mut left = waiting.len();
    for i in waiting {
        let fair = budget / left as f64;
        rates[i] = rates[i].min(fair);
        budget -= rates[i];
        left -= 1;
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::planned::Share;
    use manychips_api::{BufferId, DType, DeviceId, Layout, OpClass, View};

    fn op(m: usize) -> Op {
        let dev = DeviceId::fresh();
        let v = |i, dims: [usize; 2]| {
            View::new(BufferId { device: dev, index: i }, Layout::contiguous(dims), DType::F32)
        };
        Op::Matmul { lhs: v(0, [m, 100]), rhs: v(1, [100, 100]), out: v(2, [m, 100]) }
    }

    fn plan(lens: &[usize]) -> Plan {
        let mut start = 0;
        let shares = lens
            .iter()
            .enumerate()
            .map(|(member, &len)| {
                let s = Share {
                    device: format!("sim:{member}"),
                    member,
                    start,
                    len,
                    predicted: Phases::default(),
                    measured: None,
                    factors: (1.0, 1.0),
                };
                start += len;
                s
            })
            .collect();
        Plan {
            op: "matmul".into(),
            class: OpClass::Matmul,
            axis: Some(0),
            units: start,
            shares,
            predicted: Duration::ZERO,
            best_single: ("sim:0".into(), Duration::ZERO),
            measured: None,
            planning: Duration::ZERO,
            events: Vec::new(),
        }
    }

    fn chip(flops: f64, link: f64) -> Chip {
        Chip::new(
            SimProfile::new("c")
                .with_flops(flops)
                .with_bandwidth(1e15)
                .with_link(link)
                .with_latency(Duration::ZERO),
        )
    }

    #[test]
    fn stages_add_up_on_private_links() {
        // 100 rows: 2·100·100·100 = 2 MFLOP at 1 GFLOP/s = 2 ms; 40 KB + 40 KB in, 40 KB out at
        // 40 MB/s = 2 ms + 1 ms.
        let sim = simulate(&plan(&[100]), &op(100), &[chip(1e9, 40e6)], None);
        let p = sim.phases[0];
        let close = |d: Duration, s: f64| (d.as_secs_f64() - s).abs() < 1e-9;
        assert!(
            close(p.upload, 2e-3) && close(p.compute, 2e-3) && close(p.download, 1e-3),
            "{p:?}"
        );
        assert!(close(sim.makespan, 5e-3));
    }

    #[test]
    fn a_shared_host_link_slows_concurrent_transfers() {
        let chips = [chip(1e9, 40e6), chip(1e9, 40e6)];
        let alone = simulate(&plan(&[50, 50]), &op(100), &chips, None);
        let shared = simulate(&plan(&[50, 50]), &op(100), &chips, Some(40e6));
        // Both upload at once: each gets half the host link while both are moving bytes.
        assert!(shared.makespan > alone.makespan);
        assert!(shared.phases[0].upload > alone.phases[0].upload);
        let mut slow = chips.clone();
        slow[1].slowdown = 2.0;
        let throttled = simulate(&plan(&[50, 50]), &op(100), &slow, None);
        assert_eq!(throttled.phases[0], alone.phases[0]);
        assert!(throttled.phases[1].compute > alone.phases[1].compute * 19 / 10);
    }
}
