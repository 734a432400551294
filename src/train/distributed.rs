//! Beyond one machine: MPI ranks (rsmpi over the system's Open MPI), each driving its
//! local fleet with a [`DataParallel`], trained as one (feature `mpi`).
//!
//! Each step the global batch is cut across ranks in proportion to the rows per second each
//! rank delivered so far (the ranks exchange their rates with an all-gather, so every rank
//! computes the same cut); every rank plans its rows over its own devices as before; the
//! gradients (each share's summed loss divided by the *global* batch) are added across ranks
//! with an all-reduce in buckets, so the update every rank applies is the one a single
//! process computes from the whole batch. The buckets are reduced one after another once
//! the backward pass is done; overlapping them with the backward pass (a bucket reduced
//! while later layers' gradients are still being computed) is not done yet.
//!
//! Launch with the cluster's own launcher: `mpirun -np 4 target/release/examples/train_mlp
//! --distributed`, or `srun -n 4 …` under Slurm.

use std::ops::Range;
use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::cluster::Network;
use super::nn::Ctx;
use super::optim::Optimizer;
use super::parallel::ranges;
use super::{DataParallel, Gradients, Grads, StepReport, Var};
use crate::plan::proportional;
use crate::{DType, DeviceRef, Error, Result, Tensor};

/// Gradient bytes per all-reduce (PyTorch DDP's default bucket is 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// This process's place among the MPI ranks. Initialises MPI once; dropping it finalises.
pub struct Ranks {
    // Keeps MPI initialised while the communicator is in use.
    _universe: Universe,
    world: SimpleCommunicator,
}

fn mpi_error(detail: impl Into<String>) -> Error {
    Error::Unavailable { backend: "mpi".into(), reason: detail.into() }
}

impl Ranks {
    /// Initialises MPI. A second call in one process is an `Err` (MPI initialises once).
    pub fn init() -> Result<Ranks> {
        let universe = mpi::initialize().ok_or_else(|| {
            mpi_error("MPI is already initialised in this process (Ranks::init was called twice)")
        })?;
        let world = universe.world();
        Ok(Ranks { _universe: universe, world })
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

    /// Element-wise sum over ranks, in place.
    pub fn sum_in_place(&self, data: &mut [f32]) {
        let send = data.to_vec();
        self.world.all_reduce_into(&send[..], data, SystemOperation::sum());
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&self) {
        self.world.barrier();
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

/// What one distributed step did on this rank.
#[derive(Clone, Debug)]
pub struct DistributedReport {
    /// The local fleet's step (its `loss` is the global batch's mean loss).
    pub local: StepReport,
    /// Rows of the global batch each rank computed.
    pub rank_rows: Vec<Range<usize>>,
    /// Time in the gradient all-reduce (host copies included).
    pub all_reduce_s: f64,
    pub all_reduce_bytes: usize,
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

    /// The all-reduce cost measured so far (`None` before the first step).
    pub fn network(&self) -> Option<Network> {
        self.network
    }

    /// Measures the all-reduce between the ranks (4 KiB and 16 MiB, median of 3 each; a
    /// collective call) and sizes the buckets so their latencies cost at most 10% of their
    /// transfer time.
    pub fn calibrate_network(&mut self) -> Network {
        let time = |n: usize| {
            let mut buf = vec![0f32; n];
            let mut runs: Vec<f64> = (0..3)
                .map(|_| {
                    self.ranks.barrier();
                    let t = Instant::now();
                    self.ranks.sum_in_place(&mut buf);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            ((4 * n) as f64, runs[1])
        };
        let small = time(1 << 10);
        let large = time(1 << 22);
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
        network
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
            self.calibrate_network();
        }
        // Before any measurement every rank claims the same rate: an even cut.
        let rates = match &self.fixed {
            Some(w) => w.clone(),
            None => self.ranks.all_gather(self.rate.unwrap_or(1.0)),
        };
        let rows = rank_rows(&rates, batch);
        let mine = rows[self.ranks.rank()].clone();
        let started = Instant::now();
        let mut gradients = self.local.gradients(mine.clone(), batch, loss)?;
        let compute_s = started.elapsed().as_secs_f64();
        let reduce_started = Instant::now();
        let bytes = self.all_reduce(&mut gradients)?;
        let all_reduce_s = reduce_started.elapsed().as_secs_f64();
        gradients.loss = self.ranks.sum(gradients.loss);
        let local = self.local.update(gradients, optimizer)?;
        if !mine.is_empty() && compute_s > 0.0 {
            let observed = mine.len() as f64 / compute_s;
            let rate =
                self.rate.map_or(observed, |r| r + crate::plan::LEARNING_RATE * (observed - r));
            self.rate = Some(rate);
        }
        Ok(DistributedReport { local, rank_rows: rows, all_reduce_s, all_reduce_bytes: bytes })
    }

    fn all_reduce(&self, gradients: &mut Gradients) -> Result<usize> {
        self.all_reduce_grads(&mut gradients.grads)
    }

    /// Adds every rank's gradients of the master parameters, bucket by bucket, in parameter
    /// order; a parameter this rank has no gradient for contributes zeros. Returns the bytes
    /// reduced. (What [`step`](Self::step) does between the two halves of a local step.)
    pub fn all_reduce_grads(&self, grads: &mut Grads) -> Result<usize> {
        let params = self.local.params().to_vec();
        let device = self.local.devices()[0].clone();
        let mut total = 0;
        let mut start = 0;
        while start < params.len() {
            // One bucket: parameters in order until it holds `bucket_bytes`.
            let mut end = start;
            let mut bytes = 0;
            while end < params.len() && (end == start || bytes < self.bucket_bytes) {
                bytes += params[end].value().numel() * 4;
                end += 1;
            }
            let mut flat: Vec<f32> = Vec::with_capacity(bytes / 4);
            for p in &params[start..end] {
                let n = p.value().numel();
                match grads.get(p.id()) {
                    Some(g) if g.dtype() == DType::F32 => flat.extend(g.to_vec::<f32>()?),
                    Some(g) => flat.extend(g.cast(DType::F32)?.to_vec::<f32>()?),
                    None => flat.extend(std::iter::repeat_n(0.0, n)),
                }
            }
            self.ranks.sum_in_place(&mut flat);
            let mut at = 0;
            for p in &params[start..end] {
                let value = p.value();
                let n = value.numel();
                let summed = Tensor::from_slice(&flat[at..at + n], value.shape().clone(), &device)?;
                let summed = if value.dtype() == DType::F32 {
                    summed
                } else {
                    summed.cast(value.dtype())?
                };
                grads.insert(p.id(), summed);
                at += n;
            }
            total += bytes;
            start = end;
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
