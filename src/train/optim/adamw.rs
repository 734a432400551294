use std::collections::HashMap;

use super::{Optimizer, check_lr, find_state, grad_for, hyper, next_step};
use crate::train::{Grads, Param, VarId};
use crate::{Result, Tensor};

/// Adam with decoupled weight decay (Loshchilov & Hutter): `w ← w(1 − lr·λ)`, then the Adam
/// step with bias-corrected moments.
pub struct AdamW {
    params: Vec<Param>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    moments: HashMap<VarId, (Tensor, Tensor)>,
    steps: u64,
}

impl AdamW {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01. A learning
    /// rate that is not finite or is negative is an `Err`.
    pub fn new(params: Vec<Param>, lr: f64) -> Result<AdamW> {
        check_lr("AdamW::new", lr)?;
        Ok(AdamW {
            params,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            moments: HashMap::new(),
            steps: 0,
        })
    }

    /// Decoupled weight decay λ: finite and ≥ 0.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Result<AdamW> {
        hyper("AdamW::with_weight_decay", "weight decay", weight_decay, 0.0..=f64::MAX)?;
        self.weight_decay = weight_decay;
        Ok(self)
    }

    /// The moments' decay rates, each in [0, 1).
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Result<AdamW> {
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            hyper("AdamW::with_betas", name, beta, 0.0..=BETA_MAX)?;
        }
        self.beta1 = beta1;
        self.beta2 = beta2;
        Ok(self)
    }

    /// The term added to the denominator: finite and ≥ 0.
    pub fn with_eps(mut self, eps: f64) -> Result<AdamW> {
        hyper("AdamW::with_eps", "eps", eps, 0.0..=f64::MAX)?;
        self.eps = eps;
        Ok(self)
    }

    pub fn betas(&self) -> (f64, f64) {
        (self.beta1, self.beta2)
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
}

/// Below 1: at β = 1 the bias correction 1 − βᵗ is zero.
const BETA_MAX: f64 = 1.0 - 1e-12;

impl Optimizer for AdamW {
    fn step(&mut self, grads: &Grads) -> Result<()> {
        let steps = next_step("AdamW::step", self.steps)?;
        // βᵗ for any step count (a huge one gives 0, not a wrapped exponent).
        let t = steps as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        let (correct1, correct2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        for param in &self.params {
            let Some(grad) = grads.get(param.id()) else { continue };
            let g = grad_for(param, grad)?;
            let w = param.value();
            let (m, v) = match self.moments.remove(&param.id()) {
                Some((m, v)) => (
                    m.affine(b1, 0.0)?.add(&g.affine(1.0 - b1, 0.0)?)?,
                    v.affine(b2, 0.0)?.add(&g.mul(&g)?.affine(1.0 - b2, 0.0)?)?,
                ),
                None => (g.affine(1.0 - b1, 0.0)?, g.mul(&g)?.affine(1.0 - b2, 0.0)?),
            };
            // lr·m̂/(√v̂ + ε) with m̂ = m/c1, v̂ = v/c2.
            let denom = v.affine(1.0 / correct2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
            let update = m.div(&denom)?.affine(self.lr / correct1, 0.0)?;
            let decayed = if self.weight_decay != 0.0 {
                w.affine(1.0 - self.lr * self.weight_decay, 0.0)?
            } else {
                w
            };
            param.set(decayed.sub(&update)?)?;
            self.moments.insert(param.id(), (m, v));
        }
        self.steps = steps;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        check_lr("AdamW::set_learning_rate", lr)?;
        self.lr = lr;
        Ok(())
    }

    fn state_slots(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let mut tensors = Vec::new();
        for p in &self.params {
            if let Some((m, v)) = self.moments.get(&p.id()) {
                tensors.push((format!("{}.exp_avg", p.name()), m.clone()));
                tensors.push((format!("{}.exp_avg_sq", p.name()), v.clone()));
            }
        }
        (self.steps, tensors)
    }

    fn load_state(&mut self, step: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        self.moments.clear();
        for param in &self.params {
            let like = param.value();
            let m = find_state(tensors, &format!("{}.exp_avg", param.name()), &like)?;
            let v = find_state(tensors, &format!("{}.exp_avg_sq", param.name()), &like)?;
            if let (Some(m), Some(v)) = (m, v) {
                self.moments.insert(param.id(), (m, v));
            }
        }
        self.steps = step;
        Ok(())
    }
}
