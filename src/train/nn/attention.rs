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
        let [q, k, v] = self.project(x)?;
        self.combine(&q, &k, &v)
    }

    /// Query, key and value of `x` (`[batch, time, dim]` each), each from its rows of the
    /// `qkv` layer: the first part of [`forward`](Self::forward).
    pub fn project(&self, x: &Var) -> Result<[Var; 3]> {
        let dim = self.dims_of(x, "CausalSelfAttention::project")?[2];
        let part = |i: usize| self.qkv.forward_outputs(x, i * dim..(i + 1) * dim);
        Ok([part(0)?, part(1)?, part(2)?])
    }

    /// The heads' causal attention over [`project`](Self::project)'s query, key and value,
    /// then the output projection: the rest of [`forward`](Self::forward).
    pub fn combine(&self, q: &Var, k: &Var, v: &Var) -> Result<Var> {
        let [batch, time, dim] = self.dims_of(q, "CausalSelfAttention::combine")?;
        let (heads, head_dim) = (self.heads, dim / self.heads);
        // [batch, time, dim] -> [batch, heads, time, head_dim].
        let split = |x: &Var| x.reshape([batch, time, heads, head_dim])?.permute([0, 2, 1, 3]);
        let scale = 1.0 / (head_dim as f64).sqrt();
        // One op from q, k and v to the heads' outputs (`Op::Attention`): it keeps nothing of
        // its own, and its backward pass computes the attention weights again, so the
        // `[heads, time, time]` scores and weights (most of a block's activations at long
        // contexts) are never kept, as in FlashAttention and Megatron's selective
        // recomputation; on a device with an attention kernel they are never stored at all.
        let out = split(q)?
            .attention(&split(k)?, &split(v)?, scale, true)?
            .permute([0, 2, 1, 3])?
            .reshape([batch, time, dim])?;
        self.proj.forward(&out)
    }

    fn dims_of(&self, x: &Var, op: &str) -> Result<[usize; 3]> {
        match x.dims() {
            &[b, t, d] => Ok([b, t, d]),
            other => Err(Error::Shape {
                op: op.into(),
                device: x.tensor().device().info().label(),
                detail: format!("input {other:?} is not [batch, time, dim]"),
            }),
        }
    }
}
