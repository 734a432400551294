//! The one rule by which every scheduler on the fleet learns a device's speed from what it
//! measured: the planner's correction factors, a data-parallel job's per-row cost and an MPI
//! rank's rate all follow new measurements with it.

/// Weight of the newest measurement. High, because what a scheduler must follow are steps
/// (a chip throttles, a neighbour starts a job), and 0.7 closes 97% of a step in 3 calls.
pub const LEARNING_RATE: f64 = 0.7;

/// A single measurement moves a belief by at most this ratio either way, so one hiccup (a
/// page fault storm, a descheduled thread) cannot make a device look 100× slower.
pub const MAX_STEP: f64 = 8.0;

/// `current` moved towards `sample`. The first measurement (no belief yet, or an infinite
/// one: a device that was never priced) is taken as it is; later ones are bounded to
/// [`MAX_STEP`]× the belief before they are weighed.
pub fn follow(current: Option<f64>, sample: f64) -> f64 {
    match current.filter(|c| c.is_finite() && *c > 0.0) {
        None => sample,
        Some(current) => {
            let sample = sample.clamp(current / MAX_STEP, current * MAX_STEP);
            current + LEARNING_RATE * (sample - current)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_followed_within_three_measurements_and_outliers_are_bounded() {
        let mut belief = 1.0;
        for _ in 0..3 {
            belief = follow(Some(belief), 2.0);
        }
        assert!((belief - 2.0).abs() < 0.06, "{belief}");
        assert_eq!(follow(Some(1.0), 1e6), 1.0 + LEARNING_RATE * (MAX_STEP - 1.0));
        assert_eq!(follow(Some(1.0), 0.0), 1.0 - LEARNING_RATE * (1.0 - 1.0 / MAX_STEP));
    }

    #[test]
    fn a_first_measurement_replaces_no_belief() {
        assert_eq!(follow(None, 3.5), 3.5);
        assert_eq!(follow(Some(f64::INFINITY), 3.5), 3.5);
        assert_eq!(follow(Some(0.0), 3.5), 3.5);
    }
}
