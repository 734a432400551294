//! The planner on simulated fleets of 2 to 1000 chips (matmul speeds spread 10×, one chip in
//! eight on a slow link), by discrete-event simulation (`plan::simulate`):
//! - achieved makespan against the ideal (the fluid optimum on the chips' true figures,
//!   transfers included): with exact figures, with figures off by up to ±25% (a fresh
//!   calibration's error), and after three runs whose times fed back (target ≥ 0.95);
//! - speed-up over an even split of the same op (target ≥ 1.5× on a 10×-spread fleet);
//! - planning time per op, by criterion, against the op's own simulated time.
//!
//! `cargo bench --bench planner`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use manychips::plan::{Chip, DeviceProfile, Plan, Planner, simulate};
use manychips::sim::SimProfile;
use manychips::{BinaryOp, BufferId, DType, DeviceId, DeviceInfo, Identity, Layout, Op, View};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FLEETS: [usize; 4] = [2, 8, 64, 1000];

/// Chip `i` of `n`: matmul rate log-spaced from 1 to 10 TFLOP/s, memory 200 GB/s to 2 TB/s,
/// a 32 GB/s link (2 GB/s for one chip in eight), 10 µs per launch.
fn chip(i: usize, n: usize) -> SimProfile {
    let speed = 10f64.powf(i as f64 / (n - 1).max(1) as f64);
    let slow_link = n > 2 && i % 8 == 3;
    SimProfile::new(format!("chip{i}"))
        .with_flops(1e12 * speed)
        .with_bandwidth(200e9 * speed)
        .with_link(if slow_link { 2e9 } else { 32e9 })
        .with_latency(Duration::from_micros(10))
}

fn info(i: usize) -> DeviceInfo {
    DeviceInfo {
        id: DeviceId::fresh(),
        backend: "sim".into(),
        ordinal: i,
        name: format!("chip{i}"),
        vendor: "simulated".into(),
        driver_version: "0".into(),
        identity: Identity::default(),
        memory_total: 80 << 30,
        dtypes: vec![DType::F32],
        peer_copy: false,
    }
}

/// A planner that believes `truth`, each figure scaled by a factor in [1/(1+err), 1+err].
fn planner(truth: &[SimProfile], err: f64, seed: u64) -> Planner {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut off = || if err > 0.0 { (1.0 + err).powf(rng.random_range(-1.0..1.0)) } else { 1.0 };
    let profiles = truth
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut p = DeviceProfile::simulated(&info(i), t);
            let k = off();
            p.matmul.iter_mut().for_each(|m| m.flops_per_s *= k);
            p.matmul_rate_concurrent = p.matmul_rate_concurrent.map(|r| r * k);
            p.bytes_per_s *= off();
            let link = off();
            p.host_to_device_bytes_per_s *= link;
            p.device_to_host_bytes_per_s *= link;
            (format!("sim:{i}"), p)
        })
        .collect();
    Planner::modelled(profiles).expect("planner")
}

fn view(index: u64, dims: &[usize]) -> View {
    let buffer = BufferId { device: DeviceId::fresh(), index };
    View::new(buffer, Layout::contiguous(dims.to_vec()), DType::F32)
}

/// The large ops of the table: a matmul with 1000 rows per chip (compute bound), and a
/// 4 Mi-element-per-chip add (bound by links and memory).
fn ops(n: usize) -> Vec<(&'static str, Op)> {
    let m = 1000 * n;
    vec![
        (
            "matmul",
            Op::Matmul {
                lhs: view(0, &[m, 4096]),
                rhs: view(1, &[4096, 4096]),
                out: view(2, &[m, 4096]),
            },
        ),
        (
            "add",
            Op::Binary {
                op: BinaryOp::Add,
                lhs: view(0, &[4 * n, 1 << 20]),
                rhs: view(1, &[4 * n, 1 << 20]),
                out: view(2, &[4 * n, 1 << 20]),
            },
        ),
    ]
}

/// The same op cut into equal shares over every chip, along the plan's axis.
fn even_split(planner: &Planner, op: &Op, axis: usize, n: usize) -> Plan {
    let units = op.output().dims()[axis];
    let lens: Vec<usize> = (0..n).map(|i| units / n + usize::from(i < units % n)).collect();
    planner.plan_fixed(op, axis, &lens).expect("even split")
}

fn table() {
    println!(
        "\n{:>6} {:<7} {:>11} {:>11} {:>9} {:>9} {:>9} {:>11} {:>9} {:>11}",
        "chips",
        "op",
        "ideal",
        "planned",
        "exact",
        "±25%",
        "learned",
        "even split",
        "speed-up",
        "planning"
    );
    for n in FLEETS {
        let truth: Vec<SimProfile> = (0..n).map(|i| chip(i, n)).collect();
        let chips: Vec<Chip> = truth.iter().cloned().map(Chip::new).collect();
        for (name, op) in ops(n) {
            let exact = planner(&truth, 0.0, 0);
            let ideal = exact.fluid_bound(&op).expect("bound").as_secs_f64();
            let plan = exact.plan(&op, None, None).expect("plan");
            let achieved = simulate(&plan, &op, &chips, None).makespan.as_secs_f64();

            let mut noisy = planner(&truth, 0.25, n as u64);
            let first = noisy.plan(&op, None, None).expect("plan");
            let first_time = simulate(&first, &op, &chips, None).makespan.as_secs_f64();
            let mut learned = first;
            for _ in 0..3 {
                let mut run = noisy.plan(&op, None, None).expect("plan");
                simulate(&run, &op, &chips, None).record(&mut run);
                noisy.learn(&run);
                learned = noisy.plan(&op, None, None).expect("plan");
            }
            let learned_time = simulate(&learned, &op, &chips, None).makespan.as_secs_f64();
            let even = match plan.axis {
                Some(axis) => simulate(&even_split(&exact, &op, axis, n), &op, &chips, None)
                    .makespan
                    .as_secs_f64(),
                None => f64::NAN,
            };
            println!(
                "{n:>6} {name:<7} {:>8.3} ms {:>8.3} ms {:>9.3} {:>9.3} {:>9.3} {:>8.3} ms {:>8.2}× {:>8.3} ms",
                ideal * 1e3,
                achieved * 1e3,
                ideal / achieved,
                ideal / first_time,
                ideal / learned_time,
                even * 1e3,
                even / achieved,
                plan.planning.as_secs_f64() * 1e3,
            );
        }
    }
    println!(
        "exact / ±25% / learned: ideal ÷ simulated makespan of the plan made with exact figures, \
         with figures off by up to ±25%, and with those after 3 runs fed back (target ≥ 0.95)"
    );
}

fn planning_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan_matmul");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    for n in FLEETS {
        let truth: Vec<SimProfile> = (0..n).map(|i| chip(i, n)).collect();
        let planner = planner(&truth, 0.0, 0);
        let (_, op) = ops(n).remove(0);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(planner.plan(&op, None, None).expect("plan")))
        });
    }
    group.finish();
}

fn main() {
    table();
    let mut c = Criterion::default().configure_from_args();
    planning_time(&mut c);
    c.final_summary();
}
