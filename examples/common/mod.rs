//! What the training examples share: choosing devices, the progress bar, the metrics CSV
//! and the loss/accuracy plot. Not part of the library: a user's own loop would do these
//! its own way.

#![allow(dead_code, unused_imports)] // each example uses its own subset

mod checkpointing;
mod job;
mod metrics;
mod tempest;
pub use checkpointing::{CheckpointArgs, Checkpointing};
pub use job::Job;
pub use metrics::{Metrics, Row};
pub use tempest::{Corpus, generate, windows};

/// The examples allocate with mimalloc rather than the system's malloc. A training step
/// makes and drops many small objects (ops, views, autograd nodes) on the caller's thread
/// and the CPU worker frees some of them; glibc's malloc spent about a sixth of the digits
/// MLP's step there. A binary that links manychips picks its allocator the same way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use manychips::plan::{Calibration, DeviceProfile};
use manychips::{DeviceRef, Fleet, Result};
use plotters::prelude::*;

/// The fleet (`selector` like `MANYCHIPS_DEVICES`, e.g. `cpu` or `cpu,vulkan:0`; `None`
/// uses the variable, unset means all) and its devices with their calibrated profiles. A
/// job built from them shares the fleet's membership (`with_membership`), as anything else
/// scheduling on the fleet does.
pub fn devices(selector: Option<&str>) -> Result<(Fleet, Vec<(DeviceRef, DeviceProfile)>)> {
    let fleet = match selector {
        Some(s) => Fleet::discover_selected(Some(s))?,
        None => Fleet::discover()?,
    };
    let devices = fleet.devices();
    let refs: Vec<&dyn manychips::Device> = devices.iter().map(|d| &**d).collect();
    let profiles = Calibration::new().load_or_measure_all(&refs, false)?;
    Ok((fleet, devices.into_iter().zip(profiles).collect()))
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

    // Non-finite points (a diverged run) are left out: plotters cannot place them, and a
    // range built from them never ends.
    let steps = rows.iter().map(|r| r.step + 1).max().unwrap_or(1) as f64;
    let losses: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss.clamp(0.0, 1e30)))
        .collect();
    let max_loss = losses.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..steps, 0.0..max_loss.clamp(1e-3, 1e30) * 1.05)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("training loss").draw().map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(losses, &BLUE)).map_err(|e| err(&e))?;

    let evals: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            r.eval.filter(|v| v.is_finite()).map(|v| (r.step as f64, v.clamp(-1e30, 1e30)))
        })
        .collect();
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

/// A count argument within `range` (clap says which value and why when it is not).
pub fn count(range: std::ops::RangeInclusive<u64>) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(range)
}

/// `--lr`: a finite rate in (0, 10]: NaN, infinities, 0, negative or absurd rates would
/// train to garbage and still exit 0.
pub fn learning_rate(text: &str) -> Result<f64, String> {
    let lr: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if lr.is_finite() && lr > 0.0 && lr <= 10.0 {
        Ok(lr)
    } else {
        Err(format!("{lr} is not a learning rate in (0, 10]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_of_non_finite_or_huge_values_ends() {
        // A diverged run's NaN losses once made the plot loop for ever.
        let dir = std::env::temp_dir().join(format!("manychips-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: [(f64, f64, f64); 3] =
            [(f64::NAN, f64::NAN, f64::NAN), (f64::INFINITY, 1e308, -1e308), (1e308, 0.5, 0.5)];
        for (k, (loss, even, odd)) in cases.into_iter().enumerate() {
            let rows: Vec<Row> = (0..4)
                .map(|i| Row {
                    step: i,
                    loss,
                    eval: Some(if i % 2 == 0 { even } else { odd }),
                    ..Row::default()
                })
                .collect();
            let path = dir.join(format!("curves-{k}.png"));
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(plot(&path, "t", "e", &rows));
            });
            let done = rx.recv_timeout(Duration::from_secs(60)).expect("the plot never ended");
            done.unwrap();
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
