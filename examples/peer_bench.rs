//! manychips' side of the peer bench (`scripts/peer-bench.sh`): the same work as
//! `scripts/peers/{ops,mlp_epoch,charlm_step}.py` run on PyTorch and numpy, printed as one
//! JSON object of milliseconds per item (median of several runs), so the script can
//! interleave the contenders and report ratios.
//!
//!     cargo run --release --example peer_bench -- --work ops,mlp,charlm
//!
//! Items: `matmul_256` … `matmul_2048` (f32 n×n), `add_4M`, `exp_4M`, `softmax_4096x1024`
//! (rows), `layernorm_4096x1024` (last axis, with weight and bias), `mlp_epoch` (`train_mlp`'s
//! 64-128-10 ReLU MLP, AdamW, batch 64, one pass over 1438 rows), `charlm_step`
//! (`train_charlm`'s defaults: the step of `examples/gpu_report`). On `MANYCHIPS_DEVICES`
//! (default: the CPU alone).
//!
//! `--work gpu` times the WGSL kernels on every wgpu and Vulkan device found instead, items
//! named `op@device`: `add_4M`, `softmax_4096x1024`, and `matmul_1024` with the kernel the
//! device picked for itself, then forced to `_blocked` (register-blocked) and `_tiled`
//! (shared tiles); burn-wgpu runs the same work in `scripts/peers/burn`.

#[path = "gpu_report/train.rs"]
mod train;

use std::collections::BTreeMap;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use manychips::plan::Calibration;
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, LayerNorm, Reduction};
use manychips::train::optim::AdamW;
use manychips::train::{DataParallel, ParamStore, Var, no_grad};
use manychips::{DType, Device, DeviceRef, Fleet, MatmulKernel, Result, Tensor};

/// As in the training examples (`examples/common`): mimalloc, not the system's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "manychips' side of scripts/peer-bench.sh: milliseconds per item, as JSON")]
struct Args {
    /// Comma list of ops, mlp, charlm, gpu.
    #[arg(long, default_value = "ops,mlp,charlm")]
    work: String,
    /// Runs per item (the median is printed).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    reps: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(times) => {
            println!("{}", serde_json::to_string(&times).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Median milliseconds of `f` over `reps` runs after one warm-up run.
fn median_ms(reps: u64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn run(args: &Args) -> std::result::Result<BTreeMap<String, f64>, String> {
    let selector = std::env::var("MANYCHIPS_DEVICES").unwrap_or_else(|_| "cpu".into());
    let fleet = Fleet::discover_selected(Some(&selector)).map_err(|e| e.to_string())?;
    let dev = fleet.devices()[0].clone();
    let mut times = BTreeMap::new();
    for work in args.work.split(',').map(str::trim) {
        let failed = |e: manychips::Error| format!("{work}: {e}");
        match work {
            "ops" => ops(&dev, args.reps, &mut times).map_err(failed)?,
            "mlp" => {
                let ms = median_ms(args.reps, || mlp_epoch(&fleet).map(drop));
                times.insert("mlp_epoch".into(), ms.map_err(failed)?);
            }
            "charlm" => {
                times.insert("charlm_step".into(), charlm(&fleet).map_err(failed)?);
            }
            "gpu" => gpu(args.reps, &mut times).map_err(failed)?,
            other => {
                return Err(format!("unknown --work item {other:?} (ops, mlp, charlm, gpu)"));
            }
        }
    }
    Ok(times)
}

fn ops(dev: &DeviceRef, reps: u64, times: &mut BTreeMap<String, f64>) -> Result<()> {
    let sync = |t: Tensor| -> Result<()> {
        drop(t);
        dev.synchronize()
    };
    for n in [256, 512, 1024, 2048] {
        let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, dev)?;
        let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, dev)?;
        times.insert(format!("matmul_{n}"), median_ms(reps, || sync(a.matmul(&b)?))?);
    }
    let n = 4 << 20;
    let x = Tensor::randn(0.0, 1.0, [n], DType::F32, 3, dev)?;
    let y = Tensor::randn(0.0, 1.0, [n], DType::F32, 4, dev)?;
    times.insert("add_4M".into(), median_ms(reps, || sync(x.add(&y)?))?);
    times.insert("exp_4M".into(), median_ms(reps, || sync(x.exp()?))?);
    let rows = Tensor::randn(0.0, 1.0, [4096, 1024], DType::F32, 5, dev)?;
    times.insert("softmax_4096x1024".into(), median_ms(reps, || sync(rows.softmax(1)?))?);
    let norm = LayerNorm::new(&ParamStore::new(dev, 0), 1024)?;
    let input = Var::constant(rows.clone());
    times.insert(
        "layernorm_4096x1024".into(),
        median_ms(reps, || no_grad(|| sync(norm.forward(&input)?.tensor().clone())))?,
    );
    Ok(())
}

/// A GPU device with a way to force its matmul kernel.
type Gpu = (DeviceRef, Box<dyn Fn(MatmulKernel)>);

/// The GPU items on every wgpu and Vulkan device found.
fn gpu(reps: u64, times: &mut BTreeMap<String, f64>) -> Result<()> {
    let mut found: Vec<Gpu> = Vec::new();
    for dev in manychips_wgpu::discover()? {
        let dev = Arc::new(dev);
        let handle = dev.clone();
        found.push((dev, Box::new(move |k| handle.set_matmul_kernel(k))));
    }
    for dev in manychips_vulkan::discover()? {
        let dev = Arc::new(dev);
        let handle = dev.clone();
        found.push((dev, Box::new(move |k| handle.set_matmul_kernel(k))));
    }
    for (dev, set_kernel) in found {
        let at = dev.info().label();
        let sync = |t: Tensor| -> Result<()> {
            drop(t);
            dev.synchronize()
        };
        let n = 4 << 20;
        let x = Tensor::randn(0.0, 1.0, [n], DType::F32, 3, &dev)?;
        let y = Tensor::randn(0.0, 1.0, [n], DType::F32, 4, &dev)?;
        times.insert(format!("add_4M@{at}"), median_ms(reps, || sync(x.add(&y)?))?);
        let rows = Tensor::randn(0.0, 1.0, [4096, 1024], DType::F32, 5, &dev)?;
        times
            .insert(format!("softmax_4096x1024@{at}"), median_ms(reps, || sync(rows.softmax(1)?))?);
        let a = Tensor::randn(0.0, 1.0, [1024, 1024], DType::F32, 1, &dev)?;
        let b = Tensor::randn(0.0, 1.0, [1024, 1024], DType::F32, 2, &dev)?;
        times.insert(format!("matmul_1024@{at}"), median_ms(reps, || sync(a.matmul(&b)?))?);
        for (kernel, name) in
            [(MatmulKernel::RegisterBlocked, "blocked"), (MatmulKernel::SharedTiles, "tiled")]
        {
            set_kernel(kernel);
            let ms = median_ms(reps, || sync(a.matmul(&b)?))?;
            times.insert(format!("matmul_1024_{name}@{at}"), ms);
        }
    }
    Ok(())
}

/// One epoch of `train_mlp` at its defaults on random digits-shaped data; its milliseconds.
fn mlp_epoch(fleet: &Fleet) -> Result<f64> {
    let (rows, batch) = (1438, 64);
    let x: Vec<f32> = (0..rows * 64).map(|i| ((i * 7919) % 17) as f32 / 16.0).collect();
    let y: Vec<u32> = (0..rows).map(|i| (i % 10) as u32).collect();
    let mut dp = DataParallel::for_fleet(fleet, &Calibration::new(), 0, |store| {
        Mlp::new(store, &[64, 128, 10], Activation::Relu)
    })?;
    dp.set_max_grad_norm(None)?;
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2)?;
    let start = Instant::now();
    for first in (0..rows).step_by(batch) {
        let chunk: Range<usize> = first..(first + batch).min(rows);
        let xs = x[chunk.start * 64..chunk.end * 64].to_vec();
        let ys = y[chunk.clone()].to_vec();
        let loss = move |model: &Mlp, device: &DeviceRef, r: Range<usize>, ctx: &Ctx| {
            let input = Tensor::from_slice(&xs[r.start * 64..r.end * 64], [r.len(), 64], device)?;
            let logits = model.forward(&Var::constant(input), ctx)?;
            let opts = CrossEntropy { reduction: Reduction::None, ..CrossEntropy::default() };
            nn::cross_entropy_with(&logits, &ys[r], &opts)
        };
        dp.step(chunk.len(), loss, &mut opt)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// `train_charlm`'s step at its defaults: the median of 20 steps after 3.
fn charlm(fleet: &Fleet) -> Result<f64> {
    let members = fleet.devices();
    let devices: Vec<&dyn Device> = members.iter().map(|d| &**d).collect();
    let profiles = Calibration::new().load_or_measure_all(&devices, false)?;
    let pairs = members.iter().cloned().zip(profiles).collect();
    let row = train::steps(pairs, train::SHAPES[0], 3, 20)?;
    Ok(row["ms_per_step"].as_f64().unwrap_or(f64::NAN))
}
