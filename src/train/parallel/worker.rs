//! One long-lived thread per replica that runs its shares, so that a device that stops
//! answering can be left behind: the step waits for a share only until its deadline.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A share to run, tagged so that a late answer to an earlier share is never mistaken for
/// the current one.
struct Job<T> {
    tag: u64,
    work: Box<dyn FnOnce() -> Result<T> + Send>,
}

pub(super) struct Worker<T> {
    jobs: Sender<Job<T>>,
    results: Receiver<(u64, Result<T>)>,
    next_tag: u64,
    label: String,
}

/// What waiting for a share gave.
pub(super) enum Outcome<T> {
    Done(Result<T>),
    /// No answer by the deadline: the device is presumed hung.
    TimedOut(Duration),
}

impl<T: Send + 'static> Worker<T> {
    pub(super) fn start(label: &str) -> Result<Worker<T>> {
        let (jobs, inbox) = channel::<Job<T>>();
        let (report, results) = channel();
        std::thread::Builder::new()
            .name(format!("replica {label}"))
            .spawn(move || {
                for job in inbox {
                    // A panic in the user's loss function becomes this share's error.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work))
                        .unwrap_or_else(|_| {
                            Err(Error::Fault {
                                op: "data-parallel share".into(),
                                device: "-".into(),
                                detail: "the share's work panicked".into(),
                            })
                        });
                    if report.send((job.tag, result)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Fault {
                op: "DataParallel".into(),
                device: label.into(),
                detail: format!("cannot start the replica's thread: {e}"),
            })?;
        Ok(Worker { jobs, results, next_tag: 0, label: label.into() })
    }

    /// Hands `work` to the thread; returns its tag.
    pub(super) fn submit(&mut self, work: Box<dyn FnOnce() -> Result<T> + Send>) -> Result<u64> {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.jobs.send(Job { tag, work }).map_err(|_| Error::Fault {
            op: "data-parallel share".into(),
            device: self.label.clone(),
            detail: "the replica's thread has stopped".into(),
        })?;
        Ok(tag)
    }

    /// The answer to share `tag`, or `TimedOut` at `deadline`.
    pub(super) fn wait(&self, tag: u64, deadline: Instant, started: Instant) -> Outcome<T> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.results.recv_timeout(left) {
                Ok((t, result)) if t == tag => return Outcome::Done(result),
                Ok(_) => continue, // a late answer to a share already given up on
                Err(RecvTimeoutError::Timeout) => return Outcome::TimedOut(started.elapsed()),
                Err(RecvTimeoutError::Disconnected) => {
                    return Outcome::Done(Err(Error::Fault {
                        op: "data-parallel share".into(),
                        device: self.label.clone(),
                        detail: "the replica's thread has stopped".into(),
                    }));
                }
            }
        }
    }
}
