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
    /// A schedule's rate for the next steps: finite and ≥ 0, else an `Err` and no change.
    fn set_learning_rate(&mut self, lr: f64) -> Result<()>;
    /// The parameters it updates.
    fn params(&self) -> &[Param];
    /// Its state as named tensors (`<param>.<slot>`) plus the step count, for checkpoints.
    fn state(&self) -> (u64, Vec<(String, Tensor)>);
    /// The slots of its per-parameter state (`exp_avg`, ...): a parameter that has state has
    /// all of them. Empty for an optimizer that keeps none (SGD without momentum).
    fn state_slots(&self) -> &'static [&'static str];
    /// Restores what [`Optimizer::state`] returned.
    fn load_state(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()>;
}

/// `Err` unless `value` is finite and within `range` (a hyper-parameter of `op`).
fn hyper(op: &str, name: &str, value: f64, range: std::ops::RangeInclusive<f64>) -> Result<()> {
    if value.is_finite() && range.contains(&value) {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument {
        op: op.into(),
        device: "-".into(),
        detail: format!(
            "{name} {value}: need a finite value in [{}, {}]",
            range.start(),
            range.end()
        ),
    })
}

/// The learning rate's range: any finite rate ≥ 0.
fn check_lr(op: &str, lr: f64) -> Result<()> {
    hyper(op, "learning rate", lr, 0.0..=f64::MAX)
}

/// One more optimizer step, or an `Err` where the counter would wrap (a hostile checkpoint's
/// step count must not silently restart the bias correction).
fn next_step(op: &str, steps: u64) -> Result<u64> {
    steps.checked_add(1).ok_or_else(|| crate::Error::InvalidArgument {
        op: op.into(),
        device: "-".into(),
        detail: format!("the step counter {steps} would overflow"),
    })
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
