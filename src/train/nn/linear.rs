use std::ops::Range;

use super::Activation;
use crate::train::backward::Backward;
use crate::train::{Init, Param, ParamStore, Var};
use crate::{Result, Shape, Tensor};

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as in PyTorch (the transpose is a free view).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Linear {
    /// PyTorch's default init: both weight and bias uniform in ±1/√in.
    pub fn new(store: &ParamStore, inputs: usize, outputs: usize, bias: bool) -> Result<Linear> {
        let bound = 1.0 / (inputs.max(1) as f64).sqrt();
        let weight = store.param("weight", [outputs, inputs], Init::Uniform { bound })?;
        let bias = if bias {
            Some(store.param("bias", [outputs], Init::Uniform { bound })?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Its parameters: the weight, then the bias if it has one.
    pub fn params(&self) -> Vec<Param> {
        std::iter::once(self.weight.clone()).chain(self.bias.clone()).collect()
    }

    /// `x` is `[.., in]`; leading dims are folded into one so the matmul is one GEMM.
    /// Parameters are cast to `x`'s dtype (f32 master weights under bf16/f16 compute).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.forward_activated(x, None)
    }

    /// `act(forward(x))`; for ReLU and tanh the bias and the activation are one pass (and
    /// one pass back).
    pub fn forward_activated(&self, x: &Var, act: Option<Activation>) -> Result<Var> {
        self.forward_with(x, act, None)
    }

    /// `forward(x)`'s output features `outputs` alone, computed from those rows of the
    /// weight and bias: attention's query, key and value from one `qkv` layer, without
    /// computing the three together and splitting them (whose gradient is three
    /// zero-padded copies summed).
    pub fn forward_outputs(&self, x: &Var, outputs: Range<usize>) -> Result<Var> {
        self.forward_with(x, None, Some(outputs))
    }

    fn forward_with(
        &self,
        x: &Var,
        act: Option<Activation>,
        outputs: Option<Range<usize>>,
    ) -> Result<Var> {
        let dtype = x.tensor().dtype();
        // In the input's dtype, cast once per value and shared by every micro-batch.
        let rows_of = |p: &Param| match &outputs {
            Some(r) => p.var_as(dtype)?.narrow(0, r.start, r.len()),
            None => p.var_as(dtype),
        };
        let dims = x.dims().to_vec();
        let inputs = dims.last().copied().unwrap_or(0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let flat = if dims.len() == 2 { x.clone() } else { x.reshape([rows, inputs])? };
        let mut y = flat.matmul(&rows_of(&self.weight)?.t()?)?;
        let bias = self.bias.as_ref().map(rows_of).transpose()?;
        // The bias and the activation in one pass where the activation's slope reads its
        // output. GELU's and SiLU's read `h + b`: re-adding the bias row inside their
        // backward pass cost the CPU more (a call per instruction per row) than the stored
        // sum saves, so they stay two ops.
        y = match (bias, act.and_then(Activation::with_output_slope)) {
            (Some(bias), Some((op, slope))) => {
                let program = crate::programs::bias_activation(op);
                let value = Tensor::fused(&[y.tensor(), bias.tensor()], &program, dtype)?;
                Var::from_op(value, Backward::BiasActivation { slope }, &[&y, &bias])
            }
            (bias, _) => {
                let y = match bias {
                    Some(bias) => y.add(&bias)?,
                    None => y,
                };
                match act {
                    Some(act) => act.apply(&y)?,
                    None => y,
                }
            }
        };
        if dims.len() == 2 {
            return Ok(y);
        }
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = y.dims()[1];
        }
        y.reshape(Shape::new(out))
    }
}
