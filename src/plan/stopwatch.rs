//! Timing work on one device: by its own clock where it keeps one (a simulated chip's
//! virtual clock, which other work on the machine does not disturb), else the wall clock.

use std::time::{Duration, Instant};

use manychips_api::Device;

pub(crate) struct Stopwatch {
    wall: Instant,
    device: Option<Duration>,
}

impl Stopwatch {
    pub fn start(device: &dyn Device) -> Stopwatch {
        Stopwatch { wall: Instant::now(), device: device.virtual_time() }
    }

    /// Seconds since `start`, on the clock `start` chose.
    pub fn secs(&self, device: &dyn Device) -> f64 {
        match (self.device, device.virtual_time()) {
            (Some(then), Some(now)) => now.saturating_sub(then).as_secs_f64(),
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }
}
