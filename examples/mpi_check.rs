//! Distributed training checks, run under an MPI launcher by `tests/mpi.rs` (feature `mpi`):
//! trains a small MLP with dropout on synthetic data over `--steps` steps as one job over
//! all ranks (each rank: its CPU device), optionally from a checkpoint, and writes the
//! final checkpoint from rank 0.
//!
//!     mpirun -np 2 target/release/examples/mpi_check --steps 8 --weights 1,3 --save /tmp/two

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use manychips::plan::DeviceProfile;
use manychips::train::checkpoint::{latest, write_checkpoint};
use manychips::train::distributed::{Distributed, Ranks};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Dropout, Reduction};
use manychips::train::optim::AdamW;
use manychips::train::{DataParallel, Snapshot, Var};
use manychips::{CpuDevice, DType, DeviceRef, Result, Tensor};

#[derive(Parser, Debug)]
struct Args {
    /// The step to stop after (counted from 0, so a resumed run continues to it).
    #[arg(long, default_value_t = 8)]
    steps: u64,
    #[arg(long, default_value_t = 48)]
    batch: usize,
    /// Per-rank weights of the batch cut (default: measured rates).
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Resume from the newest checkpoint here.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Rank 0 writes the final checkpoint here.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Gradient bytes per all-reduce bucket (default: sized from the measured network).
    #[arg(long)]
    bucket_bytes: Option<usize>,
    /// All-reduce after the backward pass instead of during it.
    #[arg(long)]
    no_overlap: bool,
}

const DIM: usize = 16;
const CLASSES: usize = 4;

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let ranks = Ranks::init()?;
    let (rank, size) = (ranks.rank(), ranks.size());
    let cpu: DeviceRef = Arc::new(CpuDevice::new()?);
    let profile = DeviceProfile::for_device(cpu.info());
    let local = DataParallel::new(vec![(cpu.clone(), profile)], 7, |s| {
        Ok(Mlp::new(s, &[DIM, 32, CLASSES], Activation::Gelu)?.with_dropout(Dropout::new(0.1, 3)?))
    })?;
    let mut job = Distributed::new(ranks, local);
    job.set_fixed_split(args.weights.clone())?;
    job.set_overlap(!args.no_overlap);
    if let Some(bytes) = args.bucket_bytes {
        job.set_bucket_bytes(bytes);
    }
    let mut opt = AdamW::new(job.local.params().to_vec(), 1e-2)?;
    let mut start = 0;
    if let Some(dir) = &args.resume {
        let loaded = latest(dir)?.ok_or_else(|| manychips::Error::Checkpoint {
            path: dir.display().to_string(),
            detail: "no checkpoint to resume from".into(),
        })?;
        loaded.snapshot.restore(job.local.params(), &mut opt, &loaded.path)?;
        job.local.resume_at(loaded.snapshot.step);
        start = loaded.snapshot.step;
    }
    let batch = args.batch;
    let n = batch * args.steps as usize;
    let x = Tensor::randn(0.0, 1.0, [n, DIM], DType::F32, 11, &cpu)?;
    let w = Tensor::randn(0.0, 1.0, [DIM, CLASSES], DType::F32, 12, &cpu)?;
    let y = Arc::new(x.matmul(&w)?.argmax(1)?.to_vec::<u32>()?);
    let x = Arc::new(x.to_vec::<f32>()?);
    for step in start..args.steps {
        let (x, y) = (x.clone(), y.clone());
        let base = step as usize * batch;
        let loss = move |m: &Mlp, d: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
            let (a, b) = (base + rows.start, base + rows.end);
            let input = Tensor::from_slice(&x[a * DIM..b * DIM], [b - a, DIM], d)?;
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[a..b], &opts)
        };
        let report = job.step(batch, loss, &mut opt)?;
        println!(
            "rank {rank} of {size}: step {step} rows {:?} of {:?}, loss {:.5}, all-reduce {} B in {:.3} ms ({:.3} ms exposed)",
            report.rank_rows[rank],
            report.rank_rows,
            report.local.loss,
            report.all_reduce_bytes,
            report.all_reduce_s * 1e3,
            report.exposed_s * 1e3
        );
    }
    if rank == 0
        && let Some(net) = job.network()
    {
        println!(
            "measured all-reduce: {:.1} µs + {:.2} GB/s; buckets of {:.1} MiB",
            net.latency_s * 1e6,
            net.bytes_per_s / 1e9,
            job.bucket_bytes() as f64 / 1048576.0
        );
    }
    if rank == 0
        && let Some(dir) = &args.save
    {
        std::fs::create_dir_all(dir).map_err(|e| manychips::Error::Checkpoint {
            path: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let snapshot = Snapshot::capture(
            args.steps,
            job.local.params(),
            &opt,
            serde_json::json!({ "ranks": size }),
        )?;
        let path = write_checkpoint(dir, &snapshot)?;
        println!("rank 0 wrote {}", path.display());
    }
    job.ranks().barrier();
    Ok(())
}
