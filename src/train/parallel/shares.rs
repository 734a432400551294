//! How a step's batch is cut: each device's time is `fixed + per_sample · rows`, learned
//! from its measured shares.

use crate::fleet::follow;
use crate::plan::{DeviceProfile, Linear, proportional};

/// Kernel launches per graph node over a step: forward, backward (about two per node) and
/// the share of the optimizer and transfers. Only the first step's prior uses it.
const LAUNCHES_PER_NODE: f64 = 3.0;

/// Graph nodes assumed before the first step has counted them.
const FIRST_GUESS_NODES: usize = 20;

/// A device's cost model before it has run anything: 6 flops per weight per sample
/// (forward 2, backward 4) at the matmul rate it keeps while the others run.
pub(super) fn prior(profile: &DeviceProfile, weights: usize) -> Linear {
    let rate = profile.matmul_rate_concurrent.unwrap_or(profile.peak_matmul_rate());
    let per_unit = if rate > 0.0 { 6.0 * weights as f64 / rate } else { f64::INFINITY };
    Linear { fixed: profile.latency_s * launches(FIRST_GUESS_NODES), per_unit }
}

/// Moves a device's per-sample cost towards what its last share took, by the fleet's one
/// rule ([`follow`]: a measurement is bounded to 8× the belief, then weighed; an unpriced
/// device's first share replaces its infinite prior). The fixed part is launches ×
/// latency, with launches counted from the step's graph.
pub(super) fn learn(cost: &mut Linear, latency: f64, rows: usize, secs: f64, nodes: usize) {
    if rows == 0 || !secs.is_finite() {
        return;
    }
    let fixed = latency * launches(nodes);
    // A share never costs less than a thousandth of what was measured per row, even when
    // the launch estimate overshoots.
    let observed = ((secs - fixed) / rows as f64).max(secs * 1e-3 / rows as f64);
    *cost = Linear { fixed, per_unit: follow(Some(cost.per_unit), observed) };
}

fn launches(nodes: usize) -> f64 {
    (nodes as f64 * LAUNCHES_PER_NODE).max(1.0)
}

/// Whole-row shares in proportion to `weights`, summing to `batch`; all to the first when
/// no weight is positive.
pub(super) fn by_weights(weights: &[f64], batch: usize) -> Vec<usize> {
    proportional(weights, batch).unwrap_or_else(|| {
        let mut shares = vec![0; weights.len()];
        if let Some(first) = shares.first_mut() {
            *first = batch;
        }
        shares
    })
}

/// `shares` as consecutive row ranges from `start`.
pub(crate) fn ranges(shares: &[usize], start: usize) -> Vec<std::ops::Range<usize>> {
    let mut at = start;
    shares
        .iter()
        .map(|&n| {
            at += n;
            at - n..at
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_whole_rows() {
        assert_eq!(by_weights(&[1.0, 1.0, 2.0], 8), vec![2, 2, 4]);
        assert_eq!(by_weights(&[1.0, 1.0, 1.0], 10).iter().sum::<usize>(), 10);
        assert_eq!(by_weights(&[0.0, 0.0], 5), vec![5, 0]);
        assert_eq!(by_weights(&[3.0, 0.0, 1.0], 4), vec![3, 0, 1]);
        assert_eq!(ranges(&[2, 0, 3], 10), vec![10..12, 12..12, 12..15]);
    }

    #[test]
    fn learning_moves_towards_the_measurement() {
        let mut c = Linear { fixed: 0.0, per_unit: f64::INFINITY };
        learn(&mut c, 0.0, 10, 1.0, 5);
        assert!((c.per_unit - 0.1).abs() < 1e-12);
        learn(&mut c, 0.0, 10, 2.0, 5);
        assert!((c.per_unit - (0.1 + 0.7 * 0.1)).abs() < 1e-12);
        // One share 1000× slower (a descheduled thread) moves the belief at most 8×.
        let before = c.per_unit;
        learn(&mut c, 0.0, 10, 1700.0, 5);
        assert!((c.per_unit - (before + 0.7 * 7.0 * before)).abs() < 1e-9, "{}", c.per_unit);
    }
}
