//! Optimizers, gradient clipping, learning-rate schedules and loss scaling. Updates are
//! tensor ops on the parameter's device, and so is the optimizer state.

mod adamw;
mod clip;
mod scaler;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use clip::{clip_grad_norm, grad_norm};
pub use scaler::LossScaler;
pub use schedule::LrSchedule;
pub use sgd::Sgd;

use super::{Grads, Param};
use crate::{Result, Tensor};

/// Updates parameters from their gradients.
pub trait Optimizer: Send {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &Grads) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
    /// The parameters it updates.
    fn params(&self) -> &[Param];
    /// Its state as named tensors (`<param>.<slot>`) plus the step count, for checkpoints.
    fn state(&self) -> (u64, Vec<(String, Tensor)>);
    /// Restores what [`Optimizer::state`] returned.
    fn load_state(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()>;
}

/// `grad` in the parameter's dtype (a half-precision gradient of an f32 master weight).
fn grad_for(param: &Param, grad: &Tensor) -> Result<Tensor> {
    let dtype = param.value().dtype();
    if grad.dtype() == dtype { Ok(grad.clone()) } else { grad.cast(dtype) }
}

/// Looks up `name` among saved state tensors, checking it fits `like`.
fn find_state(tensors: &[(String, Tensor)], name: &str, like: &Tensor) -> Result<Option<Tensor>> {
    let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) else { return Ok(None) };
    if t.dims() != like.dims() || t.dtype() != like.dtype() {
        return Err(crate::Error::Shape {
            op: "Optimizer::load_state".into(),
            device: like.device().info().label(),
            detail: format!("{name}: saved {t:?} does not fit {like:?}"),
        });
    }
    Ok(Some(t.to_device(like.device())?))
}
