use crate::train::backward::Backward;
use crate::train::{Init, Param, ParamStore, Var};
use crate::{DType, ReduceOp, Result, Tensor, programs};

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

    pub fn params(&self) -> Vec<Param> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    /// Statistics in f32 whatever `x`'s dtype (as PyTorch's autocast does): a half-precision
    /// variance loses the small values and its gradient overflows. One autograd node: the
    /// statistics, then one fused pass for the output (four passes over `x` in all); its
    /// backward is six passes and two sums over rows (see `Backward::LayerNorm`).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let axis = x.rank().saturating_sub(1);
        let dtype = x.tensor().dtype();
        let xf = x.tensor().cast(DType::F32)?;
        let mean = xf.mean_keepdim(axis)?;
        let squares = programs::centred_square();
        let variance =
            Tensor::fused_reduce(&[&xf, &mean], &squares, ReduceOp::Mean, axis, DType::F32)?;
        let rstd = Tensor::fused(&[&variance], &programs::rstd(self.eps), DType::F32)?;
        let (w, b) = (self.weight.var()?, self.bias.var()?);
        let (wt, bt) = (w.tensor(), b.tensor());
        let y = Tensor::fused(&[&xf, &mean, &rstd, wt, bt], &programs::layer_norm(), dtype)?;
        let backward = Backward::LayerNorm { axis, mean, rstd };
        Ok(Var::from_op(y, backward, &[x, &w, &b]))
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

    pub fn params(&self) -> Vec<Param> {
        vec![self.weight.clone()]
    }

    /// Statistics in f32 whatever `x`'s dtype, like [`LayerNorm`].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let axis = x.rank().saturating_sub(1);
        let dtype = x.tensor().dtype();
        let x = x.cast(DType::F32)?;
        let scale = x.square()?.mean_keepdim(axis)?.affine(1.0, self.eps)?.rsqrt()?;
        x.mul(&scale)?.mul(&self.weight.var()?)?.cast(dtype)
    }
}
