use super::Linear;
use crate::train::backward::Backward;
use crate::train::{Param, ParamStore, Var};
use crate::{BinaryOp, Error, Instr, Result, Tensor};

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
        // One node from q, k and v to the heads' outputs: it keeps nothing of its own, and
        // its backward pass computes the attention weights again, so the `[heads, time,
        // time]` scores and weights (most of a block's activations at long contexts) live
        // only while they are used, as in FlashAttention and Megatron's selective
        // recomputation.
        let weights = attention_weights(q.tensor(), k.tensor(), scale)?;
        let heads_out = weights.matmul(v.tensor())?;
        let out = Var::from_op(heads_out, Backward::Attention { scale }, &[&q, &k, &v])
            .permute([0, 2, 1, 3])?
            .reshape([batch, time, dim])?;
        self.proj.forward(&out)
    }
}

/// Softmax over keys of the scaled, causally masked scores `q · kᵀ` (`[batch, heads,
/// time, head_dim]` each), in `q`'s dtype: the forward pass's, and the backward pass's
/// again.
pub(crate) fn attention_weights(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    let time = q.dims()[2];
    let scores = q.matmul(&k.t()?)?;
    let mask = causal_mask(time, &scores)?;
    // Scaled and masked in one pass.
    let program = [
        Instr::Input(0),
        Instr::Input(1),
        Instr::Affine(0, scale, 0.0),
        Instr::Binary(BinaryOp::Add, 2, 1),
    ];
    Tensor::fused(&[&scores, &mask], &program, scores.dtype())?.softmax(3)
}

/// `[time, time]`: 0 on and below the diagonal, a large negative number above it, so
/// softmax gives the future no weight.
fn causal_mask(time: usize, like: &Tensor) -> Result<Tensor> {
    let mut mask = vec![0.0; time * time];
    for row in 0..time {
        for col in row + 1..time {
            mask[row * time + col] = -1e9;
        }
    }
    Tensor::from_f64(&mask, [time, time], like.dtype(), like.device())
}
