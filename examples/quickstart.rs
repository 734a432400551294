//! Finds every device (one per physical chip; `MANYCHIPS_DEVICES` selects), prints them, and
//! runs a matmul and a softmax on each, checked against the CPU device. Then it hands a
//! larger matmul to the planner, which spreads it over the fleet where that pays, and
//! prints the plan.
//!
//!     cargo run --release --example quickstart

use std::process::ExitCode;
use std::time::Instant;

use manychips::plan::{Calibration, Planner};
use manychips::{DType, Fleet, Result, Tensor};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some device disagreed with the CPU reference");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    // One device per physical chip, as MANYCHIPS_DEVICES selects (unset: all).
    let fleet = Fleet::discover()?;
    println!("{fleet}");
    let devices = fleet.devices().to_vec();
    let reference = fleet.cpu();
    let (n, rows, cols) = (512, 64, 1000);
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, reference)?;
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, reference)?;
    let logits = Tensor::randn(0.0, 3.0, [rows, cols], DType::F32, 3, reference)?;
    let want_mm = a.matmul(&b)?.to_vec::<f32>()?;
    let want_sm = logits.softmax(1)?.to_vec::<f32>()?;

    println!(
        "\n{:<8} {:>6} {:>12} {:>10} {:>12} {:>10}  result",
        "device", "dtype", "matmul", "GFLOP/s", "max|err|", "softmax"
    );
    let mut all_ok = true;
    for device in &devices {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            if !device.info().supports(dtype) {
                println!(
                    "{:<8} {:>6}  skipped: the device does not offer {dtype}",
                    device.info().label(),
                    dtype
                );
                continue;
            }
            let (a, b) = (a.to_device(device)?.cast(dtype)?, b.to_device(device)?.cast(dtype)?);
            let logits = logits.to_device(device)?.cast(dtype)?;
            a.matmul(&b)?.to_f64_vec()?; // warm-up
            let start = Instant::now();
            let got_mm = a.matmul(&b)?.to_f64_vec()?;
            let secs = start.elapsed().as_secs_f64();
            let got_sm = logits.softmax(1)?.to_f64_vec()?;
            let mm_err = max_rel_err(&got_mm, &want_mm);
            let sm_err = max_abs_err(&got_sm, &want_sm);
            // f32 is checked tightly; half precisions to their ~3 (f16) or ~2 (bf16) digits.
            let tol = match dtype {
                DType::F32 => 1e-4,
                DType::F16 => 2e-2,
                _ => 1e-1,
            };
            let ok = mm_err < tol && sm_err < tol;
            all_ok &= ok;
            println!(
                "{:<8} {:>6} {:>10.2}ms {:>10.1} {:>12.2e} {:>10.2e}  {}",
                device.info().label(),
                dtype,
                secs * 1e3,
                2.0 * (n * n * n) as f64 / secs / 1e9,
                mm_err,
                sm_err,
                if ok { "ok" } else { "MISMATCH" }
            );
        }
    }

    // The planner calibrates every device (a few seconds, then cached), prices the matmul on
    // each, and splits it where the shares finish sooner than the best device alone.
    let mut planner = Planner::for_fleet(&fleet, &Calibration::new())?;
    let n = 1024;
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 4, reference)?;
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 5, reference)?;
    let want = a.matmul(&b)?.to_vec::<f32>()?;
    let got = planner.matmul(&a, &b)?.to_f64_vec()?;
    let err = max_rel_err(&got, &want);
    if let Some(plan) = planner.last_plan() {
        println!("\n{}", plan.explain());
    }
    println!("planned matmul max|err| {err:.2e}: {}", if err < 1e-4 { "ok" } else { "MISMATCH" });
    Ok(all_ok && err < 1e-4)
}

/// Largest error relative to the largest reference magnitude (a matmul's natural scale).
fn max_rel_err(got: &[f64], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs() as f64)).max(1e-30);
    max_abs_err(got, want) / scale
}

fn max_abs_err(got: &[f64], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).fold(0.0, |m, (&g, &w)| m.max((g - w as f64).abs()))
}
