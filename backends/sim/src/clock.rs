//! The virtual clock: how long the simulated chip has been busy.

use std::sync::Mutex;
use std::time::Duration;

use crate::profile::secs;

/// Busy time of a single-queue chip: every call's predicted cost, scaled by the slowdown,
/// added in order. Real time is left alone unless pacing is on.
#[derive(Debug)]
pub(crate) struct Clock {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    now: Duration,
    slowdown: f64,
    pacing: bool,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock { state: Mutex::new(State { now: Duration::ZERO, slowdown: 1.0, pacing: false }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a single assignment, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn now(&self) -> Duration {
        self.lock().now
    }

    pub(crate) fn reset(&self) {
        self.lock().now = Duration::ZERO;
    }

    pub(crate) fn slowdown(&self) -> f64 {
        self.lock().slowdown
    }

    /// `k` must be positive and finite (checked by the caller).
    pub(crate) fn set_slowdown(&self, k: f64) {
        self.lock().slowdown = k;
    }

    pub(crate) fn set_pacing(&self, on: bool) {
        self.lock().pacing = on;
    }

    /// Advances the clock by `cost` at the current slowdown; returns the scaled cost. With
    /// pacing on, also sleeps that long so wall-clock measurements see the simulated speed.
    pub(crate) fn advance(&self, cost: Duration) -> Duration {
        let (scaled, pacing) = {
            let mut state = self.lock();
            let scaled = secs(cost.as_secs_f64() * state.slowdown);
            state.now = state.now.saturating_add(scaled);
            (scaled, state.pacing)
        };
        if pacing {
            std::thread::sleep(scaled);
        }
        scaled
    }

    /// [`advance`](Self::advance) without the sleep: for work another chip's call already
    /// paced (both ends of a peer copy).
    pub(crate) fn advance_unpaced(&self, cost: Duration) -> Duration {
        let mut state = self.lock();
        let scaled = secs(cost.as_secs_f64() * state.slowdown);
        state.now = state.now.saturating_add(scaled);
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_by_scaled_cost_and_resets() {
        let clock = Clock::new();
        clock.advance(Duration::from_millis(3));
        clock.set_slowdown(2.0);
        assert_eq!(clock.advance(Duration::from_millis(5)), Duration::from_millis(10));
        assert_eq!(clock.now(), Duration::from_millis(13));
        clock.reset();
        assert_eq!(clock.now(), Duration::ZERO);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let clock = Clock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), Duration::MAX);
    }
}
