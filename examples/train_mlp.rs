//! An MLP on the UCI handwritten digits (8×8 images, 1797 of them, `data/digits.csv`),
//! trained data-parallel on every device found: each step's batch is cut into shares so
//! the devices finish together.
//!
//!     cargo run --release --example train_mlp
//!     MANYCHIPS_DEVICES=cpu cargo run --release --example train_mlp -- --epochs 20
//!
//! Writes `metrics.csv` and `curves.png` to `--out` (default `target/train_mlp`).

#[path = "common/mod.rs"]
mod common;

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::{AdamW, LrSchedule, Optimizer};
use manychips::train::{DataParallel, Var, no_grad};
use manychips::{DeviceRef, Error, Result, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

#[derive(Parser, Debug)]
#[command(about = "Train a 64-128-10 MLP on the UCI digits over every device found")]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 40, value_parser = common::count(1..=100_000))]
    epochs: usize,
    /// Global batch (cut into shares across devices).
    #[arg(long, default_value_t = 64, value_parser = common::count(1..=65_536))]
    batch: usize,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true, value_parser = common::learning_rate)]
    lr: f64,
    /// Width of the hidden layer.
    #[arg(long, default_value_t = 128, value_parser = common::count(1..=65_536))]
    hidden: usize,
    /// Seed for the split, the shuffles and the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Devices to use, like MANYCHIPS_DEVICES (e.g. `cpu`, `cpu,vulkan:0`). Default: all.
    #[arg(long)]
    devices: Option<String>,
    /// Stop after this many steps (quick checks).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_steps: Option<u64>,
    /// Where metrics.csv and curves.png go.
    #[arg(long, default_value = "target/train_mlp")]
    out: PathBuf,
    /// No progress bar; one line per epoch.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    checkpoint: common::CheckpointArgs,
    /// Join the MPI job this process was started in (`mpirun -np 4 …`, `srun -n 4 …`): the
    /// global batch is cut across ranks by their speed. Needs `--features mpi`.
    #[arg(long)]
    distributed: bool,
}

struct Digits {
    /// Pixels scaled to [0, 1], 64 per image.
    pixels: Vec<f32>,
    labels: Vec<u32>,
}

impl Digits {
    const PIXELS: usize = 64;

    fn load(path: &str) -> std::result::Result<Digits, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("{path}:{}: {e}", n + 1))?;
            if values.len() != Self::PIXELS + 1 {
                return Err(format!("{path}:{}: {} values, want 65", n + 1, values.len()));
            }
            pixels.extend(values[..Self::PIXELS].iter().map(|v| v / 16.0));
            labels.push(values[Self::PIXELS] as u32);
        }
        Ok(Digits { pixels, labels })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    /// The images at `indices`, as one host batch.
    fn batch(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(indices.len() * Self::PIXELS);
        for &i in indices {
            x.extend_from_slice(&self.pixels[i * Self::PIXELS..(i + 1) * Self::PIXELS]);
        }
        (x, indices.iter().map(|&i| self.labels[i]).collect())
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
    let data_path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let data = Digits::load(data_path)?;
    // Fixed 80/20 split from the seed.
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed));
    let test_len = data.len() / 5;
    let (test, train) = order.split_at(test_len);
    let (test, mut train) = (test.to_vec(), train.to_vec());

    let (fleet, devices) = common::devices(args.devices.as_deref()).map_err(|e| e.to_string())?;
    println!(
        "digits: {} train / {} test images; devices: {}",
        train.len(),
        test.len(),
        devices.iter().map(|(d, _)| d.info().label()).collect::<Vec<_>>().join(", ")
    );
    let hidden = args.hidden;
    let dp = DataParallel::new(devices, args.seed, move |store| {
        Mlp::new(store, &[Digits::PIXELS, hidden, 10], Activation::Relu)
    })
    .map_err(|e| e.to_string())?
    .with_membership(fleet.membership().clone());
    let mut job = common::Job::new(dp, args.distributed)?;
    let leads = job.leads();
    let mut opt = AdamW::new(job.dp().params().to_vec(), args.lr)
        .and_then(|o| o.with_weight_decay(1e-4))
        .map_err(|e| e.to_string())?;
    let steps_per_epoch = train.len().div_ceil(args.batch) as u64;
    let total = args
        .max_steps
        .unwrap_or(steps_per_epoch * args.epochs as u64)
        .min(steps_per_epoch * args.epochs as u64);
    let schedule = LrSchedule::WarmupCosine { warmup: steps_per_epoch, total, min_ratio: 0.05 };
    let (mut checkpoints, start) =
        common::Checkpointing::open(&args.checkpoint, args.seed, total, job.dp_mut(), &mut opt)?;
    if start.finished {
        return Ok(());
    }
    let start = start.step;
    let mut metrics = common::Metrics::for_run(leads, &args.out, "test_accuracy", start)?;
    let bar = common::progress(total, args.quiet || !leads);
    bar.set_position(start);
    // This run's steps, samples and last step's shares, for the summary line.
    let (mut steps_run, mut samples, mut last_shares) = (0usize, 0usize, String::from("-"));
    let started = Instant::now();
    let mut accuracy = 0.0;
    let mut step = 0u64;
    'epochs: for epoch in 0..args.epochs {
        // Every epoch reshuffles the previous order, so a resumed run replays the shuffles
        // of the epochs it skips.
        train.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed ^ (epoch as u64 + 1)));
        if step + steps_per_epoch <= start {
            step += steps_per_epoch;
            continue;
        }
        for (k, chunk) in train.chunks(args.batch).enumerate() {
            if step < start {
                step += 1;
                continue;
            }
            if step >= total {
                break 'epochs;
            }
            opt.set_learning_rate(schedule.at(step, args.lr)).map_err(|e| e.to_string())?;
            let (x, y) = data.batch(chunk);
            let loss = move |model: &Mlp,
                             device: &DeviceRef,
                             rows: Range<usize>,
                             ctx: &Ctx|
                  -> Result<Var> {
                let input = Tensor::from_slice(
                    &x[rows.start * 64..rows.end * 64],
                    [rows.len(), 64],
                    device,
                )?;
                let logits = model.forward(&Var::constant(input), ctx)?;
                let opts = CrossEntropy { reduction: Reduction::None, ..CrossEntropy::default() };
                nn::cross_entropy_with(&logits, &y[rows], &opts)
            };
            let report = job.step(chunk.len(), loss, &mut opt).map_err(|e| e.to_string())?;
            // Test accuracy at the end of each epoch and of the run, in this step's row.
            let evaluated = k as u64 + 1 == steps_per_epoch || step + 1 == total;
            if evaluated {
                accuracy = evaluate(job.dp().model(), &job.dp().devices()[0], &data, &test)
                    .map_err(|e| e.to_string())?;
                if args.quiet && leads {
                    println!(
                        "epoch {epoch:>3}: loss {:.4}, test accuracy {:.2}%",
                        report.loss,
                        accuracy * 100.0
                    );
                }
            }
            let row = common::Row {
                step,
                samples: chunk.len(),
                epoch,
                loss: report.loss,
                lr: opt.learning_rate(),
                step_ms: report.secs * 1e3,
                samples_per_s: chunk.len() as f64 / report.secs,
                eval: evaluated.then_some(accuracy),
                shares: report.shares_line(),
            };
            (steps_run, samples) = (steps_run + 1, samples + chunk.len());
            last_shares = report.shares_line();
            if let Some(m) = &mut metrics {
                m.push(row)?;
            }
            bar.set_message(format!(
                "loss {:.3} | acc {:.1}% | {:.0} samples/s | {}",
                report.loss,
                accuracy * 100.0,
                chunk.len() as f64 / report.secs,
                report.shares_line()
            ));
            bar.inc(1);
            step += 1;
            let state = serde_json::json!({
                "epoch": epoch,
                "data_position": step % steps_per_epoch,
                "schedule": format!("{schedule:?}"),
            });
            if leads {
                checkpoints.after_step(step, step == total, job.dp(), &opt, state)?;
            }
        }
    }
    bar.finish_and_clear();
    checkpoints.finish()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "test accuracy {:.2}% after {} steps in {:.1} s ({:.0} samples/s){}; last step: {}",
        accuracy * 100.0,
        steps_run,
        secs,
        samples as f64 / secs,
        job.place(),
        last_shares
    );
    let Some(metrics) = metrics else { return Ok(()) };
    let png = args.out.join("curves.png");
    common::plot(&png, "MLP on UCI digits", "test accuracy", &metrics.all_rows())?;
    println!("wrote {} and {}", metrics.path().display(), png.display());
    Ok(())
}

/// Fraction of `indices` the model classifies right (one batch, no graph recorded).
fn evaluate(model: &Mlp, device: &DeviceRef, data: &Digits, indices: &[usize]) -> Result<f64> {
    let (x, y) = data.batch(indices);
    let logits = no_grad(|| -> Result<Var> {
        let input = Tensor::from_slice(&x, [indices.len(), Digits::PIXELS], device)?;
        model.forward(&Var::constant(input), &Ctx::eval())
    })?;
    let predicted = logits.tensor().argmax(1)?.to_vec::<u32>()?;
    if predicted.len() != y.len() {
        return Err(Error::Shape {
            op: "evaluate".into(),
            device: device.info().label(),
            detail: format!("{} predictions for {} labels", predicted.len(), y.len()),
        });
    }
    let right = predicted.iter().zip(&y).filter(|(p, t)| p == t).count();
    Ok(right as f64 / y.len().max(1) as f64)
}
