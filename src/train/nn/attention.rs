use super::Linear;
use crate::train::{Param, ParamStore, Var};
use crate::{Error, Result};

/// Causal multi-head self-attention: each position attends to itself and the ones before.
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl CausalSelfAttention {
    pub fn new(store: &ParamStore, dim: usize, heads: usize) -> Result<CausalSelfAttention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::InvalidArgument {
                op: "CausalSelfAttention::new".into(),
                device: store.device().info().label(),
                detail: format!("dim {dim} does not split into {heads} heads"),
            });
        }
        Ok(CausalSelfAttention {
            qkv: Linear::new(&store.sub("qkv"), dim, 3 * dim, true)?,
            proj: Linear::new(&store.sub("proj"), dim, dim, true)?,
            heads,
        })
    }

    /// Its parameters: the `qkv` layer's, then the projection's.
    pub fn params(&self) -> Vec<Param> {
        [self.qkv.params(), self.proj.params()].concat()
    }

    /// `x` is `[batch, time, dim]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let [batch, time, dim] = match x.dims() {
            &[b, t, d] => [b, t, d],
            other => {
                return Err(Error::Shape {
                    op: "CausalSelfAttention::forward".into(),
                    device: x.tensor().device().info().label(),
                    detail: format!("input {other:?} is not [batch, time, dim]"),
                });
            }
        };
        let (heads, head_dim) = (self.heads, dim / self.heads);
        // Query, key and value each from their rows of the `qkv` layer, as
        // [batch, time, dim] -> [batch, heads, time, head_dim].
        let split = |i: usize| -> Result<Var> {
            self.qkv
                .forward_outputs(x, i * dim..(i + 1) * dim)?
                .reshape([batch, time, heads, head_dim])?
                .permute([0, 2, 1, 3])
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scale = 1.0 / (head_dim as f64).sqrt();
        // One op from q, k and v to the heads' outputs (`Op::Attention`): it keeps nothing of
        // its own, and its backward pass computes the attention weights again, so the
        // `[heads, time, time]` scores and weights (most of a block's activations at long
        // contexts) are never kept, as in FlashAttention and Megatron's selective
        // recomputation; on a device with an attention kernel they are never stored at all.
        let out =
            q.attention(&k, &v, scale, true)?.permute([0, 2, 1, 3])?.reshape([batch, time, dim])?;
        self.proj.forward(&out)
    }
}
