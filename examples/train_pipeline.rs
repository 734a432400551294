//! The character transformer of `train_charlm`, trained as a pipeline: its layers cut into
//! stages over every device found plus simulated chips, each device offered less memory
//! than the whole model needs, so that no device could train it alone.
//!
//!     cargo run --release --example train_pipeline
//!     cargo run --release --example train_pipeline -- --layers 6 --chips 3 --trace pipeline.json
//!     cargo run --release --example train_pipeline -- --groups   # data-parallel groups too
//!
//! Prints the plan (layers, device, memory used and free, predicted and measured times per
//! stage, the bubble), then the losses, and a sample of generated text.

#[path = "common/mod.rs"]
mod common;

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::models::{Gpt, GptConfig};
use manychips::train::nn::{self, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::{AdamW, LrSchedule, Optimizer};
use manychips::train::pipeline::{Candidate, LayerCost, profile_layers};
use manychips::train::{ParamStore, Pipeline, PipelinePlan, Var};
use manychips::{DType, DeviceRef, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Parser, Debug)]
#[command(about = "Train a character-level transformer on The Tempest as a pipeline of stages")]
struct Args {
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 32, value_parser = common::count(1..=4096))]
    batch: usize,
    /// Micro-batches per step (each stage holds at most as many as there are stages after
    /// it, plus one).
    #[arg(long, default_value_t = 4, value_parser = common::count(1..=4096))]
    micro_batches: usize,
    /// Characters of context.
    #[arg(long, default_value_t = 64, value_parser = common::count(1..=4096))]
    context: usize,
    /// Width of the model; a multiple of `--heads`.
    #[arg(long, default_value_t = 96, value_parser = common::count(1..=8192))]
    dim: usize,
    #[arg(long, default_value_t = 4, value_parser = common::count(1..=256))]
    heads: usize,
    #[arg(long, default_value_t = 4, value_parser = common::count(1..=256))]
    layers: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true, value_parser = common::learning_rate)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Devices to use, like MANYCHIPS_DEVICES (e.g. `cpu`). Default: all.
    #[arg(long)]
    devices: Option<String>,
    /// Simulated chips to add (computing on the first device), at 1×, 2×, 3×… a quarter of
    /// its speed.
    #[arg(long, default_value_t = 2, value_parser = common::count(0..=64))]
    chips: usize,
    /// Memory offered by each device, in KiB. Default: a quarter more than the least
    /// that lets the layers fit at all, well below what the whole model needs.
    #[arg(long, value_parser = common::count(1..=1 << 40))]
    device_kib: Option<usize>,
    /// Let the search form data-parallel groups (devices sharing a stage's rows) where
    /// they shorten the predicted step, instead of stages of one device each.
    #[arg(long)]
    groups: bool,
    /// Validation loss every this many steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    eval_every: u64,
    /// Characters to generate at the end.
    #[arg(long, default_value_t = 200, value_parser = common::count(0..=1_000_000))]
    sample: usize,
    /// Write a Chrome trace of the last step (every device's forwards, backwards and
    /// received copies) here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// One line per evaluation, no progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::result::Result<(), String> {
    let corpus = common::Corpus::tempest()?;
    let split = corpus.ids.len() * 9 / 10;
    let (train, valid) = corpus.ids.split_at(split);
    let t = args.context;
    if valid.len() <= t || train.len() <= t + 1 {
        return Err(format!("context {t} does not fit the text"));
    }
    if !args.dim.is_multiple_of(args.heads) {
        return Err(format!("--dim {} is not a multiple of --heads {}", args.dim, args.heads));
    }
    if args.batch < args.micro_batches {
        return Err(format!(
            "--batch {} cannot make --micro-batches {}",
            args.batch, args.micro_batches
        ));
    }
    let (_fleet, devices) = common::devices(args.devices.as_deref()).map_err(|e| e.to_string())?;
    let host = devices[0].0.clone();
    let config = GptConfig {
        vocab: corpus.chars.len(),
        context: t,
        dim: args.dim,
        heads: args.heads,
        layers: args.layers,
        dtype: DType::F32,
    };
    // Built where the fleet's first device is; the pipeline moves each stage's parameters
    // to its own device.
    let model = Gpt::new(&ParamStore::new(&host, args.seed), config).map_err(|e| e.to_string())?;
    let micro = args.batch.div_ceil(args.micro_batches);
    let (sample_in, _) = common::windows(train, &vec![0; micro], t);
    let ids = Tensor::from_slice(&sample_in, [micro, t], &host).map_err(|e| e.to_string())?;
    let costs =
        profile_layers(&model, &Var::constant(ids), &Ctx::train(0)).map_err(|e| e.to_string())?;
    let whole = whole_model_bytes(&costs, &host, args.micro_batches)?;
    let budget = match args.device_kib {
        Some(kib) => kib as u64 * 1024,
        None => least_budget(&costs, &devices, args.chips, args.micro_batches, whole)? * 5 / 4,
    };
    let candidates = candidates(&devices, args.chips, budget)?;
    println!(
        "The Tempest: {} characters, vocabulary {}, unigram entropy {:.3} nats",
        corpus.ids.len(),
        corpus.chars.len(),
        corpus.unigram_entropy()
    );
    println!(
        "model: {} blocks ({} pipeline layers), dim {}, {} weights; each device offers {:.1} KiB \
         of the {:.1} KiB the whole model needs",
        args.layers,
        costs.len(),
        args.dim,
        costs.iter().map(|c| c.param_bytes / 4).sum::<usize>(),
        budget as f64 / 1024.0,
        whole as f64 / 1024.0,
    );
    // Stages of one device each (or several each, interleaved, where that plays a shorter
    // step); with `--groups`, data-parallel groups where those shorten the step, whose helpers each run a copy of the model (built alike, it takes the
    // model's values).
    let plan = match args.groups {
        true => PipelinePlan::search_with_groups(&costs, &candidates, args.micro_batches, 2),
        false => PipelinePlan::search(&costs, &candidates, args.micro_batches, 2),
    }
    .map_err(|e| e.to_string())?;
    let copies = (1..=plan.copies_needed() as u64)
        .map(|i| Gpt::new(&ParamStore::new(&host, args.seed + i), config))
        .collect::<manychips::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let lr = args.lr;
    let mut pipeline = Pipeline::with_copies(model, copies, plan, move |params| {
        Ok(Box::new(AdamW::new(params, lr)?.with_weight_decay(0.01)?) as Box<dyn Optimizer>)
    })
    .map_err(|e| e.to_string())?;
    pipeline.set_max_grad_norm(Some(1.0));
    println!("{}", pipeline.explain());

    let schedule =
        LrSchedule::WarmupCosine { warmup: args.steps / 20, total: args.steps, min_ratio: 0.1 };
    let bar = common::progress(args.steps, args.quiet);
    let started = Instant::now();
    let mut valid_loss = f64::NAN;
    for step in 0..args.steps {
        let mut rng =
            ChaCha8Rng::seed_from_u64(args.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let lr = schedule.at(step, args.lr);
        for opt in pipeline.optimizers_mut() {
            opt.set_learning_rate(lr).map_err(|e| e.to_string())?;
        }
        let starts: Vec<usize> =
            (0..args.batch).map(|_| rng.random_range(0..train.len() - t - 1)).collect();
        if args.trace.is_some() && step + 1 == args.steps {
            pipeline.start_trace();
        }
        let input = |rows: Range<usize>, device: &DeviceRef| -> Result<Var> {
            let (inputs, _) = common::windows(train, &starts[rows.clone()], t);
            Ok(Var::constant(Tensor::from_slice(&inputs, [rows.len(), t], device)?))
        };
        // One loss per sequence (the mean over its characters).
        let loss = |logits: &Var, rows: Range<usize>, _: &DeviceRef| -> Result<Var> {
            let (_, targets) = common::windows(train, &starts[rows.clone()], t);
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            nn::cross_entropy_with(logits, &targets, &opts)?.reshape([rows.len(), t])?.mean(1)
        };
        let report = pipeline.step(args.batch, input, loss).map_err(|e| e.to_string())?;
        if (step + 1) % args.eval_every == 0 || step + 1 == args.steps {
            valid_loss = validation_loss(&pipeline, valid, t, micro).map_err(|e| e.to_string())?;
            if args.quiet {
                println!(
                    "step {:>5}: train loss {:.3}, validation loss {valid_loss:.3} nats",
                    step + 1,
                    report.loss
                );
            }
        }
        bar.set_message(format!("loss {:.3} | valid {valid_loss:.3}", report.loss));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("{}", pipeline.explain());
    println!(
        "validation loss {valid_loss:.3} nats (unigram entropy {:.3}) after {} steps in {secs:.1} s ({:.0} chars/s)",
        corpus.unigram_entropy(),
        args.steps,
        (args.steps as usize * args.batch * t) as f64 / secs
    );
    if let (Some(path), Some(trace)) = (&args.trace, pipeline.take_trace()) {
        trace.write(path).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote the last step's trace to {}", path.display());
    }
    if args.sample > 0 {
        let text = common::generate(&corpus, t, args.sample, args.seed, |context| {
            let ids = Tensor::from_slice(context, [1, context.len()], pipeline.input_device())?;
            Ok(pipeline.infer(&Var::constant(ids), &Ctx::eval())?.tensor().clone())
        })
        .map_err(|e| e.to_string())?;
        println!("--- sample ---\n{text}\n--------------");
    }
    Ok(())
}

/// What one device holding the whole model (its state and a micro-batch in flight) needs.
fn whole_model_bytes(
    costs: &[LayerCost],
    host: &DeviceRef,
    micro_batches: usize,
) -> std::result::Result<u64, String> {
    let profile = DeviceProfile::for_device(host.info());
    let unlimited =
        Candidate { device: host.clone(), profile, memory: u64::MAX, helpers: Vec::new() };
    let whole = PipelinePlan::manual(costs, vec![(0..costs.len(), unlimited)], micro_batches, 2)
        .map_err(|e| e.to_string())?;
    Ok(whole.stages[0].memory.total())
}

/// The least memory per device (within 1%) with which the layers fit on the fleet at all.
fn least_budget(
    costs: &[LayerCost],
    devices: &[(DeviceRef, DeviceProfile)],
    chips: usize,
    micro_batches: usize,
    whole: u64,
) -> std::result::Result<u64, String> {
    let fits = |budget: u64| -> std::result::Result<bool, String> {
        let candidates = candidates(devices, chips, budget)?;
        Ok(PipelinePlan::search(costs, &candidates, micro_batches, 2).is_ok())
    };
    let (mut lo, mut hi) = (0, whole);
    while hi - lo > hi / 100 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? { hi = mid } else { lo = mid }
    }
    Ok(hi)
}

/// Every device offering `budget` bytes (or less, where it has less free), then `chips`
/// simulated chips over the first device, the i-th at i/4 of its matmul rate.
fn candidates(
    devices: &[(DeviceRef, DeviceProfile)],
    chips: usize,
    budget: u64,
) -> std::result::Result<Vec<Candidate>, String> {
    let mut out = Vec::new();
    for (device, profile) in devices {
        let mut c = Candidate::new(device.clone(), profile.clone()).map_err(|e| e.to_string())?;
        c.memory = c.memory.min(budget);
        out.push(c);
    }
    let (host, host_profile) = &devices[0];
    let rate = host_profile.peak_matmul_rate().max(1e9);
    for i in 1..=chips {
        let profile = SimProfile::new(format!("chip {i}"))
            .with_flops(rate * i as f64 / 4.0)
            .with_bandwidth(host_profile.bytes_per_s.max(1e9))
            .with_latency(std::time::Duration::from_secs_f64(host_profile.latency_s))
            .with_link(host_profile.host_to_device_bytes_per_s.max(1e9))
            .with_memory(budget);
        let sim = SimDevice::new(host.clone(), profile.clone(), i).map_err(|e| e.to_string())?;
        let device: DeviceRef = Arc::new(sim);
        let profile = DeviceProfile::simulated(device.info(), &profile);
        out.push(Candidate::new(device, profile).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Mean loss per character over consecutive windows of the validation text, `rows` windows
/// at a time (a training micro-batch's rows: what the plan gave each stage room for).
fn validation_loss(pipeline: &Pipeline<Gpt>, text: &[u32], t: usize, rows: usize) -> Result<f64> {
    let starts: Vec<usize> = (0..(text.len() - 1) / t).map(|i| i * t).take(64).collect();
    let mut total = 0.0;
    for chunk in starts.chunks(rows.max(1)) {
        let (inputs, targets) = common::windows(text, chunk, t);
        let ids = Tensor::from_slice(&inputs, [chunk.len(), t], pipeline.input_device())?;
        let logits = pipeline.infer(&Var::constant(ids), &Ctx::eval())?;
        let mean = nn::cross_entropy(&logits, &targets)?.tensor().to_f64_vec()?[0];
        total += mean * chunk.len() as f64;
    }
    Ok(total / starts.len() as f64)
}
