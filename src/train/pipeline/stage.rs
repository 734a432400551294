//! One stage's part of a pipeline step: its 1F1B list played on one thread, the forward
//! and backward passes of its layers, and the messages it trades with its neighbours
//! through an [`Inbox`] and an [`Outbox`] (channels within a process, MPI between ranks).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::Layered;
use super::schedule::{Work, one_f_one_b};
use crate::plan::Stopwatch;
use crate::train::nn::Ctx;
use crate::train::{Grads, Var, no_grad};
use crate::{DeviceRef, Error, Result, Tensor};

/// `total` rows in `parts` shares differing by at most one, the larger ones first.
pub(super) fn even_shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts).map(|i| total / parts + usize::from(i < total % parts)).collect()
}

/// A micro-batch's activation (forward) or its gradient (back), on the sender's device.
pub(super) type Message = (usize, Tensor);

/// Where a stage sends micro-batch `m`'s activation (to the next stage) or gradient (to the
/// one before): a channel to a thread of this process, or another MPI rank.
pub(super) trait Outbox {
    fn send(&self, m: usize, tensor: &Tensor) -> std::result::Result<(), Stop>;
}

/// Where a stage receives them from, onto its own device.
pub(super) trait Inbox {
    /// Micro-batch `m`'s message (messages come in micro-batch order), on `device`.
    fn receive(&self, m: usize, device: &DeviceRef) -> std::result::Result<Tensor, Stop>;
}

impl Outbox for Sender<Message> {
    fn send(&self, m: usize, tensor: &Tensor) -> std::result::Result<(), Stop> {
        Sender::send(self, (m, tensor.clone())).map_err(|_| Stop::Neighbour)
    }
}

impl Inbox for Receiver<Message> {
    fn receive(&self, m: usize, device: &DeviceRef) -> std::result::Result<Tensor, Stop> {
        let (got, tensor) = self.recv().map_err(|_| Stop::Neighbour)?;
        if got != m {
            return Err(Stop::Failed(Error::InvalidArgument {
                op: "Pipeline::step".into(),
                device: device.info().label(),
                detail: format!("micro-batch {got} arrived where {m} was due"),
            }));
        }
        Ok(tensor.to_device(device)?)
    }
}

/// Makes rows' input on the first stage's device.
pub(super) type InputFn<'a> = &'a (dyn Fn(Range<usize>, &DeviceRef) -> Result<Var> + Sync);

/// Makes rows' per-row losses from the last layer's output, on the last stage's device.
pub(super) type LossFn<'a> = &'a (dyn Fn(&Var, Range<usize>, &DeviceRef) -> Result<Var> + Sync);

/// What every stage thread reads.
pub(super) struct Shared<'a, M> {
    pub model: &'a M,
    pub input: InputFn<'a>,
    pub loss: LossFn<'a>,
    pub rows: &'a [Range<usize>],
    pub batch: usize,
    pub step: u64,
}

/// One stage's part of a step: its place, its layers on its device, and its links.
pub(super) struct StageJob<'a> {
    pub index: usize,
    pub count: usize,
    pub device: DeviceRef,
    pub layers: Range<usize>,
    pub recompute: bool,
    pub send_forward: Option<Box<dyn Outbox + Send + 'a>>,
    pub receive_forward: Option<Box<dyn Inbox + Send + 'a>>,
    pub send_back: Option<Box<dyn Outbox + Send + 'a>>,
    pub receive_back: Option<Box<dyn Inbox + Send + 'a>>,
}

/// Why a stage stopped early: its own error, or a neighbour's (whose channel closed).
pub(super) enum Stop {
    Failed(Error),
    Neighbour,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

/// A stretch of a stage's work: wall-clock for the trace, and on the device's own clock
/// (a simulated chip's virtual one) for learning the stage's speed.
pub(super) struct Busy {
    pub kind: &'static str,
    pub name: String,
    pub start: Instant,
    pub duration: Duration,
    pub secs: f64,
}

impl Busy {
    fn since(
        kind: &'static str,
        name: String,
        start: Instant,
        watch: &Stopwatch,
        device: &DeviceRef,
    ) -> Busy {
        Busy { kind, name, start, duration: start.elapsed(), secs: watch.secs(&**device) }
    }
}

pub(super) struct StageOutcome {
    pub grads: Grads,
    /// The last stage's micro-batch losses (scalars on its device).
    pub losses: Vec<Tensor>,
    pub busy: Vec<Busy>,
}

impl StageJob<'_> {
    pub fn run<M: Layered>(
        self,
        shared: &Shared<'_, M>,
    ) -> std::result::Result<StageOutcome, Stop> {
        let last = self.index + 1 == self.count;
        let micro_batches = shared.rows.len();
        let mut grads = Grads::default();
        let mut losses = Vec::new();
        let mut busy = Vec::with_capacity(3 * micro_batches);
        // Per micro-batch in flight: the stage's input (a leaf, except on the first stage)
        // and its output (the loss, on the last), unless it is to be recomputed.
        let mut held: HashMap<usize, (Var, Option<Var>)> = HashMap::new();
        for work in one_f_one_b(self.index, self.count, micro_batches) {
            match work {
                Work::Forward(m) => {
                    let rows = shared.rows[m].clone();
                    let x = match &self.receive_forward {
                        None => (shared.input)(rows.clone(), &self.device)?,
                        Some(inbox) => {
                            Var::leaf(self.receive(&**inbox, m, "activation", &mut busy)?)
                        }
                    };
                    let (start, watch) = (Instant::now(), Stopwatch::start(&*self.device));
                    let y = if self.recompute {
                        no_grad(|| self.forward(shared, &x, m))?
                    } else {
                        self.forward(shared, &x, m)?
                    };
                    if let Some(outbox) = &self.send_forward {
                        outbox.send(m, y.tensor())?;
                    }
                    held.insert(m, (x, (!self.recompute).then_some(y)));
                    self.device.synchronize()?;
                    busy.push(Busy::since(
                        "forward",
                        format!("forward {m}"),
                        start,
                        &watch,
                        &self.device,
                    ));
                }
                Work::Backward(m) => {
                    let (x, y) = held.remove(&m).ok_or_else(|| self.out_of_order(m))?;
                    let seed = match &self.receive_back {
                        None => None,
                        Some(inbox) => Some(self.receive(&**inbox, m, "gradient", &mut busy)?),
                    };
                    let (start, watch) = (Instant::now(), Stopwatch::start(&*self.device));
                    let y = match y {
                        Some(y) => y,
                        None => self.forward(shared, &x, m)?,
                    };
                    let seed = match seed {
                        Some(seed) => seed,
                        None => Tensor::ones(
                            y.tensor().shape().clone(),
                            y.tensor().dtype(),
                            &self.device,
                        )?,
                    };
                    let mut input_grad = None;
                    y.backward_streaming(seed, |id, g| {
                        if id == x.id() {
                            input_grad = Some(g);
                            Ok(())
                        } else {
                            grads.add(id, g)
                        }
                    })?;
                    if let Some(outbox) = &self.send_back {
                        let g = match input_grad {
                            Some(g) => g,
                            // The loss does not depend on this stage's input.
                            None => Tensor::zeros(
                                x.tensor().shape().clone(),
                                x.tensor().dtype(),
                                &self.device,
                            )?,
                        };
                        outbox.send(m, &g)?;
                    }
                    if last {
                        losses.push(y.tensor().clone());
                    }
                    self.device.synchronize()?;
                    busy.push(Busy::since(
                        "backward",
                        format!("backward {m}"),
                        start,
                        &watch,
                        &self.device,
                    ));
                }
            }
        }
        Ok(StageOutcome { grads, losses, busy })
    }

    /// The stage's layers on micro-batch `m`'s input; on the last stage, its share of the
    /// batch's loss.
    fn forward<M: Layered>(&self, shared: &Shared<'_, M>, x: &Var, m: usize) -> Result<Var> {
        let rows = shared.rows[m].clone();
        let ctx = Ctx::train(shared.step).rows_from(rows.start);
        let y = shared.model.forward_layers(self.layers.clone(), x, &ctx)?;
        if self.index + 1 == self.count { self.batch_loss(shared, &y, rows) } else { Ok(y) }
    }

    /// Micro-batch `m`'s message from a neighbour, on this stage's device.
    fn receive(
        &self,
        inbox: &(dyn Inbox + Send + '_),
        m: usize,
        what: &str,
        busy: &mut Vec<Busy>,
    ) -> std::result::Result<Tensor, Stop> {
        let (start, watch) = (Instant::now(), Stopwatch::start(&*self.device));
        let moved = inbox.receive(m, &self.device)?;
        busy.push(Busy::since("transfer", format!("{what} {m} in"), start, &watch, &self.device));
        Ok(moved)
    }

    /// The summed per-row losses of `rows` over the batch: this micro-batch's part of the
    /// batch's mean loss.
    fn batch_loss<M>(&self, shared: &Shared<'_, M>, y: &Var, rows: Range<usize>) -> Result<Var> {
        let per_row = (shared.loss)(y, rows.clone(), &self.device)?;
        if per_row.dims().first() != Some(&rows.len()) {
            return Err(Error::Shape {
                op: "Pipeline::step".into(),
                device: self.device.info().label(),
                detail: format!(
                    "the loss of rows {rows:?} is {:?}: its first dim must be the {} rows",
                    per_row.tensor(),
                    rows.len()
                ),
            });
        }
        per_row.sum_all()?.affine(1.0 / shared.batch as f64, 0.0)
    }

    fn out_of_order(&self, m: usize) -> Error {
        Error::InvalidArgument {
            op: "Pipeline::step".into(),
            device: self.device.info().label(),
            detail: format!("stage {} got micro-batch work out of order at {m}", self.index),
        }
    }
}
