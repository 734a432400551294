//! The cost model: predicted time of an op, or of a host transfer, on a calibrated device.

use std::time::Duration;

use manychips_api::Op;

use super::profile::DeviceProfile;

/// Which way a host transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    HostToDevice,
    DeviceToHost,
}

/// Predicted time of `op` on the device `profile` describes:
/// `latency + max(flops / rate(class, dtype), bytes / bandwidth)`. `op` must be valid
/// ([`Op::validate`]): its flop count reads the operands' shapes.
///
/// Attention is priced as a kernel runs it (its operands' bytes); a device without one runs
/// its decomposition, which moves [`Op::decomposed_bytes`] (the measured times the planner
/// learns from show it).
pub fn predict(op: &Op, profile: &DeviceProfile) -> Duration {
    let flops = op.flops();
    let rate = profile.rate(op.class(), op.output().dtype, flops);
    let compute = if flops > 0.0 { flops / rate } else { 0.0 };
    let memory = op.bytes() / profile.bytes_per_s;
    secs(profile.latency_s).saturating_add(secs(compute.max(memory)))
}

/// Predicted time of moving `bytes` between the host and the device: `latency + bytes /
/// link bandwidth` in that direction.
pub fn transfer(bytes: usize, profile: &DeviceProfile, direction: Direction) -> Duration {
    let link = match direction {
        Direction::HostToDevice => profile.host_to_device_bytes_per_s,
        Direction::DeviceToHost => profile.device_to_host_bytes_per_s,
    };
    secs(profile.latency_s).saturating_add(secs(bytes as f64 / link))
}

/// A duration from seconds that saturates instead of panicking: a zero rate (an
/// uncalibrated figure) prices as "never", not as a crash.
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
    use crate::plan::profile::MatmulPoint;
    use manychips_api::{BinaryOp, BufferId, DType, DeviceId, Layout, View};

    fn profile() -> DeviceProfile {
        DeviceProfile {
            backend: "test".into(),
            name: "t".into(),
            identity: "-".into(),
            driver_version: "1".into(),
            measured_at: 1,
            matmul: vec![MatmulPoint { dtype: "f32".into(), n: 64, flops_per_s: 1e9 }],
            matmul_rate_concurrent: None,
            bytes_per_s: 1e9,
            elementwise_flops_per_s: 1e12,
            latency_s: 5e-6,
            host_to_device_bytes_per_s: 1e9,
            device_to_host_bytes_per_s: 5e8,
            peer_bytes_per_s: None,
            noise: 1.0,
        }
    }

    fn view(index: u64, dims: &[usize]) -> View {
        let buffer = BufferId { device: DeviceId::fresh(), index };
        View::new(buffer, Layout::contiguous(dims.to_vec()), DType::F32)
    }

    fn close(d: Duration, secs: f64) -> bool {
        (d.as_secs_f64() - secs).abs() < 1e-9
    }

    #[test]
    fn compute_bound_matmul_costs_latency_plus_flops_over_rate() {
        let op = Op::Matmul {
            lhs: view(0, &[64, 64]),
            rhs: view(1, &[64, 64]),
            out: view(2, &[64, 64]),
        };
        // 2·64³ flops at 1 GFLOP/s (262 µs) beat 3·64²·4 bytes at 1 GB/s (49 µs).
        assert!(close(predict(&op, &profile()), 5e-6 + 2.0 * 64f64.powi(3) / 1e9));
    }

    #[test]
    fn memory_bound_add_costs_bytes_over_bandwidth() {
        let op = Op::Binary {
            op: BinaryOp::Add,
            lhs: view(0, &[1000]),
            rhs: view(1, &[1000]),
            out: view(2, &[1000]),
        };
        assert!(close(predict(&op, &profile()), 5e-6 + 12_000.0 / 1e9));
    }

    #[test]
    fn transfers_use_the_link_of_their_direction() {
        let p = profile();
        assert!(close(transfer(1_000_000, &p, Direction::HostToDevice), 5e-6 + 1e-3));
        assert!(close(transfer(1_000_000, &p, Direction::DeviceToHost), 5e-6 + 2e-3));
    }

    #[test]
    fn an_uncalibrated_profile_prices_as_never_not_a_panic() {
        let p = DeviceProfile { bytes_per_s: 0.0, matmul: vec![], ..profile() };
        let op = Op::Matmul { lhs: view(0, &[8, 8]), rhs: view(1, &[8, 8]), out: view(2, &[8, 8]) };
        assert_eq!(predict(&op, &p), Duration::MAX);
    }
}
