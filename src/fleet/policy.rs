//! The rules the fleet follows with a failing device, the same for every scheduler (the
//! planner's split ops and data-parallel steps).

use std::time::Duration;

use crate::{Error, ErrorKind};

/// What a scheduler does about work that failed on a device: the one rule every scheduler
/// follows ([`FaultPolicy::verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not the device's fault (a shape mistake, the caller's own error): returned as is.
    NotAFault,
    /// Run the same work on the same device again.
    Retry,
    /// The device leaves; its work is planned again over the others.
    Evict,
    /// The device holds what cannot be made again elsewhere (an op's operands or result, the
    /// master copy of the parameters): the work fails. Out of memory is reported as such
    /// (the chip is fine, the work was too big for it); anything else as the device lost.
    Fail,
}

/// When a device is retried, given up on, or evicted.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPolicy {
    /// A share that fails with a device fault other than `DeviceLost` or a missed deadline
    /// is run again on the same device this many times before the device is evicted.
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

impl FaultPolicy {
    /// How long a share predicted to take `predicted_s` seconds may run before its device is
    /// presumed hung: `watchdog_factor` × the prediction, at least `watchdog_min` (an
    /// unpriced device, predicting infinity, gets the minimum).
    pub fn deadline(&self, predicted_s: f64) -> Duration {
        let secs = predicted_s * self.watchdog_factor;
        let secs = if secs.is_finite() { secs.clamp(0.0, 3600.0) } else { 0.0 };
        self.watchdog_min.max(Duration::from_secs_f64(secs))
    }

    /// The rule for work that failed with `err` on a device, `attempt` being how often it
    /// failed there in this unit of work (this failure included): a transient fault is
    /// retried `max_retries` times; a lost device, a missed deadline (`Timeout`) or a fault
    /// past the retries evicts the device, or fails the work where the device `holds_state`.
    pub fn verdict(&self, err: &Error, attempt: u32, holds_state: bool) -> Verdict {
        if !err.is_device_fault() {
            return Verdict::NotAFault;
        }
        let transient = !matches!(err.kind(), ErrorKind::DeviceLost | ErrorKind::Timeout);
        if transient && attempt <= self.max_retries {
            Verdict::Retry
        } else if holds_state {
            Verdict::Fail
        } else {
            Verdict::Evict
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault() -> Error {
        Error::Fault { op: "matmul".into(), device: "sim:0".into(), detail: "ecc".into() }
    }

    #[test]
    fn transient_faults_are_retried_then_evict_or_fail() {
        let policy = FaultPolicy { max_retries: 2, ..FaultPolicy::default() };
        assert_eq!(policy.verdict(&fault(), 1, false), Verdict::Retry);
        assert_eq!(policy.verdict(&fault(), 2, true), Verdict::Retry);
        assert_eq!(policy.verdict(&fault(), 3, false), Verdict::Evict);
        assert_eq!(policy.verdict(&fault(), 3, true), Verdict::Fail);
        let none = FaultPolicy { max_retries: 0, ..FaultPolicy::default() };
        assert_eq!(none.verdict(&fault(), 1, false), Verdict::Evict);
    }

    #[test]
    fn lost_devices_and_missed_deadlines_are_never_retried() {
        let policy = FaultPolicy::default();
        let lost = Error::DeviceLost { device: "sim:0".into(), detail: "gone".into() };
        let late =
            Error::Timeout { op: "matmul".into(), device: "sim:0".into(), detail: "hung".into() };
        for err in [lost, late] {
            assert_eq!(policy.verdict(&err, 1, false), Verdict::Evict, "{err}");
            assert_eq!(policy.verdict(&err, 1, true), Verdict::Fail, "{err}");
        }
    }

    #[test]
    fn errors_that_are_not_the_device_s_are_returned() {
        let shape = Error::InvalidArgument {
            op: "add".into(),
            device: "sim:0".into(),
            detail: "[2] vs [3]".into(),
        };
        assert_eq!(FaultPolicy::default().verdict(&shape, 1, false), Verdict::NotAFault);
    }
}
