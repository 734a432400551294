//! The planner's watchdog: shares run on threads the run can leave behind, and a share that
//! has not ended by the deadline is given up on, its device blamed by the stage it is stuck
//! in. A share given up on can never write into the output afterwards: it must claim the
//! right to place its result before doing so, and giving up takes that right away.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use manychips_api::{Error, Op, Result};

use crate::DeviceRef;

/// Its thread has not started yet (an overloaded host).
const NOT_STARTED: u8 = 4;
/// Reading the operands on the source device.
const GATHERING: u8 = 0;
/// Uploading and computing on its own device (or waiting for the others to gather).
const WORKING: u8 = 1;
/// Writing its result into the output on the destination device.
const PLACING: u8 = 2;
/// Given up on: it must stop at its next check.
const ABANDONED: u8 = 3;

/// Where one share is.
pub(super) struct Progress {
    stage: AtomicU8,
    /// It computes on the destination device, so its kernel writes the output directly.
    on_dst: bool,
}

impl Progress {
    pub fn new(on_dst: bool) -> Progress {
        Progress { stage: AtomicU8::new(NOT_STARTED), on_dst }
    }

    /// Moves from `from` to `to`; false when the share was given up on.
    fn advance(&self, from: u8, to: u8) -> bool {
        self.stage.compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Its thread runs; false when the share was given up on before it could start.
    pub fn started(&self) -> bool {
        self.advance(NOT_STARTED, GATHERING)
    }

    /// Operands gathered; false when the share was given up on.
    pub fn working(&self) -> bool {
        self.advance(GATHERING, WORKING)
    }

    /// Claims the right to write into the output; false when the share was given up on.
    pub fn placing(&self) -> bool {
        self.advance(WORKING, PLACING)
    }

    pub fn abandoned(&self) -> bool {
        self.stage.load(Ordering::SeqCst) == ABANDONED
    }

    /// Gives up on the share unless it is already placing its result (then it is let
    /// finish). Returns the stage it was in.
    pub fn abandon(&self) -> u8 {
        let mut stage = self.stage.load(Ordering::SeqCst);
        while stage != PLACING && stage != ABANDONED {
            match self.stage.compare_exchange(stage, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => stage = now,
            }
        }
        stage
    }
}

/// A barrier the run can open early: shares wait here until every share has gathered its
/// operands (so no read waits behind a kernel), or until the run gives up on them.
pub(super) struct Gate {
    parties: usize,
    state: Mutex<(usize, bool)>,
    opened: Condvar,
}

impl Gate {
    pub fn new(parties: usize) -> Gate {
        Gate { parties, state: Mutex::new((0, false)), opened: Condvar::new() }
    }

    /// Waits for the others; false when the run gave up first.
    pub fn arrive(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        if state.0 >= self.parties {
            self.opened.notify_all();
        }
        while state.0 < self.parties && !state.1 {
            state = self.opened.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        !state.1
    }

    /// Releases every waiting share, telling it the run gave up.
    pub fn abort(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.opened.notify_all();
    }
}

/// Aborts the gate when the run ends in any way (a panic or an early return included), so
/// no share is left waiting at it; after a normal end nobody is waiting any more.
pub(super) struct AbortOnDrop<'a>(pub &'a Gate);

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the shares of one run came back with: each one's result where it ended, and the
/// `Timeout` that names the device holding the run up, if one did.
pub(super) struct Collected<T> {
    pub results: Vec<Option<Result<T>>>,
    pub timeout: Option<Error>,
}

/// Shares running on other threads, watched until `limit` has passed.
pub(super) struct Watch<'a> {
    pub progress: &'a [std::sync::Arc<Progress>],
    pub gate: &'a Gate,
    pub devices: &'a [DeviceRef],
    pub src: &'a DeviceRef,
    pub dst: &'a DeviceRef,
    pub op: &'a Op,
    pub limit: Duration,
}

impl Watch<'_> {
    /// Every share's result, or, at the deadline, a `Timeout` blaming the device that holds
    /// the run up: the source while a share still reads its operands, else a share's own
    /// device while it computes, else the destination. Before a timeout lets the planner
    /// run the op again elsewhere, every share that could still write into the output (one
    /// placing its result, or one computing on the destination) is waited for once more;
    /// one that does not end then is the destination's hang.
    pub fn collect<T>(&self, rx: &Receiver<(usize, Result<T>)>, started: Instant) -> Collected<T> {
        let mut results: Vec<Option<Result<T>>> = (0..self.progress.len()).map(|_| None).collect();
        receive(rx, &mut results, started + self.limit, |_| true);
        let waiting: Vec<usize> = (0..results.len()).filter(|&k| results[k].is_none()).collect();
        if waiting.is_empty() {
            return Collected { results, timeout: None };
        }
        let stages: Vec<(usize, u8)> =
            waiting.iter().map(|&k| (k, self.progress[k].abandon())).collect();
        self.gate.abort();
        let stage_of = |k: usize| stages.iter().find(|s| s.0 == k).map_or(ABANDONED, |s| s.1);
        if let Some(&(k, _)) = stages.iter().find(|s| s.1 == NOT_STARTED) {
            // Not any device's fault: the host did not run the share's thread in time. A
            // fault (not a timeout) is retried, and names the share's own device, so that
            // no data-holding device is written off for it.
            return Collected {
                results,
                timeout: Some(Error::Fault {
                    op: self.op.name(),
                    device: self.devices[k].info().label(),
                    detail: format!(
                        "the share's thread had not started after {:.2?} (an overloaded host)",
                        self.limit
                    ),
                }),
            };
        }
        let culprit = if stages.iter().any(|&(_, s)| s == GATHERING) {
            // The source holds the operands: the op fails, nothing is re-run, no wait.
            self.src
        } else {
            let must_end = |k: usize| stage_of(k) == PLACING || self.progress[k].on_dst;
            receive(rx, &mut results, Instant::now() + self.limit, must_end);
            let still = |k: &usize| results[*k].is_none() && must_end(*k);
            if waiting.iter().any(still) {
                self.dst
            } else {
                // Blame by where each share was at the deadline, not by what it answered
                // after it (a share given up on answers with an error of its own).
                match stages.iter().find(|s| s.1 == WORKING) {
                    Some(&(k, _)) => &self.devices[k],
                    None => return Collected { results, timeout: None },
                }
            }
        };
        let timeout = Error::Timeout {
            op: self.op.name(),
            device: culprit.info().label(),
            detail: format!("no answer within {:.2?} (the planner's watchdog)", self.limit),
        };
        Collected { results, timeout: Some(timeout) }
    }
}

/// Takes results until `deadline`, or until every share `wanted` accepts has ended.
fn receive<T>(
    rx: &Receiver<(usize, Result<T>)>,
    results: &mut [Option<Result<T>>],
    deadline: Instant,
    wanted: impl Fn(usize) -> bool,
) {
    while (0..results.len()).any(|k| results[k].is_none() && wanted(k)) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((k, result)) => results[k] = Some(result),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The error of a share that stopped because the run gave up on it.
pub(super) fn given_up(op: &Op, device: &DeviceRef) -> Error {
    Error::Timeout {
        op: op.name(),
        device: device.info().label(),
        detail: "the planner's watchdog gave up on this share".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_given_up_on_cannot_claim_the_output() {
        let p = Progress::new(false);
        assert!(p.started() && p.working());
        assert_eq!(p.abandon(), WORKING);
        assert!(!p.placing(), "abandoned before placing: it must not write");
        let q = Progress::new(false);
        assert!(q.started() && q.working() && q.placing());
        assert_eq!(q.abandon(), PLACING, "one already placing is let finish");
        assert!(!q.abandoned());
        let r = Progress::new(false);
        assert_eq!(r.abandon(), NOT_STARTED);
        assert!(!r.started(), "a thread that starts after the give-up does nothing");
    }

    #[test]
    fn an_aborted_gate_releases_its_waiters() {
        let gate = std::sync::Arc::new(Gate::new(2));
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.arrive())
        };
        std::thread::sleep(Duration::from_millis(20));
        gate.abort();
        assert!(!waiter.join().unwrap(), "released, told the run gave up");
        let open = Gate::new(1);
        assert!(open.arrive());
    }
}
