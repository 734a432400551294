//! What a simulated chip is like, and what each call costs on it.

use std::time::Duration;

use manychips_api::{Error, Op, OpClass, Result};

/// Sustained floating-point rate per op class, in FLOP/s.
///
/// Kept per class because real chips differ most there: a GPU's matmul rate is often 10× its
/// rate on elementwise ops, which are bound by memory bandwidth anyway.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlopRates {
    pub matmul: f64,
    pub elementwise: f64,
    pub reduction: f64,
    pub data_movement: f64,
}

impl FlopRates {
    /// The same rate for every class.
    pub fn uniform(flops_per_s: f64) -> FlopRates {
        FlopRates {
            matmul: flops_per_s,
            elementwise: flops_per_s,
            reduction: flops_per_s,
            data_movement: flops_per_s,
        }
    }

    pub fn rate(&self, class: OpClass) -> f64 {
        match class {
            OpClass::Matmul => self.matmul,
            OpClass::Elementwise => self.elementwise,
            OpClass::Reduction => self.reduction,
            OpClass::DataMovement => self.data_movement,
        }
    }

    fn all(&self) -> [(OpClass, f64); 4] {
        [
            (OpClass::Matmul, self.matmul),
            (OpClass::Elementwise, self.elementwise),
            (OpClass::Reduction, self.reduction),
            (OpClass::DataMovement, self.data_movement),
        ]
    }
}

/// A simulated chip: its name and memory, and the figures its calls are timed by.
///
/// An op costs `latency + max(flops / rate(class), bytes / bytes_per_s)` (the same model the
/// planner prices real devices with); a host transfer `latency + bytes / link_bytes_per_s`.
#[derive(Clone, Debug, PartialEq)]
pub struct SimProfile {
    pub name: String,
    pub vendor: String,
    pub flops_per_s: FlopRates,
    /// Device memory bandwidth, bytes per second.
    pub bytes_per_s: f64,
    /// Fixed cost of every op and transfer (launch, driver, synchronization).
    pub latency: Duration,
    /// Host↔device bandwidth, bytes per second.
    pub link_bytes_per_s: f64,
    /// Bandwidth of a link to other chips (NVLink; a network card with GPU-direct), bytes
    /// per second. Two chips that both have one, computing on the same inner device, copy
    /// device to device over it ([`Device::copy_to_peer`](manychips_api::Device::copy_to_peer))
    /// at the slower of the two rates. `None`: copies to other chips go through the host.
    pub peer_link_bytes_per_s: Option<f64>,
    /// Device memory in bytes; allocations beyond it fail with `OutOfMemory`.
    pub memory: u64,
}

impl SimProfile {
    /// A mid-range discrete GPU: 10 TFLOP/s, 500 GB/s, 10 µs per launch, a 16 GB/s link and
    /// 8 GiB. Change what a test cares about with the `with_*` methods.
    pub fn new(name: impl Into<String>) -> SimProfile {
        SimProfile {
            name: name.into(),
            vendor: "simulated".into(),
            flops_per_s: FlopRates::uniform(10e12),
            bytes_per_s: 500e9,
            latency: Duration::from_micros(10),
            link_bytes_per_s: 16e9,
            peer_link_bytes_per_s: None,
            memory: 8 << 30,
        }
    }

    /// One rate for every op class.
    pub fn with_flops(mut self, flops_per_s: f64) -> SimProfile {
        self.flops_per_s = FlopRates::uniform(flops_per_s);
        self
    }

    pub fn with_rates(mut self, rates: FlopRates) -> SimProfile {
        self.flops_per_s = rates;
        self
    }

    pub fn with_bandwidth(mut self, bytes_per_s: f64) -> SimProfile {
        self.bytes_per_s = bytes_per_s;
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> SimProfile {
        self.latency = latency;
        self
    }

    pub fn with_link(mut self, link_bytes_per_s: f64) -> SimProfile {
        self.link_bytes_per_s = link_bytes_per_s;
        self
    }

    /// A link to other chips of `bytes_per_s` (see
    /// [`peer_link_bytes_per_s`](Self::peer_link_bytes_per_s)).
    pub fn with_peer_link(mut self, bytes_per_s: f64) -> SimProfile {
        self.peer_link_bytes_per_s = Some(bytes_per_s);
        self
    }

    pub fn with_memory(mut self, bytes: u64) -> SimProfile {
        self.memory = bytes;
        self
    }

    /// Predicted time of `op` on this chip, at full speed. `op` must be valid
    /// ([`Op::validate`]): its flop count reads the operands' shapes.
    pub fn op_time(&self, op: &Op) -> Duration {
        let compute = op.flops() / self.flops_per_s.rate(op.class());
        let memory = op.bytes() / self.bytes_per_s;
        self.latency.saturating_add(secs(compute.max(memory)))
    }

    /// [`op_time`](Self::op_time) for an op run as its decomposition
    /// ([`Op::decomposed_bytes`]): attention on a chip without an attention kernel.
    pub fn decomposed_op_time(&self, op: &Op) -> Duration {
        let compute = op.flops() / self.flops_per_s.rate(op.class());
        let memory = op.decomposed_bytes() / self.bytes_per_s;
        self.latency.saturating_add(secs(compute.max(memory)))
    }

    /// Predicted time of moving `bytes` between the host and this chip.
    pub fn transfer_time(&self, bytes: usize) -> Duration {
        self.latency.saturating_add(secs(bytes as f64 / self.link_bytes_per_s))
    }

    /// Predicted time of copying `bytes` to a chip of `peer` over the peer links: the slower
    /// of the two, once. `None` where either has no peer link.
    pub fn peer_time(&self, peer: &SimProfile, bytes: usize) -> Option<Duration> {
        let rate = self.peer_link_bytes_per_s?.min(peer.peer_link_bytes_per_s?);
        Some(self.latency.max(peer.latency).saturating_add(secs(bytes as f64 / rate)))
    }

    /// Predicted time of copying `bytes` within device memory (read once, written once).
    pub fn copy_time(&self, bytes: usize) -> Duration {
        self.latency.saturating_add(secs(2.0 * bytes as f64 / self.bytes_per_s))
    }

    /// Every rate must be a positive finite number, or no time could be predicted.
    pub(crate) fn check(&self) -> Result<()> {
        let mut rates =
            vec![("bytes_per_s", self.bytes_per_s), ("link_bytes_per_s", self.link_bytes_per_s)];
        rates.extend(self.peer_link_bytes_per_s.map(|r| ("peer_link_bytes_per_s", r)));
        rates.extend(self.flops_per_s.all().map(|(class, r)| (class_name(class), r)));
        match rates.iter().find(|(_, r)| !(r.is_finite() && *r > 0.0)) {
            None => Ok(()),
            Some((what, rate)) => Err(Error::InvalidArgument {
                op: "new".into(),
                device: format!("sim {:?}", self.name),
                detail: format!("{what} is {rate}; every rate must be positive and finite"),
            }),
        }
    }
}

fn class_name(class: OpClass) -> &'static str {
    match class {
        OpClass::Matmul => "flops_per_s.matmul",
        OpClass::Elementwise => "flops_per_s.elementwise",
        OpClass::Reduction => "flops_per_s.reduction",
        OpClass::DataMovement => "flops_per_s.data_movement",
    }
}

/// A duration from seconds that saturates instead of panicking on huge or odd values.
pub(crate) fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId, Layout, View};

    fn matmul(m: usize, k: usize, n: usize) -> Op {
        let buf = |index| BufferId { device: DeviceId::fresh(), index };
        let view = |i, dims: [usize; 2]| View::new(buf(i), Layout::contiguous(dims), DType::F32);
        Op::Matmul { lhs: view(0, [m, k]), rhs: view(1, [k, n]), out: view(2, [m, n]) }
    }

    #[test]
    fn compute_bound_op_costs_latency_plus_flops_over_rate() {
        let p = SimProfile::new("t").with_flops(1e9).with_latency(Duration::from_micros(5));
        // 2·64³ flops at 1 GFLOP/s; 3·64²·4 bytes at 500 GB/s is far less.
        let want = 5e-6 + 2.0 * 64f64.powi(3) / 1e9;
        assert!((p.op_time(&matmul(64, 64, 64)).as_secs_f64() - want).abs() < 1e-9);
    }

    #[test]
    fn memory_bound_op_costs_bytes_over_bandwidth() {
        let p =
            SimProfile::new("t").with_flops(1e15).with_bandwidth(1e6).with_latency(Duration::ZERO);
        let want = 3.0 * 64.0 * 64.0 * 4.0 / 1e6;
        assert!((p.op_time(&matmul(64, 64, 64)).as_secs_f64() - want).abs() < 1e-9);
    }

    #[test]
    fn per_class_rates_apply() {
        let rates = FlopRates { matmul: 2e9, ..FlopRates::uniform(1.0) };
        let p = SimProfile::new("t").with_rates(rates).with_latency(Duration::ZERO);
        let want = 2.0 * 32f64.powi(3) / 2e9;
        assert!((p.op_time(&matmul(32, 32, 32)).as_secs_f64() - want).abs() < 1e-9);
    }

    #[test]
    fn transfers_use_the_link() {
        let p = SimProfile::new("t").with_link(1e9).with_latency(Duration::from_micros(1));
        assert_eq!(p.transfer_time(1_000_000), Duration::from_micros(1001));
    }

    #[test]
    fn peer_copies_take_the_slower_peer_link_once() {
        let p = SimProfile::new("a").with_peer_link(4e9).with_latency(Duration::from_micros(1));
        let q = SimProfile::new("b").with_peer_link(1e9).with_latency(Duration::from_micros(2));
        assert_eq!(p.peer_time(&q, 1_000_000), Some(Duration::from_micros(1002)));
        assert_eq!(q.peer_time(&p, 1_000_000), Some(Duration::from_micros(1002)));
        assert_eq!(p.peer_time(&SimProfile::new("c"), 1_000_000), None, "no link on one end");
    }

    #[test]
    fn bad_rates_are_refused() {
        for p in [
            SimProfile::new("t").with_flops(0.0),
            SimProfile::new("t").with_bandwidth(f64::NAN),
            SimProfile::new("t").with_link(f64::INFINITY),
            SimProfile::new("t").with_peer_link(0.0),
            SimProfile::new("t")
                .with_rates(FlopRates { reduction: -1.0, ..FlopRates::uniform(1.0) }),
        ] {
            let err = p.check().unwrap_err();
            assert_eq!(err.kind(), manychips_api::ErrorKind::InvalidArgument, "{err}");
        }
        assert!(SimProfile::new("t").check().is_ok());
    }

    #[test]
    fn secs_saturates() {
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-1.0), Duration::ZERO);
    }
}
