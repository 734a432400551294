//! What the planner decided for one op, and what happened when it ran: [`Plan`], its
//! [`Share`]s, and the [`Plan::explain`] table.

use std::fmt::Write as _;
use std::time::Duration;

use manychips_api::OpClass;

use super::price::secs;
use crate::fleet::FleetEvent;

/// Time of each stage of one device's share: inputs in, the kernel, the result out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    pub upload: Duration,
    pub compute: Duration,
    pub download: Duration,
}

impl Phases {
    pub fn total(&self) -> Duration {
        self.upload.saturating_add(self.compute).saturating_add(self.download)
    }

    pub(crate) fn from_secs(upload: f64, compute: f64, download: f64) -> Phases {
        Phases { upload: secs(upload), compute: secs(compute), download: secs(download) }
    }
}

/// One device's part of a plan: output entries `start..start + len` along the plan's axis
/// (the whole op when the plan has no axis).
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    /// The device's label (`cpu:0`).
    pub device: String,
    /// Index of the device among the planner's members.
    pub member: usize,
    pub start: usize,
    pub len: usize,
    pub predicted: Phases,
    /// Filled in once the plan has run.
    pub measured: Option<Phases>,
    /// The learned corrections the prediction used (compute, link), so a measurement can be
    /// turned back into a correction of the raw model.
    pub(crate) factors: (f64, f64),
}

/// How one op is spread over the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The op's name and output (`matmul -> f32[1024, 1024]`).
    pub op: String,
    pub class: OpClass,
    /// The output axis the op is cut along; `None` when one device runs it whole.
    pub axis: Option<usize>,
    /// Length of that axis (1 for a whole op).
    pub units: usize,
    pub shares: Vec<Share>,
    /// Predicted time until the last share is done.
    pub predicted: Duration,
    /// The best single device and its predicted time for the whole op: what a split must beat.
    pub best_single: (String, Duration),
    /// Wall time of the run, once it ran.
    pub measured: Option<Duration>,
    /// Time spent choosing the shares.
    pub planning: Duration,
    /// What the fleet did while the op ran: retries and evictions, in order (each also an
    /// instant on the device's track of the planner's trace).
    pub events: Vec<FleetEvent>,
}

impl Plan {
    /// True when more than one device takes part.
    pub fn is_split(&self) -> bool {
        self.shares.len() > 1
    }

    /// The share of the device labelled `label`, if it has one.
    pub fn share_of(&self, label: &str) -> Option<&Share> {
        self.shares.iter().find(|s| s.device == label)
    }

    /// A table: one row per device with its share and its predicted and measured time, then
    /// the makespan against the best single device.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let how = match self.axis {
            Some(axis) => format!("split along axis {axis} ({} entries)", self.units),
            None => "whole on one device".to_string(),
        };
        let _ = writeln!(out, "{}: {how}, planned in {}", self.op, ms(self.planning));
        let _ = writeln!(
            out,
            "{:<12} {:>14} {:>7}  {:>10} {:>10} {:>10} {:>10}  {:>10}",
            "device", "entries", "share", "in", "kernel", "out", "predicted", "measured"
        );
        for s in &self.shares {
            let _ = writeln!(
                out,
                "{:<12} {:>14} {:>6.1}%  {:>10} {:>10} {:>10} {:>10}  {:>10}",
                s.device,
                format!("{}..{}", s.start, s.start + s.len),
                100.0 * s.len as f64 / self.units.max(1) as f64,
                ms(s.predicted.upload),
                ms(s.predicted.compute),
                ms(s.predicted.download),
                ms(s.predicted.total()),
                s.measured.map_or("-".to_string(), |m| ms(m.total())),
            );
        }
        let _ = writeln!(
            out,
            "makespan: predicted {}, measured {}; best single device {} predicted {}",
            ms(self.predicted),
            self.measured.map_or("-".to_string(), ms),
            self.best_single.0,
            ms(self.best_single.1),
        );
        out
    }
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX { "never".into() } else { format!("{:.3} ms", d.as_secs_f64() * 1e3) }
}
