//! A model of data-parallel steps on N ranks × M devices: how long a step takes when each
//! rank plans its rows over its own devices and the ranks all-reduce the gradients over a
//! network of a given bandwidth, bucket by bucket as the backward pass finishes them. Pure
//! arithmetic, for fleets no machine here has; the rank-level cut, the buckets and the
//! all-reduce cost are the ones [`distributed`] uses.
//!
//! [`distributed`]: super::distributed (feature `mpi`)

use crate::plan::{Linear, fluid_makespan};

/// A network between ranks: per-message latency and per-rank bandwidth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    pub latency_s: f64,
    pub bytes_per_s: f64,
}

impl Network {
    /// A link of `gbit` Gbit/s per rank with 5 µs per message (InfiniBand/RoCE-class).
    pub fn gbit(gbit: f64) -> Network {
        Network { latency_s: 5e-6, bytes_per_s: gbit * 1e9 / 8.0 }
    }

    /// Latency and bandwidth fitted through two measured all-reduces (`small` and `large`
    /// bytes, seconds each).
    pub fn fit(small: (f64, f64), large: (f64, f64)) -> Network {
        let (b0, t0) = small;
        let (b1, t1) = large;
        let per_byte = ((t1 - t0) / (b1 - b0)).max(1e-15);
        Network { latency_s: (t0 - per_byte * b0).max(0.0), bytes_per_s: 1.0 / per_byte }
    }

    /// A ring all-reduce of `bytes` over `ranks`, in buckets of `bucket` bytes: each
    /// bucket costs 2(N−1) message latencies, and every byte crosses each rank's link
    /// 2(N−1)/N times.
    pub fn all_reduce_s(&self, ranks: usize, bytes: f64, bucket: f64) -> f64 {
        if ranks < 2 || bytes <= 0.0 {
            return 0.0;
        }
        let n = ranks as f64;
        let buckets = (bytes / bucket.max(1.0)).ceil();
        buckets * 2.0 * (n - 1.0) * self.latency_s + 2.0 * (n - 1.0) / n * bytes / self.bytes_per_s
    }

    /// The bucket size whose latencies cost at most `overhead` (e.g. 0.1) of its transfer
    /// time, clamped to 1–256 MiB.
    pub fn bucket_for(&self, ranks: usize, overhead: f64) -> f64 {
        let n = ranks.max(2) as f64;
        // latency·2(n−1) ≤ overhead · 2(n−1)/n · bucket / bw
        let bucket = self.latency_s * n * self.bytes_per_s / overhead.max(1e-6);
        bucket.clamp(1.0 * 1048576.0, 256.0 * 1048576.0)
    }
}

/// One rank's devices: each device's time for `n` rows, `fixed + per_unit · n`.
#[derive(Clone, Debug, PartialEq)]
pub struct RankModel {
    pub devices: Vec<Linear>,
}

impl RankModel {
    /// The rank's time for `rows` rows split over its devices to finish together.
    pub fn time(&self, rows: usize) -> f64 {
        if rows == 0 {
            return 0.0;
        }
        fluid_makespan(&self.devices, rows).unwrap_or(f64::INFINITY)
    }

    /// Rows per second at large batches: the sum of the devices' rates.
    pub fn rate(&self) -> f64 {
        self.devices.iter().filter(|c| c.per_unit > 0.0).map(|c| 1.0 / c.per_unit).sum()
    }
}

/// The part of a step's compute that is the backward pass (of the 6 flops per weight and
/// token, 2 are the forward pass).
pub const BACKWARD_SHARE: f64 = 2.0 / 3.0;

/// A simulated step.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterStep {
    /// Rows each rank computed (cut by rank rates).
    pub rows: Vec<usize>,
    /// The slowest rank's forward + backward.
    pub compute_s: f64,
    pub all_reduce_s: f64,
    /// Compute, then the whole all-reduce.
    pub serial_s: f64,
    /// As implemented: each bucket is reduced once the backward pass has finished it (the
    /// gradients come out evenly over the backward pass) and the link is free, so only what
    /// the backward pass cannot hide, at least the last bucket, adds to the compute.
    pub step_s: f64,
    /// No step is shorter than its compute or its all-reduce.
    pub bound_s: f64,
}

/// One step of `batch` rows over `ranks`, gradients of `gradient_bytes`.
pub fn simulate_step(
    ranks: &[RankModel],
    batch: usize,
    gradient_bytes: f64,
    bucket: f64,
    network: &Network,
) -> ClusterStep {
    let rates: Vec<f64> = ranks.iter().map(RankModel::rate).collect();
    let total: f64 = rates.iter().sum();
    let mut rows: Vec<usize> =
        rates.iter().map(|r| (r / total.max(1e-300) * batch as f64).floor() as usize).collect();
    // The rows rounding left go one by one to the rank that would finish first.
    let mut left = batch.saturating_sub(rows.iter().sum());
    while left > 0 {
        let (i, _) = ranks
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.time(rows[i] + 1)))
            .fold((0, f64::INFINITY), |best, x| if x.1 < best.1 { x } else { best });
        rows[i] += 1;
        left -= 1;
    }
    let compute_s = ranks.iter().zip(&rows).map(|(r, &n)| r.time(n)).fold(0.0, f64::max);
    let all_reduce_s = network.all_reduce_s(ranks.len(), gradient_bytes, bucket);
    ClusterStep {
        rows,
        compute_s,
        all_reduce_s,
        serial_s: compute_s + all_reduce_s,
        step_s: pipelined(compute_s, all_reduce_s, gradient_bytes, bucket),
        bound_s: compute_s.max(all_reduce_s),
    }
}

/// The end of the last bucket's all-reduce when bucket `i` of `n` is ready at
/// `forward + (i+1)/n · backward` and each takes `all_reduce_s / n` on a link that reduces
/// one bucket at a time: the latest of `ready_i + (n − i) · per_bucket`.
fn pipelined(compute_s: f64, all_reduce_s: f64, bytes: f64, bucket: f64) -> f64 {
    let n = (bytes / bucket.max(1.0)).ceil().max(1.0) as usize;
    let backward = compute_s * BACKWARD_SHARE;
    let forward = compute_s - backward;
    let per_bucket = all_reduce_s / n as f64;
    (0..n)
        .map(|i| forward + (i + 1) as f64 / n as f64 * backward + (n - i) as f64 * per_bucket)
        .fold(compute_s, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(rates: &[f64]) -> RankModel {
        RankModel {
            devices: rates.iter().map(|r| Linear { fixed: 0.0, per_unit: 1.0 / r }).collect(),
        }
    }

    #[test]
    fn ranks_get_rows_by_rate_and_pay_a_ring_all_reduce() {
        let ranks = [rank(&[100.0, 100.0]), rank(&[200.0, 400.0])];
        let net = Network { latency_s: 0.0, bytes_per_s: 1e9 };
        let step = simulate_step(&ranks, 800, 1e9, 1e8, &net);
        assert_eq!(step.rows, vec![200, 600]);
        assert!((step.compute_s - 1.0).abs() < 1e-9);
        // 2 ranks: every byte crosses the link once.
        assert!((step.all_reduce_s - 1.0).abs() < 1e-9);
        assert!((step.serial_s - 2.0).abs() < 1e-9 && (step.bound_s - 1.0).abs() < 1e-9);
        // 10 buckets of 0.1 s, the backward pass from 1/3 s to 1 s: the link is the
        // bottleneck from the first bucket on, which is ready at 1/3 + 2/30 s.
        assert!((step.step_s - (1.0 / 3.0 + 2.0 / 30.0 + 1.0)).abs() < 1e-9, "{step:?}");
        // A fast link: only the last bucket shows.
        let fast =
            simulate_step(&ranks, 800, 1e9, 1e8, &Network { latency_s: 0.0, bytes_per_s: 1e11 });
        assert!((fast.step_s - (1.0 + 0.01 / 10.0)).abs() < 1e-9, "{fast:?}");
    }

    #[test]
    fn a_fit_through_two_points_recovers_latency_and_bandwidth() {
        let net = Network::fit((1e3, 1e-5 + 1e3 / 1e9), (1e7, 1e-5 + 1e7 / 1e9));
        assert!((net.latency_s - 1e-5).abs() < 1e-12);
        assert!((net.bytes_per_s - 1e9).abs() / 1e9 < 1e-9);
        let one = Network::gbit(200.0);
        assert_eq!(one.bytes_per_s, 25e9);
        assert_eq!(one.all_reduce_s(1, 1e9, 1e6), 0.0);
    }
}
