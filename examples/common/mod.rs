//! What the training examples share: choosing devices, the progress bar, the metrics CSV
//! and the loss/accuracy plot. Not part of the library: a user's own loop would do these
//! its own way.

#![allow(dead_code)] // each example uses its own subset

mod checkpointing;
mod job;
pub use checkpointing::{CheckpointArgs, Checkpointing};
pub use job::Job;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use manychips::plan::{Calibration, DeviceProfile};
use manychips::{DeviceRef, Fleet, Result};
use plotters::prelude::*;

/// The fleet's devices (`selector` like `MANYCHIPS_DEVICES`, e.g. `cpu` or `cpu,vulkan:0`;
/// `None` uses the variable, unset means all) with their calibrated profiles.
pub fn devices(selector: Option<&str>) -> Result<Vec<(DeviceRef, DeviceProfile)>> {
    let fleet = match selector {
        Some(s) => Fleet::from_devices(manychips::devices()?, Some(s))?,
        None => Fleet::discover()?,
    };
    let devices = fleet.devices().to_vec();
    let refs: Vec<&dyn manychips::Device> = devices.iter().map(|d| &**d).collect();
    let profiles = Calibration::new().load_or_measure_all(&refs, false)?;
    Ok(devices.into_iter().zip(profiles).collect())
}

pub fn progress(steps: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One row of the metrics CSV.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub step: u64,
    pub epoch: usize,
    pub samples: usize,
    pub loss: f64,
    pub lr: f64,
    pub step_ms: f64,
    pub samples_per_s: f64,
    /// Test metric (accuracy or loss) when one was measured after this step.
    pub eval: Option<f64>,
    pub shares: String,
}

pub fn write_csv(path: &Path, eval_name: &str, rows: &[Row]) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "step,epoch,loss,lr,step_ms,samples_per_s,{eval_name},shares")?;
    for r in rows {
        let eval = r.eval.map(|v| format!("{v:.5}")).unwrap_or_default();
        writeln!(
            out,
            "{},{},{:.6},{:.3e},{:.3},{:.1},{eval},\"{}\"",
            r.step, r.epoch, r.loss, r.lr, r.step_ms, r.samples_per_s, r.shares
        )?;
    }
    out.flush()
}

static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSansMono.ttf");

/// Training loss per step (left) and the evaluation metric where measured (right).
pub fn plot(
    path: &Path,
    title: &str,
    eval_name: &str,
    rows: &[Row],
) -> std::result::Result<(), String> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the bundled font did not load".to_string())?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);

    let steps = rows.len().max(1) as f64;
    let max_loss = rows.iter().map(|r| r.loss).filter(|l| l.is_finite()).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..steps, 0.0..max_loss.max(1e-3) * 1.05)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("training loss").draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(rows.iter().map(|r| (r.step as f64, r.loss)), &BLUE))
        .map_err(|e| err(&e))?;

    let evals: Vec<(f64, f64)> =
        rows.iter().filter_map(|r| r.eval.map(|v| (r.step as f64, v))).collect();
    let (lo, hi) =
        evals.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, v)| (lo.min(v), hi.max(v)));
    let (lo, hi) = if evals.is_empty() {
        (0.0, 1.0)
    } else {
        (lo - 0.02 * (hi - lo).max(0.1), hi + 0.02 * (hi - lo).max(0.1))
    };
    let mut chart = ChartBuilder::on(&right)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..steps, lo..hi)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc(eval_name).draw().map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(evals.iter().copied(), &RED)).map_err(|e| err(&e))?;
    chart
        .draw_series(evals.iter().map(|&p| Circle::new(p, 3, RED.filled())))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
