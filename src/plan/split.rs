//! Equal-finish shares: how many units of work each device gets so that all finish together.
//!
//! Each device's time for `u > 0` units is modelled as `fixed + per_unit · u` (latencies and
//! inputs every part needs, then compute and per-unit transfers); a device given nothing
//! costs nothing. The continuous optimum gives every used device the same finish time `T`,
//! and uses exactly the devices whose fixed cost is below `T` (water filling). Units are
//! whole rows, so the fractional optimum is rounded down and the few units left go one by
//! one to whichever device would then finish first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A device's predicted time for `u` units: `fixed + per_unit · u` when `u > 0`, else 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    pub fixed: f64,
    pub per_unit: f64,
}

impl Linear {
    pub fn at(&self, units: usize) -> f64 {
        if units == 0 { 0.0 } else { self.fixed + self.per_unit * units as f64 }
    }

    /// A device that cannot take part (an unpriceable or non-finite cost).
    fn usable(&self) -> bool {
        self.fixed.is_finite() && self.per_unit.is_finite() && self.per_unit > 0.0
    }
}

/// Whole-unit shares in proportion to `weights` (largest remainders), summing to `units`;
/// `None` when no weight is positive and finite.
pub fn proportional(weights: &[f64], units: usize) -> Option<Vec<usize>> {
    let usable = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
    let total: f64 = weights.iter().map(|&w| usable(w)).sum();
    if total <= 0.0 {
        return None;
    }
    let exact: Vec<f64> = weights.iter().map(|&w| usable(w) / total * units as f64).collect();
    let mut shares: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let left = units.saturating_sub(shares.iter().sum::<usize>());
    for &i in order.iter().cycle().take(left) {
        shares[i] += 1;
    }
    Some(shares)
}

/// The finish time `T` of the continuous optimum: `Σ max(0, (T − fixed) / per_unit) = units`.
/// `None` when no device is usable.
pub fn fluid_makespan(costs: &[Linear], units: usize) -> Option<f64> {
    let mut usable: Vec<&Linear> = costs.iter().filter(|c| c.usable()).collect();
    usable.sort_by(|a, b| a.fixed.total_cmp(&b.fixed));
    let (mut inv_sum, mut weighted) = (0.0, 0.0);
    let mut t = None;
    for c in usable {
        if let Some(t) = t
            && c.fixed >= t
        {
            break;
        }
        inv_sum += 1.0 / c.per_unit;
        weighted += c.fixed / c.per_unit;
        t = Some((units as f64 + weighted) / inv_sum);
    }
    t
}

/// Whole-unit shares (in `costs`' order, summing to `units`) whose largest finish time is
/// as small as the rounding allows. Unusable devices get 0. All zeros when none is usable.
pub fn equal_finish(costs: &[Linear], units: usize) -> Vec<usize> {
    let mut shares = vec![0usize; costs.len()];
    let Some(t) = fluid_makespan(costs, units) else {
        return shares;
    };
    let mut given = 0usize;
    for (share, c) in shares.iter_mut().zip(costs) {
        if c.usable() && c.fixed < t {
            // Rounded down, so the sum never exceeds `units`.
            *share = (((t - c.fixed) / c.per_unit).floor() as usize).min(units - given);
            given += *share;
        }
    }
    // The remainder is at most one unit per used device: hand them out cheapest-finish first.
    let mut next: BinaryHeap<Next> = costs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.usable())
        .map(|(i, c)| Next { finish: c.at(shares[i] + 1), device: i })
        .collect();
    while given < units {
        let Some(Next { device, .. }) = next.pop() else { break };
        shares[device] += 1;
        given += 1;
        next.push(Next { finish: costs[device].at(shares[device] + 1), device });
    }
    shares
}

/// Largest finish time of `shares`.
pub fn makespan(costs: &[Linear], shares: &[usize]) -> f64 {
    costs.iter().zip(shares).map(|(c, &u)| c.at(u)).fold(0.0, f64::max)
}

/// Heap entry: the finish time a device would have with one more unit (min-heap by finish,
/// then by device index so ties are deterministic).
#[derive(PartialEq)]
struct Next {
    finish: f64,
    device: usize,
}

impl Eq for Next {}

impl Ord for Next {
    fn cmp(&self, other: &Self) -> Ordering {
        other.finish.total_cmp(&self.finish).then_with(|| other.device.cmp(&self.device))
    }
}

impl PartialOrd for Next {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lin(fixed: f64, per_unit: f64) -> Linear {
        Linear { fixed, per_unit }
    }

    #[test]
    fn shares_follow_speed_when_fixed_costs_are_equal() {
        let costs = [lin(0.0, 1.0), lin(0.0, 0.5), lin(0.0, 0.25)];
        assert_eq!(equal_finish(&costs, 70), vec![10, 20, 40]);
        assert_eq!(makespan(&costs, &[10, 20, 40]), 10.0);
    }

    #[test]
    fn a_device_whose_fixed_cost_exceeds_the_gain_is_left_out() {
        let costs = [lin(0.0, 1.0), lin(50.0, 0.01)];
        // Alone the first finishes 10 units at t = 10, before the second even starts.
        assert_eq!(equal_finish(&costs, 10), vec![10, 0]);
        assert!(equal_finish(&costs, 1000)[1] > 900);
    }

    #[test]
    fn unusable_devices_get_nothing() {
        let costs = [lin(f64::INFINITY, 1.0), lin(0.0, 0.0), lin(1.0, f64::NAN), lin(0.0, 2.0)];
        assert_eq!(equal_finish(&costs, 5), vec![0, 0, 0, 5]);
        assert_eq!(equal_finish(&costs[..3], 5), vec![0, 0, 0]);
    }

    proptest! {
        #[test]
        fn shares_sum_to_the_units_and_are_within_one_unit_of_the_fluid_optimum(
            devices in prop::collection::vec((0.0f64..5.0, 0.01f64..10.0), 1..40),
            units in 0usize..5000,
        ) {
            let costs: Vec<Linear> = devices.iter().map(|&(f, p)| lin(f, p)).collect();
            let shares = equal_finish(&costs, units);
            prop_assert_eq!(shares.iter().sum::<usize>(), units);
            if units > 0 {
                let fluid = fluid_makespan(&costs, units).unwrap();
                let worst_unit = costs.iter().map(|c| c.per_unit).fold(0.0, f64::max);
                let got = makespan(&costs, &shares);
                prop_assert!(got <= fluid + worst_unit + 1e-9, "{} vs fluid {}", got, fluid);
                prop_assert!(got + 1e-9 >= fluid, "beat the optimum: {} < {}", got, fluid);
            }
        }
    }
}
