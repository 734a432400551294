//! Distributed training checks, run under an MPI launcher by `tests/mpi.rs` (feature `mpi`):
//! trains a small MLP with dropout on synthetic data over `--steps` steps as one job over
//! all ranks (each rank: its CPU device), optionally from a checkpoint, and writes the
//! final checkpoint from rank 0.
//!
//!     mpirun -np 2 target/release/examples/mpi_check --steps 8 --weights 1,3 --save /tmp/two
//!
//! With `--pipeline`, a small GPT's layers are cut over the ranks instead (rank `r` runs
//! stage `r`), and each rank writes its own stage's checkpoint under `--save`/`rank-<r>`;
//! with `--local-group` too, each rank's stage runs on a group of its local devices.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::checkpoint::{latest, write_checkpoint};
use manychips::train::distributed::{Distributed, Ranks};
use manychips::train::models::{Gpt, GptConfig, Mlp};
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Dropout, Reduction};
use manychips::train::optim::{AdamW, Optimizer, Sgd};
use manychips::train::pipeline::{Candidate, Layered, RankPipeline, StagePlan, profile_layers};
use manychips::train::{DataParallel, ParamStore, Snapshot, Var};
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
    /// Train a pipeline with one stage per rank instead.
    #[arg(long)]
    pipeline: bool,
    /// With `--pipeline`: each rank's stage on a data-parallel group of two simulated
    /// chips over its CPU, planned with `StagePlan::for_rank`.
    #[arg(long)]
    local_group: bool,
    /// With `--pipeline`: SGD with momentum instead of AdamW (whose normalised step makes
    /// a rounding difference in a gradient that is zero in exact arithmetic visible).
    #[arg(long)]
    sgd: bool,
    /// With `--pipeline`: this rank's device (a simulated chip over its CPU) is lost early
    /// in the first step, so the job must end with that error rather than hang.
    #[arg(long)]
    fail_rank: Option<usize>,
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

/// A 3-block GPT whose 14 layers are cut over the ranks, 4 micro-batches a step of 8
/// sequences of a fixed pattern, AdamW.
fn pipeline(args: &Args, ranks: Ranks) -> Result<()> {
    let (rank, size) = (ranks.rank(), ranks.size());
    let cpu: DeviceRef = Arc::new(CpuDevice::new()?);
    let config =
        GptConfig { vocab: 13, context: 8, dim: 16, heads: 2, layers: 3, dtype: DType::F32 };
    let model = Gpt::new(&ParamStore::new(&cpu, 7), config)?;
    let depth = model.depth();
    let layers: Vec<Range<usize>> =
        (0..size).map(|r| r * depth / size..(r + 1) * depth / size).collect();
    let sgd = args.sgd;
    let optimizer = move |params| -> Result<Box<dyn Optimizer>> {
        Ok(match sgd {
            true => Box::new(Sgd::new(params, 1e-2)?.with_momentum(0.9)?),
            false => Box::new(AdamW::new(params, 1e-2)?),
        })
    };
    let token = |r: usize, t: usize| ((r * 5 + t * 3 + r * t) % 13) as u32;
    let input = |rows: Range<usize>, device: &DeviceRef| -> Result<Var> {
        let ids: Vec<u32> = rows.clone().flat_map(|r| (0..8).map(move |t| token(r, t))).collect();
        Ok(Var::constant(Tensor::from_slice(&ids, [rows.len(), 8], device)?))
    };
    let (batch, micro_batches) = (8, 4);
    let mut job = if args.local_group {
        // Two like chips over this rank's CPU: each takes half of every micro-batch's rows.
        let chip = |i: usize| -> Result<Candidate> {
            let profile = SimProfile::new("local");
            let device: DeviceRef = Arc::new(SimDevice::new(cpu.clone(), profile.clone(), i)?);
            Candidate::new(device.clone(), DeviceProfile::simulated(device.info(), &profile))
        };
        let group = Candidate::group(chip(0)?, vec![chip(1)?])?;
        let costs =
            profile_layers(&model, &input(0..batch / micro_batches, &cpu)?, &Ctx::train(0))?;
        let stage = StagePlan::for_rank(
            &costs,
            layers[rank].clone(),
            (rank, size),
            &group,
            micro_batches,
            2,
        )?;
        let copy = Gpt::new(&ParamStore::new(&cpu, 8), config)?;
        RankPipeline::with_stage(
            ranks,
            model,
            vec![copy],
            layers,
            &stage,
            micro_batches,
            optimizer,
        )?
    } else {
        let device: DeviceRef = match args.fail_rank {
            Some(r) if r == rank => {
                let chip = SimDevice::new(cpu.clone(), SimProfile::new("doomed"), 0)?;
                chip.fail_after(20, manychips::ErrorKind::DeviceLost);
                Arc::new(chip)
            }
            _ => cpu,
        };
        RankPipeline::new(ranks, model, layers, device, micro_batches, optimizer)?
    };
    for step in 0..args.steps {
        let loss = |logits: &Var, rows: Range<usize>, _: &DeviceRef| -> Result<Var> {
            let targets: Vec<u32> =
                rows.clone().flat_map(|r| (0..8).map(move |t| token(r, t + 1))).collect();
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            nn::cross_entropy_with(logits, &targets, &opts)?.reshape([rows.len(), 8])
        };
        let loss = job.step(batch, input, loss)?;
        println!("rank {rank} of {size}: pipeline step {step} loss {loss:.9}");
    }
    if let Some(dir) = &args.save {
        let dir = dir.join(format!("rank-{rank}"));
        std::fs::create_dir_all(&dir).map_err(|e| manychips::Error::Checkpoint {
            path: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let snapshot = job.snapshot(serde_json::json!({ "ranks": size }))?;
        write_checkpoint(&dir, &snapshot)?;
    }
    job.ranks().barrier();
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    let ranks = Ranks::init()?;
    if args.pipeline {
        return pipeline(args, ranks);
    }
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
