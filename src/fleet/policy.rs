//! The rules the fleet follows with a failing device, the same for every scheduler (the
//! planner's split ops and data-parallel steps).

use std::time::Duration;

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
}
