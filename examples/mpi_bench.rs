//! The gradient all-reduce against a plain MPI all-reduce of the same bytes, in the same
//! run, and the network model fitted from it (feature `mpi`):
//!
//!     cargo build --release --features mpi --example mpi_bench
//!     mpirun -np 2 target/release/examples/mpi_bench

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use manychips::plan::DeviceProfile;
use manychips::train::cluster::Network;
use manychips::train::distributed::{Distributed, Ranks};
use manychips::train::{DataParallel, Grads, Init, Param};
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
    let (rank, size) = (ranks.rank(), ranks.size());
    let cpu: DeviceRef = Arc::new(CpuDevice::new()?);
    let mut job: Option<Distributed<Blob>> = None;
    let mut ranks = Some(ranks);
    let mut points = Vec::new();
    if rank == 0 {
        println!("{size} ranks; medians of 20 runs after 3 warm-ups");
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
            None => ranks.take().ok_or_else(|| manychips::Error::Unavailable {
                backend: "mpi".into(),
                reason: "no communicator".into(),
            })?,
        };
        let d = Distributed::new(r, local);
        let id = d.local.params()[0].id();
        let ones = Tensor::ones([n], DType::F32, &cpu)?;
        let mut plain = vec![1.0f32; n];
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for i in 0..23 {
            let mut grads = Grads::default();
            grads.insert(id, ones.clone());
            let t = Instant::now();
            d.all_reduce_grads(&mut grads)?;
            let a = t.elapsed().as_secs_f64();
            let t = Instant::now();
            d.ranks().sum_in_place(&mut plain);
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
    Ok(())
}
