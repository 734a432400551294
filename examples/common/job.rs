//! One process's fleet, or (with `--distributed`, feature `mpi`) one MPI rank's fleet
//! trained with all the others as one job.

use std::ops::Range;

use manychips::train::nn::Ctx;
use manychips::train::optim::Optimizer;
use manychips::train::{DataParallel, StepReport, Var};
use manychips::{DeviceRef, Result};

pub enum Job<M> {
    Local(DataParallel<M>),
    #[cfg(feature = "mpi")]
    Ranks(manychips::train::distributed::Distributed<M>),
}

impl<M: Send + Sync + 'static> Job<M> {
    /// `distributed` joins the MPI job this process was launched in (mpirun, srun).
    pub fn new(local: DataParallel<M>, distributed: bool) -> std::result::Result<Job<M>, String> {
        if !distributed {
            return Ok(Job::Local(local));
        }
        #[cfg(feature = "mpi")]
        {
            let ranks = manychips::train::distributed::Ranks::init().map_err(|e| e.to_string())?;
            Ok(Job::Ranks(manychips::train::distributed::Distributed::new(ranks, local)))
        }
        #[cfg(not(feature = "mpi"))]
        Err("--distributed needs a build with `--features mpi`".into())
    }

    pub fn step<F>(&mut self, batch: usize, loss: F, opt: &mut dyn Optimizer) -> Result<StepReport>
    where
        F: Fn(&M, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static,
    {
        match self {
            Job::Local(dp) => dp.step(batch, loss, opt),
            #[cfg(feature = "mpi")]
            Job::Ranks(job) => Ok(job.step(batch, loss, opt)?.local),
        }
    }

    pub fn dp(&self) -> &DataParallel<M> {
        match self {
            Job::Local(dp) => dp,
            #[cfg(feature = "mpi")]
            Job::Ranks(job) => &job.local,
        }
    }

    pub fn dp_mut(&mut self) -> &mut DataParallel<M> {
        match self {
            Job::Local(dp) => dp,
            #[cfg(feature = "mpi")]
            Job::Ranks(job) => &mut job.local,
        }
    }

    /// The process that prints and writes files: the only one, or rank 0.
    pub fn leads(&self) -> bool {
        match self {
            Job::Local(_) => true,
            #[cfg(feature = "mpi")]
            Job::Ranks(job) => job.ranks().rank() == 0,
        }
    }

    /// ` (rank 1 of 4)`, or nothing for one process.
    pub fn place(&self) -> String {
        match self {
            Job::Local(_) => String::new(),
            #[cfg(feature = "mpi")]
            Job::Ranks(job) => format!(" (rank {} of {})", job.ranks().rank(), job.ranks().size()),
        }
    }
}
