use std::collections::HashMap;

use super::{Optimizer, check_lr, find_state, grad_for, hyper, next_step};
use crate::train::{Grads, Param, VarId};
use crate::{Result, Tensor, programs};

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
            // Three passes over memory (the two moments, then the parameter), each a fused
            // program computing what the unfused ops did, in their order.
            let (m, v) = match self.moments.remove(&param.id()) {
                Some((m, v)) => (
                    Tensor::fused(&[&m, &g], &programs::moment(b1, false, false), m.dtype())?,
                    Tensor::fused(&[&v, &g], &programs::moment(b2, true, false), v.dtype())?,
                ),
                None => (
                    Tensor::fused(&[&g], &programs::moment(b1, false, true), g.dtype())?,
                    Tensor::fused(&[&g], &programs::moment(b2, true, true), g.dtype())?,
                ),
            };
            let wd = self.weight_decay;
            let update = programs::adamw_update(self.lr, wd, self.eps, correct1, correct2);
            param.set(Tensor::fused(&[&w, &m, &v], &update, w.dtype())?)?;
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
