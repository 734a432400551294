//! What calibration measured about one device: the figures the pricing model reads.

use manychips_api::{DType, DeviceInfo, OpClass};
use serde::{Deserialize, Serialize};

/// One measured matmul rate: an `n`×`n`×`n` product of `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatmulPoint {
    /// The dtype's name as [`DType`]'s `Display` writes it (`f32`, `f16`, `bf16`).
    pub dtype: String,
    pub n: usize,
    /// Compute rate with the fixed per-op latency taken out, FLOP/s.
    pub flops_per_s: f64,
}

impl MatmulPoint {
    /// Flops of the measured product, the x coordinate rates are interpolated along.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n as f64).powi(3)
    }
}

/// The measured figures of one device, and the key fields that say which device and driver
/// they belong to (a cached profile is only reused for the same chip and driver).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub backend: String,
    pub name: String,
    /// The device's [`Identity`](manychips_api::Identity) as its `Display` writes it.
    pub identity: String,
    pub driver_version: String,
    /// When the figures were measured, unix seconds.
    pub measured_at: u64,
    /// Matmul rates, measured alone, per dtype and size (ascending `n` within a dtype).
    pub matmul: Vec<MatmulPoint>,
    /// The f32 matmul rate this device kept up while every other calibrated device ran
    /// matmuls at the same time; devices sharing hardware (the CPU backend and lavapipe)
    /// each get only part of it. `None` where it was not measured.
    pub matmul_rate_concurrent: Option<f64>,
    /// Streaming bandwidth of device memory, bytes/s (input and output bytes of a large add).
    pub bytes_per_s: f64,
    /// Elementwise rate of the same add, FLOP/s: the rate of every non-matmul class.
    pub elementwise_flops_per_s: f64,
    /// Fixed cost of one op: run plus synchronize of a one-element op, seconds.
    pub latency_s: f64,
    /// Host→device bandwidth, bytes/s.
    pub host_to_device_bytes_per_s: f64,
    /// Device→host bandwidth, bytes/s.
    pub device_to_host_bytes_per_s: f64,
    /// Bandwidth of a copy to a device this one reaches without the host
    /// ([`Device::reaches`](manychips_api::Device::reaches)), bytes/s: a simulated chip's
    /// peer link. `None` where it was not measured: such copies are priced as through the
    /// host, a bound from above.
    #[serde(default)]
    pub peer_bytes_per_s: Option<f64>,
    /// How unsteady the device was while it was measured: the largest median ÷ fastest
    /// time among the matmul and bandwidth measurements (1 is perfectly steady). Other work
    /// on the machine makes it large; such a profile is not cached (see
    /// [`Settings::max_noise`](super::Settings::max_noise)).
    #[serde(default = "steady")]
    pub noise: f64,
}

fn steady() -> f64 {
    1.0
}

impl DeviceProfile {
    /// An empty profile carrying `info`'s key fields; calibration fills in the figures.
    pub fn for_device(info: &DeviceInfo) -> DeviceProfile {
        DeviceProfile {
            backend: info.backend.clone(),
            name: info.name.clone(),
            identity: info.identity.to_string(),
            driver_version: info.driver_version.clone(),
            measured_at: 0,
            matmul: Vec::new(),
            matmul_rate_concurrent: None,
            bytes_per_s: 0.0,
            elementwise_flops_per_s: 0.0,
            latency_s: 0.0,
            host_to_device_bytes_per_s: 0.0,
            device_to_host_bytes_per_s: 0.0,
            peer_bytes_per_s: None,
            noise: 1.0,
        }
    }

    /// The figures a simulated chip is built to deliver, as if calibration had measured them
    /// exactly: lets the planner price fleets of [`SimDevice`](crate::sim::SimDevice)s
    /// without spending wall-clock time on them.
    pub fn simulated(info: &DeviceInfo, sim: &manychips_sim::SimProfile) -> DeviceProfile {
        let rates = sim.flops_per_s;
        let latency = sim.latency.as_secs_f64();
        DeviceProfile {
            matmul: [DType::F32, DType::F16, DType::BF16]
                .iter()
                .map(|d| MatmulPoint { dtype: d.to_string(), n: 1024, flops_per_s: rates.matmul })
                .collect(),
            matmul_rate_concurrent: Some(rates.matmul),
            bytes_per_s: sim.bytes_per_s,
            elementwise_flops_per_s: rates.elementwise,
            latency_s: latency,
            host_to_device_bytes_per_s: sim.link_bytes_per_s,
            device_to_host_bytes_per_s: sim.link_bytes_per_s,
            peer_bytes_per_s: sim.peer_link_bytes_per_s,
            measured_at: 0,
            ..DeviceProfile::for_device(info)
        }
    }

    /// True when this profile was measured on the chip and driver `info` describes.
    pub fn matches(&self, info: &DeviceInfo) -> bool {
        self.backend == info.backend
            && self.name == info.name
            && self.identity == info.identity.to_string()
            && self.driver_version == info.driver_version
    }

    /// Matmul rate for a product of `flops` flops in `dtype`: interpolated linearly in
    /// log(flops) between the measured sizes, and flat beyond them (small products are
    /// slower per flop, but the latency term covers most of that). Falls back to the f32
    /// figures for a dtype that was not measured.
    pub fn matmul_rate(&self, dtype: DType, flops: f64) -> f64 {
        // Called for every device and candidate share while planning: no allocation here.
        let wanted = dtype.name();
        let name = if self.matmul.iter().any(|p| p.dtype == wanted) { wanted } else { "f32" };
        let points = || self.matmul.iter().filter(move |p| p.dtype == name);
        let below = points().filter(|p| p.flops() <= flops).max_by_key(|p| p.n);
        let above = points().filter(|p| p.flops() >= flops).min_by_key(|p| p.n);
        match (below, above) {
            (None, None) => 0.0,
            (Some(p), None) | (None, Some(p)) => p.flops_per_s,
            (Some(a), Some(b)) if a.n == b.n => a.flops_per_s,
            (Some(a), Some(b)) => {
                let t = (flops.ln() - a.flops().ln()) / (b.flops().ln() - a.flops().ln());
                a.flops_per_s + t * (b.flops_per_s - a.flops_per_s)
            }
        }
    }

    /// The largest measured f32 matmul rate alone: the headline figure.
    pub fn peak_matmul_rate(&self) -> f64 {
        self.matmul.iter().filter(|p| p.dtype == "f32").map(|p| p.flops_per_s).fold(0.0, f64::max)
    }

    /// Compute rate for an op of `class` and `dtype` doing `flops` flops, FLOP/s.
    pub fn rate(&self, class: OpClass, dtype: DType, flops: f64) -> f64 {
        match class {
            OpClass::Matmul => self.matmul_rate(dtype, flops),
            OpClass::Elementwise | OpClass::Reduction | OpClass::DataMovement => {
                self.elementwise_flops_per_s
            }
        }
    }

    /// Why these figures should not be taken as the device's (a figure that is not a
    /// positive number, or measurements noisier than `max_noise`), or `None`.
    pub fn doubt(&self, max_noise: f64) -> Option<String> {
        let figures = [
            ("memory bandwidth", self.bytes_per_s),
            ("elementwise rate", self.elementwise_flops_per_s),
            ("latency", self.latency_s),
            ("host-to-device bandwidth", self.host_to_device_bytes_per_s),
            ("device-to-host bandwidth", self.device_to_host_bytes_per_s),
        ];
        let matmul = self.matmul.iter().map(|p| ("matmul rate", p.flops_per_s));
        if !self.matmul.iter().any(|p| p.dtype == "f32" && p.n > 0) {
            return Some("no f32 matmul rate".into());
        }
        if let Some((what, v)) =
            figures.into_iter().chain(matmul).find(|(_, v)| !(v.is_finite() && *v > 0.0))
        {
            return Some(format!("{what} {v} is not a positive figure"));
        }
        if let Some(v) = self.peer_bytes_per_s.filter(|v| !(v.is_finite() && *v > 0.0)) {
            return Some(format!("peer bandwidth {v} is not a positive figure"));
        }
        if let Some(v) = self.matmul_rate_concurrent.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Some(format!("concurrent matmul rate {v} is not a figure"));
        }
        if self.noise.is_nan() || self.noise > max_noise {
            return Some(format!(
                "measured on a busy machine: runs varied ×{:.2} (more than ×{max_noise})",
                self.noise
            ));
        }
        None
    }

    /// How long ago it was measured; `None` for figures that were never measured (a
    /// simulated chip's) or a clock that went back.
    pub fn age(&self) -> Option<std::time::Duration> {
        // Checked: the figure comes from a cache file anyone may have edited.
        let at = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(self.measured_at))
            .filter(|_| self.measured_at > 0)?;
        at.elapsed().ok()
    }

    /// The profile as the JSON the cache stores.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(text: &str) -> Result<DeviceProfile, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> DeviceProfile {
        let point = |dtype: &str, n, r| MatmulPoint { dtype: dtype.into(), n, flops_per_s: r };
        DeviceProfile {
            matmul: vec![point("f32", 512, 4e9), point("f32", 128, 1e9), point("f16", 512, 8e9)],
            elementwise_flops_per_s: 5e8,
            ..DeviceProfile::for_device(&manychips_api::DeviceInfo {
                id: manychips_api::DeviceId::fresh(),
                backend: "test".into(),
                ordinal: 0,
                name: "t".into(),
                vendor: "v".into(),
                driver_version: "1".into(),
                identity: Default::default(),
                memory_total: 0,
                dtypes: vec![DType::F32],
                peer_copy: false,
            })
        }
    }

    #[test]
    fn matmul_rate_is_flat_outside_and_log_interpolated_inside() {
        let p = profile();
        let f = |n: f64| 2.0 * n.powi(3);
        assert_eq!(p.matmul_rate(DType::F32, f(16.0)), 1e9);
        assert_eq!(p.matmul_rate(DType::F32, f(4096.0)), 4e9);
        // 256 is half way between 128 and 512 in log size, so in log flops too.
        assert!((p.matmul_rate(DType::F32, f(256.0)) - 2.5e9).abs() < 1.0);
        assert_eq!(p.matmul_rate(DType::F16, f(64.0)), 8e9);
        assert_eq!(p.matmul_rate(DType::BF16, f(512.0)), 4e9, "falls back to f32");
        assert_eq!(p.rate(OpClass::Elementwise, DType::F32, 1.0), 5e8);
        assert_eq!(p.peak_matmul_rate(), 4e9);
    }

    #[test]
    fn doubtful_figures_are_named() {
        let good = DeviceProfile {
            bytes_per_s: 1e10,
            latency_s: 1e-5,
            host_to_device_bytes_per_s: 1e9,
            device_to_host_bytes_per_s: 1e9,
            ..profile()
        };
        assert_eq!(good.doubt(1.5), None);
        let zero = DeviceProfile { bytes_per_s: 0.0, ..good.clone() };
        assert!(zero.doubt(1.5).unwrap().contains("memory bandwidth"));
        let nan = DeviceProfile { latency_s: f64::NAN, ..good.clone() };
        assert!(nan.doubt(1.5).unwrap().contains("latency"));
        let peer = DeviceProfile { peer_bytes_per_s: Some(-1.0), ..good.clone() };
        assert!(peer.doubt(1.5).unwrap().contains("peer bandwidth"));
        let busy = DeviceProfile { noise: 3.0, ..good.clone() };
        assert!(busy.doubt(1.5).unwrap().contains("busy"));
        assert_eq!(busy.doubt(f64::INFINITY), None);
        assert_eq!(good.age(), None, "never measured");
        let future = DeviceProfile { measured_at: u64::MAX, ..good.clone() };
        assert_eq!(future.age(), None, "an absurd time is no age, not a panic");
        let no_f32 = DeviceProfile { matmul: vec![], ..good };
        assert!(no_f32.doubt(1.5).unwrap().contains("f32 matmul"));
    }

    #[test]
    fn json_round_trips() {
        let p = profile();
        let text = p.to_json().unwrap();
        assert_eq!(DeviceProfile::from_json(&text).unwrap(), p);
        assert!(DeviceProfile::from_json("{\"backend\": 3").is_err());
        // A cache written before `noise` existed reads as steady.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("noise");
        assert_eq!(DeviceProfile::from_json(&old.to_string()).unwrap().noise, 1.0);
    }
}
