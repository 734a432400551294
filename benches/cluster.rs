//! Data-parallel steps on N ranks × 8 devices, modelled (`train::cluster`): step time and
//! scaling efficiency at 8, 64 and 1000 devices over a slow (200 Gbit/s) and a fast
//! (3200 Gbit/s) interconnect, for a 350M-parameter model with f32 gradients.
//!
//! `cargo bench --bench cluster`.

use std::hint::black_box;

use criterion::Criterion;
use manychips::plan::Linear;
use manychips::train::cluster::{Network, RankModel, simulate_step};

/// Flops of one sample: 6 per weight per token, 1024 tokens.
const WEIGHTS: f64 = 350e6;
const FLOPS_PER_SAMPLE: f64 = 6.0 * WEIGHTS * 1024.0;
const GRADIENT_BYTES: f64 = 4.0 * WEIGHTS;
/// Samples per device per step (weak scaling: the global batch grows with the fleet).
const PER_DEVICE: usize = 16;

/// A machine of eight unlike devices: four H100-class (400 TFLOP/s sustained in bf16), two
/// A100-class (150) and two Vulkan-only GPUs (60); 2 ms of launches per step each.
fn machine() -> RankModel {
    let rates = [400e12, 400e12, 400e12, 400e12, 150e12, 150e12, 60e12, 60e12];
    RankModel {
        devices: rates
            .iter()
            .map(|&r| Linear { fixed: 2e-3, per_unit: FLOPS_PER_SAMPLE / r })
            .collect(),
    }
}

fn main() {
    println!(
        "model: {:.0}M weights, {:.1} GB of f32 gradients, {:.2} TFLOP per sample; {PER_DEVICE} samples per device",
        WEIGHTS / 1e6,
        GRADIENT_BYTES / 1e9,
        FLOPS_PER_SAMPLE / 1e12
    );
    println!(
        "\n{:>8} {:>6} {:>11} {:>11} {:>12} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "devices",
        "ranks",
        "network",
        "compute",
        "all-reduce",
        "serial",
        "step",
        "eff serial",
        "efficiency",
        "samples/s"
    );
    for devices in [8usize, 64, 1000] {
        let ranks = devices.div_ceil(8);
        let fleet: Vec<RankModel> = (0..ranks).map(|_| machine()).collect();
        let batch = PER_DEVICE * devices;
        for gbit in [200.0, 3200.0] {
            let net = Network::gbit(gbit);
            let bucket = net.bucket_for(ranks, 0.1);
            let s = simulate_step(&fleet, batch, GRADIENT_BYTES, bucket, &net);
            println!(
                "{devices:>8} {ranks:>6} {:>6} Gb/s {:>8.1} ms {:>9.1} ms {:>7.1} ms {:>7.1} ms {:>10.3} {:>10.3} {:>11.0}",
                gbit,
                s.compute_s * 1e3,
                s.all_reduce_s * 1e3,
                s.serial_s * 1e3,
                s.step_s * 1e3,
                s.compute_s / s.serial_s,
                s.compute_s / s.step_s,
                batch as f64 / s.step_s
            );
        }
    }
    println!(
        "\nefficiency = compute ÷ step, with each bucket reduced as the backward pass finishes it"
    );
    println!(
        "(as implemented); eff serial = the same with the all-reduce after the backward pass."
    );

    let fleet: Vec<RankModel> = (0..125).map(|_| machine()).collect();
    let net = Network::gbit(200.0);
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("simulate_step/1000 devices", |b| {
        b.iter(|| black_box(simulate_step(&fleet, 16_000, GRADIENT_BYTES, 64e6, &net)))
    });
    c.final_summary();
}
