use crate::train::{Init, Param, ParamStore, Var};
use crate::{Result, Shape};

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

    /// `x` is `[.., in]`; leading dims are folded into one so the matmul is one GEMM.
    /// Parameters are cast to `x`'s dtype (f32 master weights under bf16/f16 compute).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let dtype = x.tensor().dtype();
        let dims = x.dims().to_vec();
        let inputs = dims.last().copied().unwrap_or(0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let flat = if dims.len() == 2 { x.clone() } else { x.reshape([rows, inputs])? };
        let mut y = flat.matmul(&self.weight.var().cast(dtype)?.t()?)?;
        if let Some(bias) = &self.bias {
            y = y.add(&bias.var().cast(dtype)?)?;
        }
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
