use crate::train::{Init, Param, ParamStore, Var};
use crate::{DType, Result};

/// Layer normalisation over the last dim, with a learned scale and shift.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(store: &ParamStore, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: store.param("weight", [dim], Init::Ones)?,
            bias: store.param("bias", [dim], Init::Zeros)?,
            eps: 1e-5,
        })
    }

    /// Statistics in f32 whatever `x`'s dtype (as PyTorch's autocast does): a half-precision
    /// variance loses the small values and its gradient overflows.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let axis = x.rank().saturating_sub(1);
        let dtype = x.tensor().dtype();
        let x = x.cast(DType::F32)?;
        let centred = x.sub(&x.mean_keepdim(axis)?)?;
        let variance = centred.square()?.mean_keepdim(axis)?;
        let normed = centred.mul(&variance.affine(1.0, self.eps)?.rsqrt()?)?;
        normed.mul(&self.weight.var())?.add(&self.bias.var())?.cast(dtype)
    }
}

/// Root-mean-square normalisation over the last dim (no centring, no shift).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(store: &ParamStore, dim: usize) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: store.param("weight", [dim], Init::Ones)?, eps: 1e-6 })
    }

    /// Statistics in f32 whatever `x`'s dtype, like [`LayerNorm`].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let axis = x.rank().saturating_sub(1);
        let dtype = x.tensor().dtype();
        let x = x.cast(DType::F32)?;
        let scale = x.square()?.mean_keepdim(axis)?.affine(1.0, self.eps)?.rsqrt()?;
        x.mul(&scale)?.mul(&self.weight.var())?.cast(dtype)
    }
}
