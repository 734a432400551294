//! Timelines of planned runs in the Chrome trace event format, which ui.perfetto.dev and
//! chrome://tracing open: one track per device, a slice per upload, kernel and download.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::execute::Timing;
use super::planned::Share;
use crate::fleet::FleetEvent;

/// One slice on a device's track.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The device's label: its track.
    pub device: String,
    /// `upload`, `kernel` or `download` for a planned op; `share` for a data-parallel
    /// share; `retried`, `evicted`, `readmitted` or `joined` for what the fleet did about a
    /// device (instants: zero duration).
    pub stage: &'static str,
    /// The op and the share's entries, shown on the slice.
    pub name: String,
    /// Since the planner was created.
    pub start: Duration,
    pub duration: Duration,
}

/// The recorded slices of every run since [`Planner::start_trace`](super::Planner::start_trace).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub events: Vec<Event>,
}

impl Trace {
    /// A slice (or, with zero `duration`, an instant) on `device`'s track.
    pub fn push(
        &mut self,
        device: &str,
        stage: &'static str,
        name: String,
        start: Duration,
        duration: Duration,
    ) {
        self.events.push(Event { device: device.to_string(), stage, name, start, duration });
    }

    /// What the fleet did (a retry, an eviction, ...) as an instant at `at` on the device's
    /// track, named by the kind of event: what every scheduler draws for its events.
    pub fn push_fleet_event(&mut self, event: &FleetEvent, at: Duration) {
        let (device, stage) = match event {
            FleetEvent::Retried { device, .. } => (device, "retried"),
            FleetEvent::Evicted { device, .. } => (device, "evicted"),
            FleetEvent::Readmitted { device } => (device, "readmitted"),
            FleetEvent::Joined { device } => (device, "joined"),
        };
        self.push(device, stage, event.to_string(), at, Duration::ZERO);
    }

    pub(crate) fn record_share(
        &mut self,
        op: &str,
        share: &Share,
        timing: &Timing,
        offset: Duration,
    ) {
        let name = format!("{op} [{}..{}]", share.start, share.start + share.len);
        for (stage, (start, duration)) in
            [("upload", timing.upload), ("kernel", timing.compute), ("download", timing.download)]
        {
            // Stages a share did not need (inputs already there) leave no slice.
            if duration > Duration::ZERO
                && (stage == "kernel" || duration > Duration::from_nanos(500))
            {
                self.events.push(Event {
                    device: share.device.clone(),
                    stage,
                    name: name.clone(),
                    start: offset + start,
                    duration,
                });
            }
        }
    }

    /// The trace as Chrome trace event JSON: complete events (`ph: X`) in microseconds, one
    /// thread per device, named by metadata events.
    pub fn to_json(&self) -> String {
        let mut tracks: Vec<&str> = Vec::new();
        for e in &self.events {
            if !tracks.contains(&e.device.as_str()) {
                tracks.push(&e.device);
            }
        }
        let tid = |device: &str| tracks.iter().position(|t| *t == device).unwrap_or(0) + 1;
        let mut events: Vec<Value> = vec![json!({
            "ph": "M", "pid": 1, "name": "process_name", "args": { "name": "manychips planner" }
        })];
        for (i, device) in tracks.iter().enumerate() {
            events.push(json!({
                "ph": "M", "pid": 1, "tid": i + 1, "name": "thread_name", "args": { "name": device }
            }));
        }
        for e in &self.events {
            if e.duration.is_zero() {
                events.push(json!({
                    "ph": "i",
                    "s": "t",
                    "pid": 1,
                    "tid": tid(&e.device),
                    "name": e.name,
                    "cat": e.stage,
                    "ts": e.start.as_secs_f64() * 1e6,
                }));
                continue;
            }
            events.push(json!({
                "ph": "X",
                "pid": 1,
                "tid": tid(&e.device),
                "name": e.name,
                "cat": e.stage,
                "ts": e.start.as_secs_f64() * 1e6,
                "dur": e.duration.as_secs_f64() * 1e6,
                "args": { "stage": e.stage },
            }));
        }
        json!({ "traceEvents": events, "displayTimeUnit": "ms" }).to_string()
    }

    /// Writes [`Trace::to_json`] to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_one_named_track_per_device_and_complete_events() {
        let event = |device: &str, stage, start_us| Event {
            device: device.into(),
            stage,
            name: "matmul".into(),
            start: Duration::from_micros(start_us),
            duration: Duration::from_micros(5),
        };
        let trace = Trace {
            events: vec![
                event("cpu:0", "kernel", 0),
                event("sim:1", "upload", 2),
                event("sim:1", "kernel", 9),
            ],
        };
        let v: Value = serde_json::from_str(&trace.to_json()).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cpu:0", "sim:1"]);
        let slices: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 3);
        assert_eq!((slices[2]["tid"].as_u64(), slices[2]["ts"].as_f64()), (Some(2), Some(9.0)));
        assert_eq!(slices[1]["cat"], "upload");
    }
}
