//! What the fleet did about a failing device, as every scheduler on it reports it.

use std::fmt;

/// One thing the fleet did about a failing device. Each is also a `tracing` event.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetEvent {
    /// A share of work failed and runs again on the same device.
    Retried { device: String, attempt: u32, error: String },
    /// The device left the fleet; its share of the work was re-planned over the others.
    Evicted { device: String, reason: String },
    /// An evicted device answered a probe and takes shares again.
    Readmitted { device: String },
    /// A device joined the fleet.
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
