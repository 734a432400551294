//! A small causal transformer that learns *The Tempest* (`data/tempest.txt`) one character
//! at a time, trained data-parallel on every device found; prints a sample at the end.
//!
//!     cargo run --release --example train_charlm
//!     cargo run --release --example train_charlm -- --steps 300 --dtype bf16
//!
//! Writes `metrics.csv` and `curves.png` to `--out` (default `target/train_charlm`).

#[path = "common/mod.rs"]
mod common;

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use manychips::train::models::{Gpt, GptConfig};
use manychips::train::nn::{self, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::{AdamW, LossScaler, LrSchedule, Optimizer};
use manychips::train::{DataParallel, Var, no_grad};
use manychips::{DType, DeviceRef, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Precision {
    F32,
    /// bf16 compute, f32 master weights.
    Bf16,
    /// f16 compute, f32 master weights, dynamic loss scaling.
    F16,
}

#[derive(Parser, Debug)]
#[command(about = "Train a character-level transformer on The Tempest over every device found")]
struct Args {
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    steps: u64,
    /// Sequences per step (cut into shares across devices).
    #[arg(long, default_value_t = 32, value_parser = common::count(1..=4096))]
    batch: usize,
    /// Characters of context.
    #[arg(long, default_value_t = 64, value_parser = common::count(1..=4096))]
    context: usize,
    /// Width of the model; a multiple of `--heads`.
    #[arg(long, default_value_t = 96, value_parser = common::count(1..=8192))]
    dim: usize,
    #[arg(long, default_value_t = 4, value_parser = common::count(1..=256))]
    heads: usize,
    #[arg(long, default_value_t = 2, value_parser = common::count(1..=256))]
    layers: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true, value_parser = common::learning_rate)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Devices to use, like MANYCHIPS_DEVICES (e.g. `cpu`). Default: all.
    #[arg(long)]
    devices: Option<String>,
    /// Validation loss every this many steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    eval_every: u64,
    /// Characters to generate at the end.
    #[arg(long, default_value_t = 300, value_parser = common::count(0..=1_000_000))]
    sample: usize,
    #[arg(long, default_value = "target/train_charlm")]
    out: PathBuf,
    /// No progress bar; one line per evaluation.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    checkpoint: common::CheckpointArgs,
    /// Join the MPI job this process was started in (`mpirun -np 4 …`, `srun -n 4 …`).
    /// Needs `--features mpi`.
    #[arg(long)]
    distributed: bool,
}

fn config(args: &Args, vocab: usize) -> GptConfig {
    GptConfig {
        vocab,
        context: args.context,
        dim: args.dim,
        heads: args.heads,
        layers: args.layers,
        dtype: match args.dtype {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        },
    }
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
    // Shared with the replicas' threads.
    let train: Arc<[u32]> = Arc::from(train);
    if valid.len() <= args.context || train.len() <= args.context + 1 {
        return Err(format!("context {} does not fit the text", args.context));
    }
    if !args.dim.is_multiple_of(args.heads) {
        return Err(format!("--dim {} is not a multiple of --heads {}", args.dim, args.heads));
    }
    let unigram = corpus.unigram_entropy();
    let (fleet, devices) = common::devices(args.devices.as_deref()).map_err(|e| e.to_string())?;
    println!(
        "The Tempest: {} characters, vocabulary {}, unigram entropy {unigram:.3} nats; devices: {}",
        corpus.ids.len(),
        corpus.chars.len(),
        devices.iter().map(|(d, _)| d.info().label()).collect::<Vec<_>>().join(", ")
    );
    let vocab = corpus.chars.len();
    let model_config = config(args, vocab);
    let mut dp = DataParallel::new(devices, args.seed, move |store| Gpt::new(store, model_config))
        .map_err(|e| e.to_string())?
        .with_membership(fleet.membership().clone());
    if matches!(args.dtype, Precision::F16) {
        dp.set_loss_scaler(Some(LossScaler::default())).map_err(|e| e.to_string())?;
    }
    dp.set_max_grad_norm(Some(1.0)).map_err(|e| e.to_string())?;
    let weights: usize = dp.params().iter().map(|p| p.value().numel()).sum();
    println!(
        "model: {} layers, dim {}, {} heads, {weights} weights, {:?}",
        args.layers, args.dim, args.heads, args.dtype
    );
    let mut job = common::Job::new(dp, args.distributed)?;
    let leads = job.leads();
    let mut opt = AdamW::new(job.dp().params().to_vec(), args.lr)
        .and_then(|o| o.with_weight_decay(0.01))
        .map_err(|e| e.to_string())?;
    let schedule =
        LrSchedule::WarmupCosine { warmup: args.steps / 20, total: args.steps, min_ratio: 0.1 };
    let (mut checkpoints, start) = common::Checkpointing::open(
        &args.checkpoint,
        args.seed,
        args.steps,
        job.dp_mut(),
        &mut opt,
    )?;
    if start.finished {
        return Ok(());
    }
    if let Some(saved) = start.state.as_ref().map(|s| s["loss_scaler"].clone())
        && job.dp().loss_scaler().is_some()
    {
        let scaler: Option<LossScaler> = serde_json::from_value(saved)
            .map_err(|e| format!("the checkpoint's loss_scaler: {e}"))?;
        match scaler {
            Some(scaler) => job
                .dp_mut()
                .set_loss_scaler(Some(scaler))
                .map_err(|e| format!("the checkpoint's loss_scaler: {e}"))?,
            // Written by a run without loss scaling: this f16 run keeps its fresh scaler.
            None => println!("the checkpoint has no loss scale: starting from the default"),
        }
    }
    let start = start.step;
    let mut metrics = common::Metrics::for_run(leads, &args.out, "validation_loss", start)?;
    let bar = common::progress(args.steps, args.quiet || !leads);
    bar.set_position(start);
    let mut steps_run = 0;
    let mut valid_loss = f64::NAN;
    let started = Instant::now();
    let t = args.context;
    for step in start..args.steps {
        // The batch of a step depends on (seed, step) only, so a resumed run draws the same.
        let mut rng =
            ChaCha8Rng::seed_from_u64(args.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        opt.set_learning_rate(schedule.at(step, args.lr)).map_err(|e| e.to_string())?;
        // Random windows: input t characters, target the next t.
        let starts: Vec<usize> =
            (0..args.batch).map(|_| rng.random_range(0..train.len() - t - 1)).collect();
        let text = train.clone();
        let loss =
            move |model: &Gpt, device: &DeviceRef, rows: Range<usize>, _: &Ctx| -> Result<Var> {
                let (inputs, targets) = common::windows(&text, &starts[rows.clone()], t);
                let ids = Tensor::from_slice(&inputs, [rows.len(), t], device)?;
                let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
                // One loss per sequence (the mean over its characters): the step sums the
                // sequences and divides by the batch.
                nn::cross_entropy_with(&model.forward(&ids)?, &targets, &opts)?
                    .reshape([rows.len(), t])?
                    .mean(1)
            };
        let report = job.step(args.batch, loss, &mut opt).map_err(|e| e.to_string())?;
        let eval = (step + 1) % args.eval_every == 0 || step + 1 == args.steps;
        if eval {
            valid_loss = validation_loss(job.dp().model(), &job.dp().devices()[0], valid, t)
                .map_err(|e| e.to_string())?;
            if args.quiet && leads {
                let scale = job
                    .dp()
                    .loss_scaler()
                    .map(|s| format!(" | loss scale {} ({} skipped)", s.scale, s.skipped))
                    .unwrap_or_default();
                println!(
                    "step {:>5}: train loss {:.3}, validation loss {valid_loss:.3} nats | {}{scale}",
                    step + 1,
                    report.loss,
                    report.shares_line()
                );
            }
        }
        let row = common::Row {
            step,
            epoch: 0,
            samples: args.batch,
            loss: report.loss,
            lr: opt.learning_rate(),
            step_ms: report.secs * 1e3,
            samples_per_s: (args.batch * t) as f64 / report.secs,
            eval: eval.then_some(valid_loss),
            shares: report.shares_line(),
        };
        if let Some(m) = &mut metrics {
            m.push(row)?;
        }
        steps_run += 1;
        bar.set_message(format!(
            "loss {:.3} | valid {valid_loss:.3} | {:.0} chars/s | {}",
            report.loss,
            (args.batch * t) as f64 / report.secs,
            report.shares_line()
        ));
        bar.inc(1);
        let done = step + 1;
        if leads {
            let state = serde_json::json!({ "loss_scaler": job.dp().loss_scaler() });
            checkpoints.after_step(done, done == args.steps, job.dp(), &opt, state)?;
        }
    }
    bar.finish_and_clear();
    checkpoints.finish()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "validation loss {valid_loss:.3} nats (unigram entropy {unigram:.3}) after {} steps in {secs:.1} s ({:.0} chars/s)",
        steps_run,
        (steps_run * args.batch * t) as f64 / secs
    );
    let Some(metrics) = metrics else { return Ok(()) };
    let png = args.out.join("curves.png");
    let title = "character transformer on The Tempest";
    common::plot(&png, title, "validation loss (nats)", &metrics.all_rows())?;
    println!("wrote {} and {}", metrics.path().display(), png.display());
    if args.sample > 0 {
        let (model, device) = (job.dp().model(), &job.dp().devices()[0]);
        let text = common::generate(&corpus, t, args.sample, args.seed, |context| {
            let ids = Tensor::from_slice(context, [1, context.len()], device)?;
            Ok(no_grad(|| model.forward(&ids))?.tensor().clone())
        })
        .map_err(|e| e.to_string())?;
        println!("--- sample ---\n{text}\n--------------");
    }
    Ok(())
}

/// Mean loss per character over consecutive windows of the validation text.
fn validation_loss(model: &Gpt, device: &DeviceRef, text: &[u32], t: usize) -> Result<f64> {
    let starts: Vec<usize> = (0..(text.len() - 1) / t).map(|i| i * t).take(64).collect();
    let (inputs, targets) = common::windows(text, &starts, t);
    no_grad(|| {
        let ids = Tensor::from_slice(&inputs, [starts.len(), t], device)?;
        let loss = nn::cross_entropy(&model.forward(&ids)?, &targets)?;
        Ok(loss.tensor().to_f64_vec()?[0])
    })
}
