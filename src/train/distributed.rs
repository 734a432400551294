//! Beyond one machine: MPI ranks (rsmpi over the system's Open MPI), each driving its
//! local fleet with a [`DataParallel`], trained as one (feature `mpi`).
//!
//! Each step the global batch is cut across ranks in proportion to the rows per second each
//! rank delivered so far (the ranks exchange their rates with an all-gather, so every rank
//! computes the same cut); every rank plans its rows over its own devices as before; the
//! gradients (each share's summed loss divided by the *global* batch) are added across ranks
//! with an all-reduce in buckets, so the update every rank applies is the one a single
//! process computes from the whole batch.
//!
//! The all-reduce overlaps the backward pass: the buckets hold the parameters in reverse
//! order (the last layers, whose gradients the backward pass finishes first, go first), and
//! a bucket is reduced on this thread as soon as every local share has sent its part, while
//! the replicas' threads go on with the earlier layers. Every rank reduces the same buckets
//! in the same order, whichever finishes first.
//!
//! Launch with the cluster's own launcher: `mpirun -np 4 target/release/examples/train_mlp
//! --distributed`, or `srun -n 4 …` under Slurm.

use std::ops::Range;
use std::time::Instant;

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cluster::Network;
use super::nn::Ctx;
use super::optim::Optimizer;
use super::parallel::ranges;
use super::{DataParallel, Grads, Param, StepReport, Var};
use crate::plan::proportional;
use crate::{DType, DeviceRef, Error, Result, Tensor};

/// Gradient bytes per all-reduce (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// This process's place among the MPI ranks. Initialises MPI once; dropping it finalises.
pub struct Ranks {
    // Keeps MPI initialised while the communicator is in use.
    _universe: Universe,
    world: SimpleCommunicator,
    /// Whether MPI may be called from several threads at once (a pipeline's stage sends
    /// on one thread while it receives on another).
    multiple: bool,
}

fn mpi_error(detail: impl Into<String>) -> Error {
    Error::Unavailable { backend: "mpi".into(), reason: detail.into() }
}

impl Ranks {
    /// Initialises MPI, asking for calls from several threads at once (which a pipeline
    /// over ranks needs; data-parallel steps call it from one thread). A second call in one
    /// process is an `Err` (MPI initialises once).
    pub fn init() -> Result<Ranks> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| {
                mpi_error(
                    "MPI is already initialised in this process (Ranks::init was called twice)",
                )
            })?;
        let world = universe.world();
        Ok(Ranks { _universe: universe, world, multiple: threading == Threading::Multiple })
    }

    /// True when MPI accepted calls from several threads at once.
    pub fn threads_multiple(&self) -> bool {
        self.multiple
    }

    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// Every rank's value, in rank order.
    pub fn all_gather(&self, value: f64) -> Vec<f64> {
        let mut all = vec![0.0f64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }

    /// The sum over ranks of `value`.
    pub fn sum(&self, value: f64) -> f64 {
        let mut total = 0.0f64;
        self.world.all_reduce_into(&value, &mut total, SystemOperation::sum());
        total
    }

    /// Element-wise sum over ranks of `send` into `recv` (of the same length).
    pub fn sum_into(&self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        if send.len() != recv.len() {
            return Err(Error::InvalidArgument {
                op: "Ranks::sum_into".into(),
                device: format!("rank {}", self.rank()),
                detail: format!("{} values into {}", send.len(), recv.len()),
            });
        }
        self.world.all_reduce_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Ends every rank of the job with `code` (`MPI_Abort`): for a failure the other ranks
    /// cannot learn of and would wait on forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The rows of a `batch` each rank gets, in proportion to `rates` (largest remainders;
/// every rank computes the same cut from the same all-gathered rates).
pub fn rank_rows(rates: &[f64], batch: usize) -> Vec<Range<usize>> {
    // No usable rate anywhere (nothing measured yet): an even cut.
    let shares = proportional(rates, batch)
        .or_else(|| proportional(&vec![1.0; rates.len()], batch))
        .unwrap_or_default();
    ranges(&shares, 0)
}

/// Consecutive ranges of `params` of at least `bytes` of f32 gradients each (but one
/// parameter per range at least), the last parameters first: the order in which a backward
/// pass finishes them, when the model registers its layers in forward order.
pub fn buckets(params: &[Param], bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut end = params.len();
    while end > 0 {
        let mut start = end;
        let mut size = 0;
        while start > 0 && (start == end || size < bytes) {
            start -= 1;
            size += params[start].value().numel() * 4;
        }
        out.push(start..end);
        end = start;
    }
    out
}

/// What one distributed step did on this rank.
#[derive(Clone, Debug)]
pub struct DistributedReport {
    /// The local fleet's step (its `loss` is the global batch's mean loss).
    pub local: StepReport,
    /// Rows of the global batch each rank computed.
    pub rank_rows: Vec<Range<usize>>,
    /// Time inside the gradient all-reduces (host copies included, and the wait for ranks
    /// that reach a bucket later).
    pub all_reduce_s: f64,
    /// The part of the all-reduce the step waited for after this rank's backward passes
    /// had ended (all of it without overlap).
    pub exposed_s: f64,
    pub all_reduce_bytes: usize,
}

/// Host buffers for one bucket's all-reduce, kept from step to step.
#[derive(Default)]
struct Staging {
    send: Vec<f32>,
    recv: Vec<f32>,
}

impl Staging {
    /// Sums the gradients of `params` over the ranks, in place in `grads`; a parameter
    /// this rank has no gradient for contributes zeros. Two host copies: device to `send`,
    /// and `recv` to the device.
    fn all_reduce(
        &mut self,
        ranks: &Ranks,
        device: &DeviceRef,
        params: &[Param],
        grads: &mut Grads,
    ) -> Result<usize> {
        let n: usize = params.iter().map(|p| p.value().numel()).sum();
        self.send.resize(n, 0.0);
        self.recv.resize(n, 0.0);
        let mut at = 0;
        for p in params {
            let part = &mut self.send[at..at + p.value().numel()];
            match grads.get(p.id()) {
                Some(g) if g.dtype() == DType::F32 => {
                    g.read_bytes_into(bytemuck::cast_slice_mut(part))?
                }
                Some(g) => g.cast(DType::F32)?.read_bytes_into(bytemuck::cast_slice_mut(part))?,
                None => part.fill(0.0),
            }
            at += part.len();
        }
        ranks.sum_into(&self.send, &mut self.recv)?;
        let mut at = 0;
        for p in params {
            let value = p.value();
            let len = value.numel();
            let summed =
                Tensor::from_slice(&self.recv[at..at + len], value.shape().clone(), device)?;
            let summed =
                if value.dtype() == DType::F32 { summed } else { summed.cast(value.dtype())? };
            grads.insert(p.id(), summed);
            at += len;
        }
        Ok(4 * n)
    }
}

/// A [`DataParallel`] fleet on every rank, trained as one.
pub struct Distributed<M> {
    ranks: Ranks,
    pub local: DataParallel<M>,
    /// Rows per second this rank delivered (learned like a device's cost).
    rate: Option<f64>,
    /// Fixed per-rank weights instead of measured rates.
    fixed: Option<Vec<f64>>,
    bucket_bytes: usize,
    /// The all-reduce cost measured at the first step (latency + bytes/bandwidth).
    network: Option<Network>,
    /// Reduce buckets during the backward pass (otherwise after it).
    overlap: bool,
    staging: Staging,
}

impl<M: Send + Sync + 'static> Distributed<M> {
    pub fn new(ranks: Ranks, local: DataParallel<M>) -> Distributed<M> {
        Distributed {
            ranks,
            local,
            rate: None,
            fixed: None,
            bucket_bytes: BUCKET_BYTES,
            network: None,
            overlap: true,
            staging: Staging::default(),
        }
    }

    pub fn ranks(&self) -> &Ranks {
        &self.ranks
    }

    /// The communicator back, for another job in the same process (MPI initialises once).
    pub fn into_ranks(self) -> Ranks {
        self.ranks
    }

    /// Cut every batch across ranks by these weights (one per rank) instead of by measured
    /// rates; `None` returns to the rates.
    pub fn set_fixed_split(&mut self, weights: Option<Vec<f64>>) -> Result<()> {
        if let Some(w) = &weights
            && w.len() != self.ranks.size()
        {
            return Err(Error::InvalidArgument {
                op: "Distributed::set_fixed_split".into(),
                device: format!("rank {}", self.ranks.rank()),
                detail: format!("{} weights for {} ranks", w.len(), self.ranks.size()),
            });
        }
        self.fixed = weights;
        Ok(())
    }

    /// Fixes the bucket size (otherwise the first step measures the network and picks it).
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes.max(4);
        self.network.get_or_insert(Network { latency_s: 0.0, bytes_per_s: f64::INFINITY });
    }

    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    /// Reduce each bucket as soon as the backward passes have finished it (the default), or
    /// all of them after the backward passes (same result; for comparison).
    pub fn set_overlap(&mut self, overlap: bool) {
        self.overlap = overlap;
    }

    /// The all-reduce cost measured so far (`None` before the first step).
    pub fn network(&self) -> Option<Network> {
        self.network
    }

    /// Measures the all-reduce between the ranks (4 KiB and 16 MiB, median of 3 each; a
    /// collective call) and sizes the buckets so their latencies cost at most 10% of their
    /// transfer time.
    pub fn calibrate_network(&mut self) -> Result<Network> {
        let time = |n: usize| -> Result<(f64, f64)> {
            let (send, mut recv) = (vec![0f32; n], vec![0f32; n]);
            let mut runs = Vec::new();
            for _ in 0..3 {
                self.ranks.barrier();
                let t = Instant::now();
                self.ranks.sum_into(&send, &mut recv)?;
                runs.push(t.elapsed().as_secs_f64());
            }
            runs.sort_by(f64::total_cmp);
            Ok(((4 * n) as f64, runs[1]))
        };
        let small = time(1 << 10)?;
        let large = time(1 << 22)?;
        let network = Network::fit(small, large);
        // Every rank must pick the same buckets: use the slowest rank's figures.
        let latency = self.ranks.all_gather(network.latency_s).into_iter().fold(0.0, f64::max);
        let bandwidth =
            self.ranks.all_gather(network.bytes_per_s).into_iter().fold(f64::INFINITY, f64::min);
        let network = Network { latency_s: latency, bytes_per_s: bandwidth };
        self.bucket_bytes = network.bucket_for(self.ranks.size(), 0.1) as usize;
        self.network = Some(network);
        tracing::info!(
            latency_us = network.latency_s * 1e6,
            gb_per_s = network.bytes_per_s / 1e9,
            bucket_mib = self.bucket_bytes as f64 / 1048576.0,
            "distributed: measured the all-reduce"
        );
        Ok(network)
    }

    /// One step over a global batch of `batch` rows, the same call on every rank. `loss`
    /// sees global row numbers, as with [`DataParallel::step`].
    pub fn step<F>(
        &mut self,
        batch: usize,
        loss: F,
        optimizer: &mut dyn Optimizer,
    ) -> Result<DistributedReport>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        if self.network.is_none() {
            self.calibrate_network()?;
        }
        // Before any measurement every rank claims the same rate: an even cut.
        let rates = match &self.fixed {
            Some(w) => w.clone(),
            None => self.ranks.all_gather(self.rate.unwrap_or(1.0)),
        };
        let rows = rank_rows(&rates, batch);
        let mine = rows[self.ranks.rank()].clone();
        let buckets = buckets(self.local.params(), self.bucket_bytes);
        let device = self.local.devices()[0].clone();
        let (ranks, staging) = (&self.ranks, &mut self.staging);
        let (mut bytes, mut all_reduce_s) = (0, 0.0);
        let mut reduce = |params: &[Param], grads: &mut Grads| -> Result<()> {
            let t = Instant::now();
            bytes += staging.all_reduce(ranks, &device, params, grads)?;
            all_reduce_s += t.elapsed().as_secs_f64();
            Ok(())
        };
        let started = Instant::now();
        let mut gradients = if self.overlap {
            self.local.gradients_bucketed(mine.clone(), batch, loss, &buckets, &mut reduce)?
        } else {
            let mut gradients = self.local.gradients(mine.clone(), batch, loss)?;
            let params = self.local.params();
            for bucket in &buckets {
                reduce(&params[bucket.clone()], &mut gradients.grads)?;
            }
            gradients
        };
        let exposed_s = (started.elapsed().as_secs_f64() - gradients.computed_s).max(0.0);
        let compute_s = gradients.computed_s;
        gradients.loss = self.ranks.sum(gradients.loss);
        let local = self.local.update(gradients, optimizer)?;
        if !mine.is_empty() && compute_s > 0.0 {
            let observed = mine.len() as f64 / compute_s;
            self.rate = Some(crate::fleet::follow(self.rate, observed));
        }
        Ok(DistributedReport {
            local,
            rank_rows: rows,
            all_reduce_s,
            exposed_s,
            all_reduce_bytes: bytes,
        })
    }

    /// Adds every rank's gradients of the master parameters, bucket by bucket (the same
    /// buckets as [`step`](Self::step)); a parameter this rank has no gradient for
    /// contributes zeros. Returns the bytes reduced.
    pub fn all_reduce_grads(&mut self, grads: &mut Grads) -> Result<usize> {
        let device = self.local.devices()[0].clone();
        let params = self.local.params();
        let mut total = 0;
        for bucket in buckets(params, self.bucket_bytes) {
            total += self.staging.all_reduce(&self.ranks, &device, &params[bucket], grads)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_get_rows_by_rate() {
        assert_eq!(rank_rows(&[1.0, 1.0], 10), vec![0..5, 5..10]);
        assert_eq!(rank_rows(&[1.0, 3.0], 8), vec![0..2, 2..8]);
        assert_eq!(rank_rows(&[0.0, f64::NAN], 4), vec![0..2, 2..4]);
        assert_eq!(rank_rows(&[2.0], 7), vec![0..7]);
    }
}
