//! Pipeline planning at fleet scale, by simulation: GPT-shaped models of 7B and 70B
//! parameters on fleets of 8, 64 and 1000 simulated chips (matmul speeds spread 10×, 40 to
//! 400 TFLOP/s; memory 16 to 80 GB; links of 200 or 3200 Gbit/s; attention run as one
//! kernel, `Op::Attention`, as the CPU backend runs it), planned as data-parallel
//! replicas of pipelines (`ReplicaPlan::search`) and played step by step
//! (`pipeline::play`). For each, a table row:
//! - the step's throughput against the fluid bound (the step's flops over the fleet's
//!   total rate: no bubble, no copies, no memory limit);
//! - against uniform stages on the same replicas and chips (equal blocks per stage,
//!   Megatron's cut, recomputing or lodging optimizer state where memory is short; the
//!   micro-batches shared by replica speed as ours are), or "does not fit";
//! - against the same with equal micro-batches per replica too, as a job planned for
//!   like chips would run;
//! - the share of stages that split their backward passes (the zero-bubble schedule);
//! - planning time (wall clock, one plan);
//! - with ZeRO-1 across replicas;
//! - without an attention kernel (the scores written and read three times, as the GPU
//!   backends' decomposition does).
//!
//! Then a table of where each plan's step goes, and criterion times the planner itself.
//! `cargo bench --bench pipeline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::PipelinePlan;
use manychips::train::pipeline::{
    Candidate, LayerCost, ReplicaPlan, StagePlan, TransformerShape, balanced_shares, play,
};
use manychips::{CpuDevice, DeviceRef};

const FLEETS: [usize; 3] = [8, 64, 1000];
/// AdamW's two moments per parameter.
const SLOTS: usize = 2;

/// `kernel`: whether the chips run attention as one kernel (the scores never stored), as
/// the CPU backend does; the GPU backends still run it as matmuls and a softmax.
fn model(name: &str, kernel: bool) -> TransformerShape {
    let (dim, heads, blocks) = match name {
        "7B" => (4096, 32, 32),
        _ => (8192, 64, 80),
    };
    // f32 master weights (with f32 gradients and moments: 16 bytes a parameter), bf16
    // activations, one 2048-token sequence per micro-batch.
    TransformerShape {
        vocab: 32000,
        context: 2048,
        dim,
        heads,
        blocks,
        rows: 1,
        param_bytes: 4,
        activation_bytes: 2,
        attention_kernel: kernel,
    }
}

/// Chip `i` of `n`: matmul rate log-spaced 40 to 400 TFLOP/s, memory cycling through 16,
/// 24, 40, 48 and 80 GB, 2 TB/s of memory bandwidth, 5 µs a launch, and the link both to
/// the host and to the other chips (activations cross device to device, once).
fn chips(host: &DeviceRef, n: usize, link_gbit: f64) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let speed = 10f64.powf(i as f64 / (n - 1).max(1) as f64);
            let gb = [16u64, 24, 40, 48, 80][i % 5];
            let profile = SimProfile::new(format!("chip{i}"))
                .with_flops(40e12 * speed)
                .with_bandwidth(2e12)
                .with_latency(Duration::from_micros(5))
                .with_link(link_gbit * 1e9 / 8.0)
                .with_peer_link(link_gbit * 1e9 / 8.0)
                .with_memory(gb * 1_000_000_000);
            let device: DeviceRef =
                Arc::new(SimDevice::new(host.clone(), profile.clone(), i).expect("sim chip"));
            let profile = DeviceProfile::simulated(device.info(), &profile);
            Candidate::new(device, profile).expect("candidate")
        })
        .collect()
}

/// Seconds of a step at the fleet's total matmul rate, nothing else counted.
fn fluid_bound(costs: &[LayerCost], chips: &[Candidate], micro_batches: usize) -> f64 {
    let flops: f64 = costs.iter().map(|c| 3.0 * c.matmul_flops).sum::<f64>() * micro_batches as f64;
    let rate: f64 = chips.iter().map(|c| c.profile.peak_matmul_rate()).sum();
    flops / rate
}

/// The same replicas, chips and stage counts with equal blocks per stage (Megatron's cut:
/// the embeddings with the first, the head with the last),
/// recomputing where a stage's activations do not fit, the micro-batches shared so that
/// the replicas end together as ours are (`by_speed`: what cutting stages by speed and
/// memory gains, alone) or equally, as a homogeneous job would. `None` where an equal cut does not fit
/// the chips' memory at all.
fn uniform(
    costs: &[LayerCost],
    plan: &ReplicaPlan,
    fleet: &[Candidate],
    micro_batches: usize,
    by_speed: bool,
) -> Option<f64> {
    let chip = |stage: &StagePlan| {
        let id = stage.device.info().id;
        fleet.iter().find(|c| c.device.info().id == id).expect("a chip of the fleet").clone()
    };
    let mut even: Vec<PipelinePlan> = plan
        .replicas
        .iter()
        .map(|replica| {
            // An interleaved replica's chips are its first `devices()` stages'.
            let stages = replica.devices();
            // Layer 0 is the embeddings, then each block's four quarters, then the head.
            let blocks = (costs.len() - 2) / 4;
            if stages > blocks {
                return None;
            }
            let mut done = 0;
            let cut = replica.stages[..stages]
                .iter()
                .enumerate()
                .map(|(s, stage)| {
                    let first = if s == 0 { 0 } else { 1 + 4 * done };
                    done += blocks / stages + usize::from(s < blocks % stages);
                    let end = if s + 1 == stages { costs.len() } else { 1 + 4 * done };
                    (first..end, chip(stage))
                })
                .collect();
            PipelinePlan::manual(costs, cut, micro_batches, SLOTS).ok()
        })
        .collect::<Option<_>>()?;
    let shares = match by_speed {
        true => balanced_shares(&even, micro_batches),
        false => (0..even.len())
            .map(|r| micro_batches / even.len() + usize::from(r < micro_batches % even.len()))
            .collect(),
    };
    let mut slowest: f64 = 0.0;
    for (replica, share) in even.iter_mut().zip(shares) {
        replica.micro_batches = share;
        if share > 0 {
            slowest = slowest.max(play(replica).makespan);
        }
    }
    Some(slowest + plan.all_reduce_s)
}

/// The same fleet planned for replicas that shard AdamW's moments among them (ZeRO-1,
/// `PipelineReplicas::shard_optimizer_state`): replicas × stages, stages recomputing,
/// and the share of the fluid bound.
fn sharded_row(costs: &[LayerCost], fleet: &[Candidate], micro_batches: usize) -> String {
    match ReplicaPlan::search_sharded(costs, fleet, micro_batches, SLOTS, true) {
        Ok(plan) => {
            let (shape, recomputing) = shape(&plan);
            let of_bound = fluid_bound(costs, fleet, micro_batches) / plan.step_s();
            format!("{shape}, {recomputing:.0}%, {of_bound:.2}")
        }
        Err(_) => "does not fit".into(),
    }
}

/// Where a plan's step goes, as three shares: of the fleet's rate, the chips the plan uses;
/// of their time (step × chips), the time they are busy (the rest is bubble, uneven
/// stages and the all-reduce); of that busy time, the matmul flops at peak rate (the rest
/// is recomputation, memory-bound ops, launches and copies). And the percentage of stages
/// whose optimizer state lodges on another chip.
fn breakdown(costs: &[LayerCost], plan: &ReplicaPlan, fleet: &[Candidate]) -> String {
    let step = plan.step_s();
    let (mut used_rate, mut used, mut busy, mut ideal, mut lodging, mut stages) =
        (0.0, 0.0, 0.0, 0.0, 0, 0);
    for replica in &plan.replicas {
        for (s, stage) in replica.stages.iter().enumerate() {
            let id = stage.device.info().id;
            let chip = fleet.iter().find(|c| c.device.info().id == id).expect("a chip");
            let rate = chip.profile.peak_matmul_rate();
            let flops: f64 = costs[stage.layers.clone()].iter().map(|c| 3.0 * c.matmul_flops).sum();
            // An interleaved replica's chip holds every `devices()`-th stage: counted once.
            if s < replica.devices() {
                used_rate += rate;
                used += 1.0;
            }
            busy += stage.time() * replica.micro_batches as f64;
            ideal += flops * replica.micro_batches as f64 / rate;
            lodging += usize::from(!stage.state_on.is_empty());
            stages += 1;
        }
    }
    let total: f64 = fleet.iter().map(|c| c.profile.peak_matmul_rate()).sum();
    format!(
        "{:.2} | {:.2} | {:.2} | {:.0}%",
        used_rate / total,
        busy / (step * used),
        ideal / busy,
        100.0 * lodging as f64 / stages.max(1) as f64
    )
}

/// `replicas × fewest–most stages`, and the percentage of stages that recompute.
fn shape(plan: &ReplicaPlan) -> (String, f64) {
    let stages: Vec<usize> = plan.replicas.iter().map(|r| r.stages.len()).collect();
    let recomputing = count(plan, |s| !s.recompute.is_empty());
    let shape = format!(
        "{} × {}–{}",
        plan.replicas.len(),
        stages.iter().min().unwrap_or(&0),
        stages.iter().max().unwrap_or(&0)
    );
    (shape, 100.0 * recomputing as f64 / stages.iter().sum::<usize>().max(1) as f64)
}

/// How many of the plan's stages `which` holds for.
fn count(plan: &ReplicaPlan, which: impl Fn(&StagePlan) -> bool) -> usize {
    plan.replicas.iter().flat_map(|r| &r.stages).filter(|s| which(s)).count()
}

fn main() {
    let host: DeviceRef = Arc::new(CpuDevice::with_threads(1).expect("cpu"));
    let mut where_it_goes = vec![
        "| model | chips | link | of fluid bound | rate of the chips used | busy share of their time | flops at peak of busy time | stages lodging optimizer state |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    println!(
        "| model | chips | link | replicas × stages | stages recomputing | stages split (zero-bubble) | of fluid bound | vs uniform stages | vs uniform stages and shares | planning | with ZeRO-1: replicas × stages, recomputing, of bound | without an attention kernel: of bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for name in ["7B", "70B"] {
        let costs = model(name, true).layers();
        let unfused = model(name, false).layers();
        for n in FLEETS {
            for link in [200.0, 3200.0] {
                let fleet = chips(&host, n, link);
                let micro_batches = (8 * n).max(64);
                let started = Instant::now();
                let planned = ReplicaPlan::search(&costs, &fleet, micro_batches, SLOTS);
                let planning = started.elapsed().as_secs_f64();
                let plan = match planned {
                    Ok(plan) => plan,
                    Err(e) => {
                        let why = e.to_string();
                        let short = why.split(": ").last().unwrap_or(&why);
                        println!(
                            "| {name} | {n} | {link} Gbit/s | does not fit: {short} | – | – | – | – | – | {planning:.2} s | {} | – |",
                            sharded_row(&costs, &fleet, micro_batches)
                        );
                        continue;
                    }
                };
                let step = plan.step_s();
                let bound = fluid_bound(&costs, &fleet, micro_batches);
                let even = uniform(&costs, &plan, &fleet, micro_batches, true);
                let megatron = uniform(&costs, &plan, &fleet, micro_batches, false);
                let versus = |t: Option<f64>| {
                    t.map_or("does not fit".into(), |t| format!("{:.2}×", t / step))
                };
                let (shape, recomputing) = shape(&plan);
                let stages = count(&plan, |_| true).max(1) as f64;
                let split = 100.0 * count(&plan, |s| s.split.is_some()) as f64 / stages;
                where_it_goes.push(format!(
                    "| {name} | {n} | {link} Gbit/s | {:.2} | {} |",
                    bound / step,
                    breakdown(&costs, &plan, &fleet)
                ));
                let without = ReplicaPlan::search(&unfused, &fleet, micro_batches, SLOTS)
                    .map_or("does not fit".into(), |p| {
                        format!("{:.2}", fluid_bound(&unfused, &fleet, micro_batches) / p.step_s())
                    });
                println!(
                    "| {name} | {n} | {link} Gbit/s | {shape} | {recomputing:.0}% | {split:.0}% | {:.2} | {} | {} | {planning:.2} s | {} | {without} |",
                    bound / step,
                    versus(even),
                    versus(megatron),
                    sharded_row(&costs, &fleet, micro_batches),
                );
            }
        }
    }

    println!("\n{}", where_it_goes.join("\n"));

    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mut group = c.benchmark_group("pipeline/plan 7B");
    for n in FLEETS {
        let fleet = chips(&host, n, 3200.0);
        let costs = model("7B", true).layers();
        let micro_batches = (8 * n).max(64);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| ReplicaPlan::search(&costs, &fleet, micro_batches, SLOTS).expect("plan"))
        });
    }
    group.finish();
    c.final_summary();
}
