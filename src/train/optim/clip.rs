use crate::train::{Grads, Param};
use crate::{DType, Result};

/// The global L2 norm of the gradients of `params` (computed in f32; one host read per
/// parameter).
pub fn grad_norm(params: &[Param], grads: &Grads) -> Result<f64> {
    let mut sum = 0.0;
    for param in params {
        let Some(g) = grads.get(param.id()) else { continue };
        let g = if g.dtype() == DType::F32 { g.clone() } else { g.cast(DType::F32)? };
        sum += g.mul(&g)?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(sum.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm`; returns the norm before
/// clipping (non-finite when a gradient overflowed: nothing is scaled then).
pub fn clip_grad_norm(params: &[Param], grads: &mut Grads, max_norm: f64) -> Result<f64> {
    super::hyper("clip_grad_norm", "max_norm", max_norm, 0.0..=f64::MAX)?;
    let norm = grad_norm(params, grads)?;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for param in params {
            if let Some(g) = grads.remove(param.id()) {
                grads.insert(param.id(), g.affine(scale, 0.0)?);
            }
        }
    }
    Ok(norm)
}
