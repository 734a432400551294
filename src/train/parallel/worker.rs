//! One long-lived thread per replica that runs its shares, so that a device that stops
//! answering can be left behind: the step waits for a share only until its deadline.

use std::sync::mpsc::{Sender, channel};
use std::time::Instant;

use crate::{Error, Result, Tensor};

/// A finished share: its part of the loss, how long it took, how many graph nodes it had and
/// when it ended. Its gradients went ahead as [`Message::Grad`]s when the step streams them,
/// and come here otherwise (master parameter index, gradient on the master device).
pub(super) struct ShareDone {
    pub loss: f64,
    pub secs: f64,
    pub nodes: usize,
    pub ended: Instant,
    pub grads: Vec<(usize, Tensor)>,
}

/// What a share sends to the step that waits for it, tagged so that a late message from an
/// earlier share is never mistaken for the current one.
pub(super) enum Message {
    /// The gradient of master parameter `param` over the share's rows, final and already
    /// on the master device, sent while the rest of the backward pass still runs.
    Grad {
        tag: u64,
        param: usize,
        grad: Tensor,
    },
    Done {
        tag: u64,
        result: Result<ShareDone>,
    },
}

pub(super) type Work = Box<dyn FnOnce() -> Result<ShareDone> + Send>;

struct Job {
    tag: u64,
    work: Work,
    reply: Sender<Message>,
}

pub(super) struct Worker {
    jobs: Sender<Job>,
    label: String,
}

impl Worker {
    pub(super) fn start(label: &str) -> Result<Worker> {
        let (jobs, inbox) = channel::<Job>();
        std::thread::Builder::new()
            .name(format!("replica {label}"))
            .spawn(move || {
                for job in inbox {
                    // A panic in the caller's loss function comes back from the share itself
                    // as `Error::Panicked`; one anywhere else (a backend) is the device's.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work))
                        .unwrap_or_else(|payload| {
                            Err(Error::Fault {
                                op: "data-parallel share".into(),
                                device: "-".into(),
                                detail: format!("panicked: {}", panic_message(payload.as_ref())),
                            })
                        });
                    // The step may have given up on this share and gone: nothing to tell.
                    let _ = job.reply.send(Message::Done { tag: job.tag, result });
                }
            })
            .map_err(|e| Error::Fault {
                op: "DataParallel".into(),
                device: label.into(),
                detail: format!("cannot start the replica's thread: {e}"),
            })?;
        Ok(Worker { jobs, label: label.into() })
    }

    /// Hands `work` to the thread; its end (and anything it sends itself) arrives on `reply`.
    pub(super) fn submit(&self, tag: u64, work: Work, reply: Sender<Message>) -> Result<()> {
        self.jobs.send(Job { tag, work, reply }).map_err(|_| Error::Fault {
            op: "data-parallel share".into(),
            device: self.label.clone(),
            detail: "the replica's thread has stopped".into(),
        })
    }
}

/// What a panic said, where it said it as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}
