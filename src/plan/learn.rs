//! Learning from measured runs: a correction factor per device and op class (and one per
//! device for its host link) that scales the calibrated model, so a throttled or
//! mis-calibrated device gets a re-fitted share on the next calls.

use std::collections::HashMap;

use manychips_api::OpClass;

pub use crate::fleet::LEARNING_RATE;
use crate::fleet::follow;

/// Measurements shorter than this are mostly launch noise and teach nothing.
const MIN_SIGNAL_S: f64 = 20e-6;

/// Learned factors: measured / modelled time, 1 where nothing was measured yet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Corrections {
    // Keyed by label alone so that looking one up (for every device, every candidate share,
    // every op planned) borrows a `&str` instead of building a key.
    devices: HashMap<String, Factors>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Factors {
    compute: [f64; 4],
    link: f64,
}

impl Default for Factors {
    fn default() -> Factors {
        Factors { compute: [1.0; 4], link: 1.0 }
    }
}

fn slot(class: OpClass) -> usize {
    match class {
        OpClass::Matmul => 0,
        OpClass::Elementwise => 1,
        OpClass::Reduction => 2,
        OpClass::DataMovement => 3,
    }
}

impl Corrections {
    /// Factor on the modelled kernel time of `class` ops on `device`.
    pub fn compute(&self, device: &str, class: OpClass) -> f64 {
        self.devices.get(device).map_or(1.0, |f| f.compute[slot(class)])
    }

    /// Factor on the modelled transfer time to and from `device`.
    pub fn link(&self, device: &str) -> f64 {
        self.devices.get(device).map_or(1.0, |f| f.link)
    }

    /// Feeds one kernel measurement: `measured` seconds where the raw model said `modelled`.
    pub fn observe_compute(&mut self, device: &str, class: OpClass, modelled: f64, measured: f64) {
        if let Some(sample) = sample(modelled, measured) {
            let entry =
                &mut self.devices.entry(device.to_string()).or_default().compute[slot(class)];
            *entry = follow(Some(*entry), sample);
        }
    }

    /// Feeds one transfer measurement (inputs in plus result out).
    pub fn observe_link(&mut self, device: &str, modelled: f64, measured: f64) {
        if let Some(sample) = sample(modelled, measured) {
            let entry = &mut self.devices.entry(device.to_string()).or_default().link;
            *entry = follow(Some(*entry), sample);
        }
    }

    /// Forgets what was learned about `device` (it was replaced, or re-calibrated).
    pub fn forget(&mut self, device: &str) {
        self.devices.remove(device);
    }
}

fn sample(modelled: f64, measured: f64) -> Option<f64> {
    let usable = modelled.is_finite() && measured.is_finite() && modelled > 0.0;
    (usable && measured.max(modelled) >= MIN_SIGNAL_S).then(|| measured / modelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_to_twice_as_slow_is_followed_within_three_measurements() {
        let mut c = Corrections::default();
        assert_eq!(c.compute("sim:0", OpClass::Matmul), 1.0);
        for _ in 0..3 {
            c.observe_compute("sim:0", OpClass::Matmul, 0.010, 0.020);
        }
        let f = c.compute("sim:0", OpClass::Matmul);
        assert!((f - 2.0).abs() < 0.06, "{f}");
        assert_eq!(c.compute("sim:0", OpClass::Elementwise), 1.0, "classes learn apart");
        assert_eq!(c.compute("sim:1", OpClass::Matmul), 1.0, "devices learn apart");
    }

    #[test]
    fn noise_and_outliers_are_bounded() {
        let mut c = Corrections::default();
        c.observe_compute("d", OpClass::Matmul, 1e-7, 1e-6);
        assert_eq!(c.compute("d", OpClass::Matmul), 1.0, "below the signal floor");
        c.observe_link("d", 0.01, 1e6);
        assert!(c.link("d") <= 1.0 + LEARNING_RATE * 7.0 + 1e-9);
        c.observe_link("d", 0.0, 1.0);
        c.observe_link("d", f64::NAN, 1.0);
        c.forget("d");
        assert_eq!(c.link("d"), 1.0);
    }
}
