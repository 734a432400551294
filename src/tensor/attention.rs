//! Scaled dot-product attention as one op (`Op::Attention`), and its backward pass.

use super::{Tensor, label};
use crate::{Error, Op, Result, Shape};

impl Tensor {
    /// `softmax(scale · self · kᵀ) · v` over the keys, where `self` (the queries), `k` and
    /// `v` are `[.., time, head_dim]` of one shape and float dtype on one device; with
    /// `causal`, each query sees only the keys up to its own position. One op: a device with
    /// an attention kernel (the CPU's) never stores the `[time, time]` scores; the others
    /// run it as matmuls and a softmax. Heads are a leading dim, and may be a permuted view
    /// (`[batch, time, heads, head_dim]` permuted to `[batch, heads, time, head_dim]`).
    pub fn attention(&self, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
        self.check_attention("attention", &[k, v], scale)?;
        let out = self.output("attention", self.shape().clone(), self.dtype)?;
        out.enqueue(Op::Attention {
            q: self.view(),
            k: k.view(),
            v: v.view(),
            out: out.view(),
            scale,
            causal,
        })?;
        Ok(out)
    }

    /// The gradients `(dq, dk, dv)` of [`attention`](Self::attention)`(self, k, v, scale,
    /// causal)` from its output's gradient `d_out`; the weights are computed again, not
    /// read.
    pub fn attention_backward(
        &self,
        k: &Tensor,
        v: &Tensor,
        d_out: &Tensor,
        scale: f64,
        causal: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let name = "attention_backward";
        self.check_attention(name, &[k, v, d_out], scale)?;
        let shape = Shape::new([&[3], self.dims()].concat());
        let out = self.output(name, shape, self.dtype)?;
        out.enqueue(Op::AttentionBackward {
            q: self.view(),
            k: k.view(),
            v: v.view(),
            d_out: d_out.view(),
            out: out.view(),
            scale,
            causal,
        })?;
        let part = |i| out.narrow(0, i, 1).map(|t| t.without_dims(&[0]));
        Ok((part(0)?, part(1)?, part(2)?))
    }

    fn check_attention(&self, name: &str, others: &[&Tensor], scale: f64) -> Result<()> {
        self.require_float(name)?;
        for other in others {
            self.same_device(other, name)?;
            self.same_dtype(other, name)?;
            if other.dims() != self.dims() {
                return Err(Error::Shape {
                    op: name.into(),
                    device: label(self.device()),
                    detail: format!(
                        "{} and {} differ in shape; queries, keys and values are one \
                         [.., time, head_dim] shape",
                        self.describe(),
                        other.describe()
                    ),
                });
            }
        }
        if self.rank() < 2 {
            return Err(Error::Shape {
                op: name.into(),
                device: label(self.device()),
                detail: format!("{} is not [.., time, head_dim]", self.describe()),
            });
        }
        if !scale.is_finite() {
            return Err(Error::InvalidArgument {
                op: name.into(),
                device: label(self.device()),
                detail: format!("the scale {scale} is not finite"),
            });
        }
        Ok(())
    }
}
