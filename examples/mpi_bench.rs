//! Distributed training figures, each against a baseline in the same run (feature `mpi`):
//!
//! 1. the library's gradient all-reduce against a plain MPI all-reduce of the same bytes
//!    (preallocated buffers), and the network model fitted from it;
//! 2. a training step of an MLP as one rank's plain local step, as a distributed step with
//!    the all-reduce after the backward pass, and with it overlapping the backward pass; on
//!    the CPU device, and on a paced simulated chip that leaves the host's cores to MPI.
//!
//! Run it with:
//!
//!     cargo build --release --features mpi --example mpi_bench
//!     mpirun -np 2 target/release/examples/mpi_bench

use std::ops::Range;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::cluster::Network;
use manychips::train::distributed::{Distributed, Ranks};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::Sgd;
use manychips::train::{DataParallel, Grads, Init, Param, Var};
use manychips::{CpuDevice, DType, DeviceRef, Result, Tensor};

/// A "model" of one parameter of `n` f32 values.
struct Blob {
    _weight: Param,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let ranks = Ranks::init()?;
    let size = ranks.size();
    // The ranks of one machine share its cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu: DeviceRef = Arc::new(CpuDevice::with_threads((cores / size).max(1))?);
    let ranks = all_reduce_table(ranks, &cpu)?;
    let ranks = step_table(ranks, &cpu, "the CPU device")?;
    // A chip that computes off the host's cores (every op sleeps for its modelled time at
    // 20 GFLOP/s), as a GPU would: there the all-reduce has cores to itself.
    let profile = SimProfile::new("paced").with_flops(20e9).with_latency(Duration::ZERO);
    let chip = SimDevice::new(cpu.clone(), profile, 0)?;
    chip.set_pacing(true);
    step_table(ranks, &(Arc::new(chip) as DeviceRef), "a paced simulated chip (20 GFLOP/s)")?;
    Ok(())
}

fn all_reduce_table(ranks: Ranks, cpu: &DeviceRef) -> Result<Ranks> {
    let (rank, size) = (ranks.rank(), ranks.size());
    let mut ranks = Some(ranks);
    let mut job: Option<Distributed<Blob>> = None;
    let mut points = Vec::new();
    if rank == 0 {
        println!("{size} ranks; gradient all-reduce, medians of 20 runs after 3 warm-ups");
        println!(
            "{:>10} {:>14} {:>14} {:>12} {:>12} {:>7}",
            "bytes", "manychips", "plain MPI", "ours GB/s", "MPI GB/s", "ratio"
        );
    }
    for n in [1usize << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24] {
        let profile = DeviceProfile::for_device(cpu.info());
        let local = DataParallel::new(vec![(cpu.clone(), profile)], 0, move |s| {
            Ok(Blob { _weight: s.param("weight", [n], Init::Zeros)? })
        })?;
        // One MPI initialisation per process: the communicator moves from job to job.
        let r = match job.take() {
            Some(previous) => previous.into_ranks(),
            None => ranks.take().ok_or_else(no_communicator)?,
        };
        let mut d = Distributed::new(r, local);
        d.set_bucket_bytes(usize::MAX);
        let id = d.local.params()[0].id();
        let ones = Tensor::ones([n], DType::F32, cpu)?;
        let (send, mut recv) = (vec![1.0f32; n], vec![0.0f32; n]);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for i in 0..23 {
            let mut grads = Grads::default();
            grads.insert(id, ones.clone());
            d.ranks().barrier();
            let t = Instant::now();
            d.all_reduce_grads(&mut grads)?;
            let a = t.elapsed().as_secs_f64();
            d.ranks().barrier();
            let t = Instant::now();
            d.ranks().sum_into(&send, &mut recv)?;
            let b = t.elapsed().as_secs_f64();
            if i >= 3 {
                ours.push(a);
                theirs.push(b);
            }
        }
        let (a, b) = (median(ours), median(theirs));
        let bytes = 4 * n;
        points.push((bytes as f64, b));
        if rank == 0 {
            println!(
                "{bytes:>10} {:>11.3} ms {:>11.3} ms {:>12.2} {:>12.2} {:>7.2}",
                a * 1e3,
                b * 1e3,
                bytes as f64 / a / 1e9,
                bytes as f64 / b / 1e9,
                b / a
            );
        }
        job = Some(d);
    }
    if rank == 0
        && let (Some(&small), Some(&large)) = (points.first(), points.last())
    {
        let net = Network::fit(small, large);
        println!(
            "fitted network: {:.1} µs per all-reduce + {:.2} GB/s; bucket for ≤ 10% latency: {:.1} MiB",
            net.latency_s * 1e6,
            net.bytes_per_s / 1e9,
            net.bucket_for(size, 0.1) / 1048576.0
        );
    }
    job.map(Distributed::into_ranks).ok_or_else(no_communicator)
}

fn no_communicator() -> manychips::Error {
    manychips::Error::Unavailable { backend: "mpi".into(), reason: "no communicator".into() }
}

/// Local step, distributed step without and with overlap, interleaved so that drift hits
/// all three alike.
fn step_table(ranks: Ranks, device: &DeviceRef, what: &str) -> Result<Ranks> {
    const DIM: usize = 256;
    const HIDDEN: usize = 1024;
    const CLASSES: usize = 10;
    const BATCH: usize = 128;
    let (rank, size) = (ranks.rank(), ranks.size());
    let profile = DeviceProfile::for_device(device.info());
    let local = DataParallel::new(vec![(device.clone(), profile)], 0, |s| {
        Mlp::new(s, &[DIM, HIDDEN, HIDDEN, HIDDEN, CLASSES], Activation::Relu)
    })?;
    let weights: usize = local.params().iter().map(|p| p.value().numel()).sum();
    let mut job = Distributed::new(ranks, local);
    job.set_fixed_split(Some(vec![1.0; size]))?;
    let mut opt = Sgd::new(job.local.params().to_vec(), 1e-3)?;
    let x =
        Arc::new(Tensor::randn(0.0, 1.0, [BATCH, DIM], DType::F32, 1, device)?.to_vec::<f32>()?);
    let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
        let input =
            Tensor::from_slice(&x[rows.start * DIM..rows.end * DIM], [rows.len(), DIM], device)?;
        let labels: Vec<u32> = rows.clone().map(|r| (r % CLASSES) as u32).collect();
        let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &labels, &opts)
    };
    let mine = BATCH / size;
    let (mut plain, mut serial, mut overlapped) = (Vec::new(), Vec::new(), Vec::new());
    let (mut exposed_serial, mut exposed_overlap, mut reduce) =
        (Vec::new(), Vec::new(), Vec::new());
    for i in 0..13 {
        job.ranks().barrier();
        let t = Instant::now();
        job.local.step(mine, loss.clone(), &mut opt)?;
        let local_s = t.elapsed().as_secs_f64();
        let mut timed = |overlap: bool| -> Result<(f64, f64, f64)> {
            job.set_overlap(overlap);
            job.ranks().barrier();
            let t = Instant::now();
            let report = job.step(BATCH, loss.clone(), &mut opt)?;
            Ok((t.elapsed().as_secs_f64(), report.exposed_s, report.all_reduce_s))
        };
        let (s, es, _) = timed(false)?;
        let (o, eo, r) = timed(true)?;
        if i >= 3 {
            plain.push(local_s);
            serial.push(s);
            overlapped.push(o);
            exposed_serial.push(es);
            exposed_overlap.push(eo);
            reduce.push(r);
        }
    }
    if rank == 0 {
        let (p, s, o) = (median(plain), median(serial), median(overlapped));
        println!(
            "\nOn {what}: MLP {DIM}-{HIDDEN}-{HIDDEN}-{HIDDEN}-{CLASSES} ({:.1} MB of f32 gradients), \
             global batch {BATCH} ({mine} rows per rank), buckets of {:.1} MiB; medians of 10 steps",
            weights as f64 * 4.0 / 1e6,
            job.bucket_bytes() as f64 / 1048576.0
        );
        println!("  local step, {mine} rows, no MPI:       {:>8.2} ms", p * 1e3);
        println!(
            "  distributed, all-reduce after backward: {:>8.2} ms  ({:.2}× the local step; {:.2} ms exposed)",
            s * 1e3,
            s / p,
            median(exposed_serial) * 1e3
        );
        println!(
            "  distributed, all-reduce overlapped:     {:>8.2} ms  ({:.2}× the local step; {:.2} ms exposed of {:.2} ms in all-reduce)",
            o * 1e3,
            o / p,
            median(exposed_overlap) * 1e3,
            median(reduce) * 1e3
        );
        println!("  overlap speed-up: {:.2}×", s / o);
    }
    Ok(job.into_ranks())
}
