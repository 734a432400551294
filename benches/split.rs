//! The planner on this machine's real devices (CPU + lavapipe in CI, the same two cores):
//! a planned f32 matmul at n = 1024 and 2048 against the best single device, the CPU, in the
//! same process. The planner calibrates by itself (cached in `MANYCHIPS_CACHE_DIR` or
//! ~/.cache/manychips) and must find out that lavapipe should get (almost) no matmul work
//! here: target ratio ≥ 0.95 (never more than 5% slower than the best single device).
//!
//! `cargo bench --bench split`.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use manychips::plan::{Calibration, Planner};
use manychips::{DType, Fleet, Tensor};

mod common;
use common::Pair;

fn main() {
    let fleet = Fleet::discover().expect("fleet");
    let labels: Vec<String> = fleet.devices().iter().map(|d| d.info().label()).collect();
    println!("fleet: {}", labels.join(", "));
    if fleet.len() < 2 {
        println!("skipped: a split needs two devices; this machine has {}", fleet.len());
        return;
    }
    let cpu = fleet.cpu().clone();
    let mut pairs = Vec::new();
    for n in [1024usize, 2048] {
        let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, &cpu).unwrap();
        let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, &cpu).unwrap();
        let mut planner = Planner::for_fleet(&fleet, &Calibration::new()).expect("calibration");
        planner.matmul(&a, &b).unwrap();
        if let Some(plan) = planner.last_plan() {
            println!("{}", plan.explain());
        }
        let (pa, pb) = (a.clone(), b.clone());
        pairs.push(Pair {
            group: "planned_matmul_f32".into(),
            label: format!("{n}"),
            ours_name: "planner",
            baseline: "cpu alone",
            target: ">= 0.95",
            throughput: Throughput::Elements((2 * n * n * n) as u64),
            ours: Box::new(move || {
                black_box(planner.matmul(&pa, &pb).unwrap());
            }),
            base: Box::new(move || {
                black_box(a.matmul(&b).unwrap());
                a.device().synchronize().unwrap();
            }),
        });
    }
    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
}
