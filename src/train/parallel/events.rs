//! What the fleet did about failures during a step, and the rules it followed.

use std::fmt;
use std::time::Duration;

/// When a device is retried, given up on, or evicted.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    /// A share that fails with a device fault other than `DeviceLost` is run again on the
    /// same device this many times before the device is evicted.
    pub max_retries: u32,
    /// A share gets `watchdog_factor` × its predicted time, but at least `watchdog_min`,
    /// before its device is presumed hung and evicted.
    pub watchdog_factor: f64,
    pub watchdog_min: Duration,
    /// A device whose shares take more than `slow_factor` × their prediction
    /// `slow_strikes` steps in a row is evicted as grossly slow.
    pub slow_factor: f64,
    pub slow_strikes: u32,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        FaultPolicy {
            max_retries: 2,
            watchdog_factor: 20.0,
            watchdog_min: Duration::from_secs(5),
            slow_factor: 4.0,
            slow_strikes: 3,
        }
    }
}

/// One thing the fleet did about a failing device. Each is also a `tracing` event.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetEvent {
    /// A share failed and runs again on the same device.
    Retried { device: String, attempt: u32, error: String },
    /// The device left the fleet; its rows of this step were re-planned over the others.
    Evicted { device: String, reason: String },
    /// An evicted device answered a probe and takes shares again.
    Readmitted { device: String },
    /// A device joined the running job.
    Joined { device: String },
}

impl fmt::Display for FleetEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetEvent::Retried { device, attempt, error } => {
                write!(f, "{device}: retry {attempt} after: {error}")
            }
            FleetEvent::Evicted { device, reason } => write!(f, "{device}: evicted: {reason}"),
            FleetEvent::Readmitted { device } => write!(f, "{device}: re-admitted"),
            FleetEvent::Joined { device } => write!(f, "{device}: joined"),
        }
    }
}
