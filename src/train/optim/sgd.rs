use std::collections::HashMap;

use super::{Optimizer, check_lr, find_state, grad_for, hyper, next_step};
use crate::train::{Grads, Param, VarId};
use crate::{Result, Tensor};

/// Stochastic gradient descent with momentum and (coupled, L2) weight decay:
/// `v = μv + (g + λw)`, `w -= lr·v`.
pub struct Sgd {
    params: Vec<Param>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    velocity: HashMap<VarId, Tensor>,
    steps: u64,
}

impl Sgd {
    /// A learning rate that is not finite or is negative is an `Err`.
    pub fn new(params: Vec<Param>, lr: f64) -> Result<Sgd> {
        check_lr("Sgd::new", lr)?;
        Ok(Sgd { params, lr, momentum: 0.0, weight_decay: 0.0, velocity: HashMap::new(), steps: 0 })
    }

    /// Momentum μ in [0, 1].
    pub fn with_momentum(mut self, momentum: f64) -> Result<Sgd> {
        hyper("Sgd::with_momentum", "momentum", momentum, 0.0..=1.0)?;
        self.momentum = momentum;
        Ok(self)
    }

    /// L2 weight decay λ: finite and ≥ 0.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Result<Sgd> {
        hyper("Sgd::with_weight_decay", "weight decay", weight_decay, 0.0..=f64::MAX)?;
        self.weight_decay = weight_decay;
        Ok(self)
    }

    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Grads) -> Result<()> {
        let steps = next_step("Sgd::step", self.steps)?;
        for param in &self.params {
            let Some(grad) = grads.get(param.id()) else { continue };
            let w = param.value();
            let mut g = grad_for(param, grad)?;
            if self.weight_decay != 0.0 {
                g = g.add(&w.affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                g = match self.velocity.remove(&param.id()) {
                    Some(v) => v.affine(self.momentum, 0.0)?.add(&g)?,
                    None => g,
                };
                self.velocity.insert(param.id(), g.clone());
            }
            param.set(w.sub(&g.affine(self.lr, 0.0)?)?)?;
        }
        self.steps = steps;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_lr("Sgd::set_learning_rate", lr)?;
        self.lr = lr;
        Ok(())
    }

    fn state_slots(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 { &["velocity"] } else { &[] }
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let tensors = self
            .params
            .iter()
            .filter_map(|p| {
                self.velocity.get(&p.id()).map(|v| (format!("{}.velocity", p.name()), v.clone()))
            })
            .collect();
        (self.steps, tensors)
    }

    fn load_state(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        self.velocity.clear();
        for param in &self.params {
            let name = format!("{}.velocity", param.name());
            if let Some(v) = find_state(tensors, &name, &param.value())? {
                self.velocity.insert(param.id(), v);
            }
        }
        self.steps = step;
        Ok(())
    }
}
