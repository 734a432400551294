//! Failures on command: what the fault injector and the fleet's resilience tests drive.

use std::sync::{Condvar, Mutex};

use manychips_api::{Error, ErrorKind};

/// Pending and past injected failures of one device.
///
/// A `DeviceLost` is sticky, as on real hardware: once injected, every later call fails. Any
/// other kind fails the one call it hits and the device carries on.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    state: Mutex<State>,
    /// Wakes calls blocked by a hang when the device heals.
    healed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Fails the next call of any kind.
    now: Option<ErrorKind>,
    /// Fails the `run` after this many more successful ones.
    after_runs: Option<(u64, ErrorKind)>,
    /// Set once a `DeviceLost` has fired.
    lost: Option<String>,
    /// Each `run` fails with this probability (and kind), drawn from a seeded generator.
    random: Option<(f64, ErrorKind, u64)>,
    /// Every call blocks until `heal`: a chip that stopped answering.
    hanging: bool,
    injected: u64,
}

/// What kind of call is being made, because `fail_after` counts only ops.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Run,
    Other,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn fail_now(&self, kind: ErrorKind) {
        self.lock().now = Some(kind);
    }

    pub(crate) fn fail_after(&self, runs: u64, kind: ErrorKind) {
        self.lock().after_runs = Some((runs, kind));
    }

    pub(crate) fn fail_randomly(&self, probability: f64, kind: ErrorKind, seed: u64) {
        self.lock().random = Some((probability, kind, seed));
    }

    pub(crate) fn hang(&self) {
        self.lock().hanging = true;
    }

    /// Forgets pending failures, a lost state and a hang: the chip came back (a driver
    /// reset). Calls blocked by the hang return.
    pub(crate) fn heal(&self) {
        let mut state = self.lock();
        let injected = state.injected;
        *state = State { injected, ..State::default() };
        self.healed.notify_all();
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lock().lost.is_some()
    }

    pub(crate) fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// The failure this call must return, if any; consumes a pending one-shot failure.
    pub(crate) fn on_call(&self, call: Call, op: &str, device: &str) -> Option<Error> {
        let mut state = self.lock();
        if state.hanging {
            tracing::debug!(device, op, "sim: hanging until healed");
            while state.hanging {
                state = self.healed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        if let Some(detail) = &state.lost {
            return Some(Error::DeviceLost { device: device.into(), detail: detail.clone() });
        }
        let mut fire = state.now.take();
        if fire.is_none()
            && call == Call::Run
            && let Some((left, kind)) = state.after_runs
        {
            if left == 0 {
                state.after_runs = None;
                fire = Some(kind);
            } else {
                state.after_runs = Some((left - 1, kind));
            }
        }
        if fire.is_none()
            && call == Call::Run
            && let Some((p, kind, seed)) = state.random
        {
            let (draw, next) = splitmix(seed);
            state.random = Some((p, kind, next));
            if draw < p {
                fire = Some(kind);
            }
        }
        let kind = fire?;
        state.injected += 1;
        let detail = format!("injected by the simulator during {op}");
        if kind == ErrorKind::DeviceLost {
            state.lost = Some(detail.clone());
        }
        tracing::debug!(device, op, ?kind, "sim: injecting a failure");
        Some(injected(kind, op, device, detail))
    }
}

/// A uniform draw in [0, 1) and the generator's next state (SplitMix64).
fn splitmix(state: u64) -> (f64, u64) {
    let next = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64, next)
}

/// An error of `kind` that names the op and the device like a real backend's would.
fn injected(kind: ErrorKind, op: &str, device: &str, detail: String) -> Error {
    let (op, device) = (op.to_string(), device.to_string());
    match kind {
        ErrorKind::Shape => Error::Shape { op, device, detail },
        ErrorKind::DType => Error::DType { op, device, detail },
        ErrorKind::UnsupportedDType => Error::UnsupportedDType {
            op,
            device,
            dtype: manychips_api::DType::F32,
            detail: format!(" ({detail})"),
        },
        ErrorKind::DeviceMismatch => Error::DeviceMismatch { op, detail },
        ErrorKind::IndexOutOfRange => Error::IndexOutOfRange { op, device, detail },
        ErrorKind::InvalidArgument => Error::InvalidArgument { op, device, detail },
        ErrorKind::OutOfMemory => Error::OutOfMemory { op, device, detail },
        ErrorKind::DeviceLost => Error::DeviceLost { device, detail },
        ErrorKind::Timeout => Error::Timeout { op, device, detail },
        ErrorKind::Fault => Error::Fault { op, device, detail },
        ErrorKind::Unavailable => Error::Unavailable { backend: "sim".into(), reason: detail },
        ErrorKind::Checkpoint => Error::Checkpoint { path: device, detail },
        ErrorKind::Panicked => Error::Panicked { op, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_after_counts_runs_only() {
        let f = Faults::default();
        f.fail_after(2, ErrorKind::Fault);
        assert!(f.on_call(Call::Run, "run", "sim:0").is_none());
        assert!(f.on_call(Call::Other, "read", "sim:0").is_none());
        assert!(f.on_call(Call::Run, "run", "sim:0").is_none());
        let err = f.on_call(Call::Run, "run", "sim:0").unwrap();
        assert_eq!(err.kind(), ErrorKind::Fault);
        assert!(err.to_string().contains("sim:0"), "{err}");
        // One-shot: the device carries on.
        assert!(f.on_call(Call::Run, "run", "sim:0").is_none());
        assert_eq!(f.injected(), 1);
    }

    #[test]
    fn device_lost_is_sticky_until_healed() {
        let f = Faults::default();
        f.fail_now(ErrorKind::DeviceLost);
        for call in [Call::Other, Call::Run, Call::Other] {
            let err = f.on_call(call, "write", "sim:3").unwrap();
            assert_eq!(err.kind(), ErrorKind::DeviceLost);
        }
        assert!(f.is_lost());
        f.heal();
        assert!(!f.is_lost());
        assert!(f.on_call(Call::Run, "run", "sim:3").is_none());
    }

    #[test]
    fn every_kind_can_be_injected() {
        for kind in [
            ErrorKind::Shape,
            ErrorKind::DType,
            ErrorKind::UnsupportedDType,
            ErrorKind::DeviceMismatch,
            ErrorKind::IndexOutOfRange,
            ErrorKind::InvalidArgument,
            ErrorKind::OutOfMemory,
            ErrorKind::DeviceLost,
            ErrorKind::Timeout,
            ErrorKind::Fault,
            ErrorKind::Unavailable,
        ] {
            assert_eq!(injected(kind, "run", "sim:0", "x".into()).kind(), kind);
        }
    }
}
