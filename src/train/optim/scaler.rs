use super::grad_norm;
use crate::Result;
use crate::train::{Grads, Param, Var};

/// Dynamic loss scaling for f16 training: the loss is multiplied by `scale` so small
/// gradients survive f16; when a gradient overflows the step is skipped and the scale
/// halves, and after `growth_interval` good steps it doubles.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: u64,
    good_steps: u64,
    pub skipped: u64,
}

impl Default for LossScaler {
    /// PyTorch's GradScaler defaults: 2¹⁶, doubling every 2000 good steps.
    fn default() -> Self {
        LossScaler { scale: 65536.0, growth_interval: 2000, good_steps: 0, skipped: 0 }
    }
}

impl LossScaler {
    /// `scale` finite and ≥ 1, `growth_interval` ≥ 1, else an `Err`.
    pub fn new(scale: f64, growth_interval: u64) -> Result<LossScaler> {
        let scaler = LossScaler { scale, growth_interval, ..LossScaler::default() };
        scaler.check()?;
        Ok(scaler)
    }

    /// `Err` unless its fields make sense (one read back from a checkpoint may not): a
    /// finite scale ≥ 1 and a growth interval ≥ 1.
    pub fn check(&self) -> Result<()> {
        super::hyper("LossScaler", "scale", self.scale, 1.0..=f64::MAX)?;
        if self.growth_interval == 0 {
            return Err(crate::Error::InvalidArgument {
                op: "LossScaler".into(),
                device: "-".into(),
                detail: "growth_interval 0: need at least 1 step".into(),
            });
        }
        Ok(())
    }

    pub fn scale_loss(&self, loss: &Var) -> Result<Var> {
        loss.affine(self.scale, 0.0)
    }

    /// Divides the gradients by the scale. Returns false (and lowers the scale) when one of
    /// them is not finite: the caller skips this step's update.
    pub fn unscale(&mut self, params: &[Param], grads: &mut Grads) -> Result<bool> {
        let inv = 1.0 / self.scale;
        for param in params {
            if let Some(g) = grads.remove(param.id()) {
                grads.insert(param.id(), g.affine(inv, 0.0)?);
            }
        }
        let finite = grad_norm(params, grads)?.is_finite();
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
        }
        Ok(finite)
    }
}
