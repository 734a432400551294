//! Training: reverse-mode autograd over [`Tensor`](crate::Tensor) ops, layers, losses,
//! optimizers, and data-parallel steps over a fleet of unlike devices.
//!
//! ```no_run
//! use manychips::train::{nn, optim::{AdamW, Optimizer}, ParamStore, Var};
//! # fn main() -> manychips::Result<()> {
//! let cpu: manychips::DeviceRef = std::sync::Arc::new(manychips::CpuDevice::new()?);
//! let store = ParamStore::new(&cpu, 0);
//! let layer = nn::Linear::new(&store.sub("fc"), 4, 3, true)?;
//! let mut opt = AdamW::new(store.params(), 1e-2)?;
//! let x = Var::constant(manychips::Tensor::randn(0.0, 1.0, [8, 4], manychips::DType::F32, 1, &cpu)?);
//! let loss = nn::cross_entropy(&layer.forward(&x)?, &[0, 1, 2, 0, 1, 2, 0, 1])?;
//! let grads = loss.backward()?;
//! opt.step(&grads)?;
//! # Ok(()) }
//! ```

pub(crate) mod backward;
pub mod checkpoint;
pub mod cluster;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod models;
pub mod nn;
pub mod optim;
mod parallel;
mod params;
pub mod pipeline;
mod var;
mod var_ops;

pub use checkpoint::{Checkpoints, Snapshot};
pub use parallel::{
    DataParallel, DeviceStep, FaultPolicy, FleetEvent, Gradients, PROBE_EVERY, StepReport,
};
pub use params::{Init, Param, ParamStore};
pub use pipeline::{Layered, Pipeline, PipelinePlan};
pub use var::{Grads, Var, VarId, WeightGrads, is_grad_enabled, no_grad};
