//! A pipeline whose stages are MPI ranks (feature `mpi`): rank `r` runs stage `r` on one of
//! its devices or on a data-parallel group of them ([`StagePlan::for_rank`]), and the
//! activations and their gradients cross between ranks as MPI messages. The same stage code runs as within one process ([`StageJob`]), so `n` ranks
//! compute what one process computes over the same layers, bit for bit on like devices.
//!
//! A stage receives on its own thread and sends from a thread of its own, so two
//! neighbours sending to each other at once (a forward one way, a backward the other) never
//! wait on each other: MPI must accept calls from several threads (`MPI_THREAD_MULTIPLE`,
//! which Open MPI gives). A rank whose stage fails once the step's messages have started
//! prints the error and ends the whole job (`MPI_Abort`): its neighbours would otherwise
//! wait for its messages forever. Resume from the last checkpoints.

use std::ops::Range;
use std::sync::mpsc::{Sender, channel};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Layered;
use super::group::{Helper, add_gradients, helpers, take_values};
use super::plan::{HelperPlan, StagePlan};
use super::schedule::one_f_one_b;
use super::stage::{Inbox, Outbox, Place, Shared, StageJob, Stop, even_shares};
use crate::train::checkpoint::{HostTensor, Snapshot};
use crate::train::distributed::Ranks;
use crate::train::optim::Optimizer;
use crate::train::parallel::ranges;
use crate::train::{Param, Var};
use crate::{DType, DeviceRef, Error, Result, Tensor};

/// MPI tags: activations travel forward, their gradients back.
const FORWARD: i32 = 11;
const BACKWARD: i32 = 12;

/// This rank's stage of a pipeline over ranks.
pub struct RankPipeline<M> {
    ranks: Ranks,
    model: M,
    /// Copies of the model for this rank's helpers.
    copies: Vec<M>,
    /// Every rank's layers, in rank order.
    layers: Vec<Range<usize>>,
    device: DeviceRef,
    params: Vec<Param>,
    /// The rest of this rank's group, and each member's share of the rows (the device's
    /// first).
    helpers: Vec<Helper>,
    shares: Vec<f64>,
    recompute: Vec<usize>,
    optimizer: Box<dyn Optimizer>,
    micro_batches: usize,
    step: u64,
}

/// This rank's devices: its own, its helpers' (from a plan), each one's share of the rows.
struct Local<'a> {
    device: DeviceRef,
    helpers: &'a [HelperPlan],
    shares: Vec<f64>,
    recompute: Vec<usize>,
}

fn invalid(device: &DeviceRef, detail: String) -> Error {
    Error::InvalidArgument { op: "RankPipeline".into(), device: device.info().label(), detail }
}

impl<M: Layered> RankPipeline<M> {
    /// Rank `r` of `ranks` runs layers `layers[r]` of `model` on `device`; its parameters
    /// move there and `optimizer` is built over them. Every rank passes the same `layers`
    /// (one contiguous range per rank, together every layer) and `micro_batches`.
    pub fn new(
        ranks: Ranks,
        model: M,
        layers: Vec<Range<usize>>,
        device: DeviceRef,
        micro_batches: usize,
        optimizer: impl FnOnce(Vec<Param>) -> Result<Box<dyn Optimizer>>,
    ) -> Result<RankPipeline<M>> {
        let alone = Local { device, helpers: &[], shares: vec![1.0], recompute: Vec::new() };
        RankPipeline::placed(ranks, model, Vec::new(), layers, alone, micro_batches, optimizer)
    }

    /// [`new`](Self::new) with this rank's stage on `stage`: its layers (`layers[rank]`)
    /// planned over this machine's devices ([`StagePlan::for_rank`]), whose helpers each
    /// run one of `copies` (more instances of the model, built alike; they take the
    /// model's values). Each micro-batch's rows are cut among the devices by the plan's
    /// shares, and the stage recomputes its activations where the plan says so.
    pub fn with_stage(
        ranks: Ranks,
        model: M,
        copies: Vec<M>,
        layers: Vec<Range<usize>>,
        stage: &StagePlan,
        micro_batches: usize,
        optimizer: impl FnOnce(Vec<Param>) -> Result<Box<dyn Optimizer>>,
    ) -> Result<RankPipeline<M>> {
        if let Some(host) = stage.state_on.first() {
            return Err(invalid(
                &stage.device,
                format!(
                    "the stage plan lodges its optimizer state on {}, another stage's device: a \
                     rank keeps its own (plan it with StagePlan::for_rank)",
                    host.label
                ),
            ));
        }
        let mine = layers.get(ranks.rank()).cloned();
        if mine.as_ref() != Some(&stage.layers) {
            return Err(invalid(
                &stage.device,
                format!("the stage plan has layers {:?}, this rank {mine:?}", stage.layers),
            ));
        }
        let local = Local {
            device: stage.device.clone(),
            helpers: &stage.helpers,
            shares: stage.shares(),
            recompute: stage.recompute.clone(),
        };
        RankPipeline::placed(ranks, model, copies, layers, local, micro_batches, optimizer)
    }

    /// Checks the ranks' layers, moves this rank's parameters to its device (and copies
    /// them to its helpers), and builds its optimizer.
    fn placed(
        ranks: Ranks,
        model: M,
        copies: Vec<M>,
        layers: Vec<Range<usize>>,
        local: Local<'_>,
        micro_batches: usize,
        optimizer: impl FnOnce(Vec<Param>) -> Result<Box<dyn Optimizer>>,
    ) -> Result<RankPipeline<M>> {
        let device = local.device;
        if !ranks.threads_multiple() {
            return Err(Error::Unavailable {
                backend: "mpi".into(),
                reason: "a pipeline over ranks needs MPI_THREAD_MULTIPLE, which this MPI \
                         library did not grant"
                    .into(),
            });
        }
        if layers.len() != ranks.size() {
            return Err(invalid(
                &device,
                format!("{} layer ranges for {} ranks", layers.len(), ranks.size()),
            ));
        }
        let mut next = 0;
        for (r, range) in layers.iter().enumerate() {
            if range.start != next || range.is_empty() {
                return Err(invalid(
                    &device,
                    format!("rank {r} has layers {range:?}: ranks must cover layers in order"),
                ));
            }
            next = range.end;
        }
        if next != model.depth() || micro_batches == 0 {
            return Err(invalid(
                &device,
                format!(
                    "the ranks' layers end at {next} of the model's {}, with {micro_batches} \
                     micro-batches",
                    model.depth()
                ),
            ));
        }
        let mine = layers[ranks.rank()].clone();
        let params = model.params_of(mine.clone());
        for param in &params {
            param.move_to(&device)?;
        }
        let helpers = helpers(&copies, &mine, local.helpers, &params)?;
        let optimizer = optimizer(params.clone())?;
        Ok(RankPipeline {
            ranks,
            model,
            copies,
            layers,
            device,
            params,
            helpers,
            shares: local.shares,
            recompute: local.recompute,
            optimizer,
            micro_batches,
            step: 0,
        })
    }

    pub fn ranks(&self) -> &Ranks {
        &self.ranks
    }

    /// This rank's parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One step over a batch of `batch` rows, as [`Pipeline::step`](super::Pipeline::step):
    /// `input` runs on the first rank, `loss` on the last. Every rank calls it; every rank
    /// gets the batch's mean loss.
    pub fn step<I, L>(&mut self, batch: usize, input: I, loss: L) -> Result<f64>
    where
        I: Fn(Range<usize>, &DeviceRef) -> Result<Var> + Sync,
        L: Fn(&Var, Range<usize>, &DeviceRef) -> Result<Var> + Sync,
    {
        if batch < self.micro_batches {
            return Err(invalid(
                &self.device,
                format!("a batch of {batch} rows cannot make {} micro-batches", self.micro_batches),
            ));
        }
        let (rank, count) = (self.ranks.rank(), self.ranks.size());
        let rows = ranges(&even_shares(batch, self.micro_batches), 0);
        for helper in &self.helpers {
            take_values(helper, &self.params)?;
        }
        let shared = Shared {
            model: &self.model,
            copies: &self.copies,
            input: &input,
            loss: &loss,
            rows: &rows,
            batch,
            step: self.step,
        };
        let outcome = std::thread::scope(|scope| {
            // A sending thread per neighbour; each ends when its outbox drops.
            let outbox = |peer: usize, tag: i32| -> Box<dyn Outbox + Send> {
                let (tx, rx) = channel::<(Vec<u64>, Vec<u8>)>();
                scope.spawn(move || {
                    let world = SimpleCommunicator::world();
                    let to = world.process_at_rank(peer as i32);
                    for (header, bytes) in rx {
                        to.send_with_tag(&header[..], tag);
                        to.send_with_tag(&bytes[..], tag);
                    }
                });
                Box::new(RankOutbox(tx))
            };
            let job = StageJob {
                place: Place {
                    index: rank,
                    count,
                    device: self.device.clone(),
                    helpers: self.helpers.iter().map(|h| h.device.clone()).collect(),
                    shares: self.shares.clone(),
                    layers: self.layers[rank].clone(),
                    recompute: self.recompute.clone(),
                    work: one_f_one_b(rank, count, self.micro_batches),
                    turn: None,
                },
                send_forward: (rank + 1 < count).then(|| outbox(rank + 1, FORWARD)),
                receive_forward: (rank > 0)
                    .then(|| Box::new(RankInbox { peer: rank - 1, tag: FORWARD }) as _),
                send_back: (rank > 0).then(|| outbox(rank - 1, BACKWARD)),
                receive_back: (rank + 1 < count)
                    .then(|| Box::new(RankInbox { peer: rank + 1, tag: BACKWARD }) as _),
            };
            job.run(&shared)
        });
        let done = match outcome {
            Ok(done) => done,
            Err(stop) => {
                let error = match stop {
                    Stop::Failed(e) => e,
                    Stop::Neighbour => invalid(&self.device, "a neighbouring stage stopped".into()),
                };
                // Neighbours blocked in receives from this rank cannot learn of it.
                eprintln!("rank {rank} of {count}: pipeline stage failed, ending the job: {error}");
                self.ranks.abort(1);
            }
        };
        let mut parts = done.grads.into_iter();
        let mut grads = parts.next().unwrap_or_default();
        add_gradients(&self.helpers, &self.params, parts, &mut grads, &self.device)?;
        self.optimizer.step(&grads)?;
        self.step += 1;
        let local: f64 = done.losses.iter().map(|l| Ok(l.to_f64_vec()?[0])).sum::<Result<f64>>()?;
        Ok(self.ranks.sum(local))
    }

    /// This rank's parameters and optimizer state, by name: its part of a checkpoint.
    pub fn snapshot(&self, state: serde_json::Value) -> Result<Snapshot> {
        let (optimizer_step, tensors) = self.optimizer.state();
        Ok(Snapshot {
            step: self.step,
            params: self
                .params
                .iter()
                .map(|p| HostTensor::read(p.name(), &p.value()))
                .collect::<Result<_>>()?,
            optimizer_step,
            optimizer: tensors
                .iter()
                .map(|(n, t)| HostTensor::read(n, t))
                .collect::<Result<_>>()?,
            state,
        })
    }
}

/// Hands micro-batch `m`'s tensor to the sending thread: a header (micro-batch, dtype,
/// dims), then the bytes, read here so that a fault of this stage's device is this stage's
/// error.
struct RankOutbox(Sender<(Vec<u64>, Vec<u8>)>);

impl Outbox for RankOutbox {
    fn send(&self, m: usize, tensor: &Tensor) -> std::result::Result<(), Stop> {
        let dtype = DType::ALL.iter().position(|&d| d == tensor.dtype()).unwrap_or(0);
        let header: Vec<u64> = [m as u64, dtype as u64]
            .into_iter()
            .chain(tensor.dims().iter().map(|&d| d as u64))
            .collect();
        let bytes = tensor.to_bytes()?;
        self.0.send((header, bytes)).map_err(|_| Stop::Neighbour)
    }
}

/// Receives from rank `peer` on the stage's thread.
struct RankInbox {
    peer: usize,
    tag: i32,
}

impl Inbox for RankInbox {
    /// No: a thread waiting in an MPI receive from a rank that stopped would wait forever,
    /// and keep this stage from returning its error.
    fn read_ahead(&self) -> bool {
        false
    }

    fn receive(&self, m: usize, device: &DeviceRef) -> std::result::Result<Tensor, Stop> {
        let world = SimpleCommunicator::world();
        let from = world.process_at_rank(self.peer as i32);
        let (header, _) = from.receive_vec_with_tag::<u64>(self.tag);
        let (bytes, _) = from.receive_vec_with_tag::<u8>(self.tag);
        let fail = |detail: String| {
            Stop::Failed(Error::InvalidArgument {
                op: "RankPipeline::step".into(),
                device: device.info().label(),
                detail,
            })
        };
        let (&[got, dtype], dims) = header.split_at(2.min(header.len())) else {
            return Err(fail(format!(
                "a message header of {} words from rank {}",
                header.len(),
                self.peer
            )));
        };
        if got != m as u64 {
            return Err(fail(format!(
                "micro-batch {got} arrived from rank {} where {m} was due",
                self.peer
            )));
        }
        let dtype = DType::ALL
            .get(dtype as usize)
            .copied()
            .ok_or_else(|| fail(format!("dtype {dtype}")))?;
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        Ok(Tensor::from_bytes(&bytes, dims, dtype, device)?)
    }
}
