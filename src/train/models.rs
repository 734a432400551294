//! Two ready models the examples, benches and tests share: a multilayer perceptron and a
//! GPT-style causal transformer. Small on purpose; a user's own model is built the same way
//! from [`nn`](super::nn) layers.

use super::nn::{Activation, Ctx, Dropout, Embedding, LayerNorm, Linear, TransformerBlock};
use super::{ParamStore, Var};
use crate::{DType, Error, Result, Tensor};

/// `Linear → activation (→ dropout)` repeated, then a last `Linear`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub activation: Activation,
    pub dropout: Option<Dropout>,
}

impl Mlp {
    /// `sizes` = `[inputs, hidden.., outputs]`, layers named `fc1`, `fc2`, ...
    pub fn new(store: &ParamStore, sizes: &[usize], activation: Activation) -> Result<Mlp> {
        if sizes.len() < 2 {
            return Err(Error::InvalidArgument {
                op: "Mlp::new".into(),
                device: store.device().info().label(),
                detail: format!("sizes {sizes:?} need an input and an output size"),
            });
        }
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&store.sub(format!("fc{}", i + 1)), w[0], w[1], true))
            .collect::<Result<_>>()?;
        Ok(Mlp { layers, activation, dropout: None })
    }

    /// Dropout after every hidden activation.
    pub fn with_dropout(mut self, dropout: Dropout) -> Mlp {
        self.dropout = Some(dropout);
        self
    }

    /// `x` `[batch, inputs]` to `[batch, outputs]`.
    pub fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let hidden = i + 1 < self.layers.len();
            h = layer.forward_activated(&h, hidden.then_some(self.activation))?;
            if hidden && let Some(dropout) = &self.dropout {
                h = dropout.forward(&h, ctx)?;
            }
        }
        Ok(h)
    }
}

/// The shape of a [`Gpt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptConfig {
    pub vocab: usize,
    /// Longest context (learned positions).
    pub context: usize,
    pub dim: usize,
    pub heads: usize,
    pub layers: usize,
    /// Compute dtype; parameters stay f32.
    pub dtype: DType,
}

/// A GPT-style decoder: token and position embeddings, pre-norm transformer blocks, a final
/// layer norm and a linear head.
#[derive(Clone, Debug)]
pub struct Gpt {
    pub config: GptConfig,
    pub tokens: Embedding,
    pub positions: Embedding,
    pub blocks: Vec<TransformerBlock>,
    pub ln: LayerNorm,
    pub head: Linear,
}

impl Gpt {
    pub fn new(store: &ParamStore, config: GptConfig) -> Result<Gpt> {
        let blocks = (0..config.layers)
            .map(|i| {
                TransformerBlock::new(&store.sub(format!("blocks.{i}")), config.dim, config.heads)
            })
            .collect::<Result<_>>()?;
        Ok(Gpt {
            config,
            tokens: Embedding::new(&store.sub("tokens"), config.vocab, config.dim)?,
            positions: Embedding::new(&store.sub("positions"), config.context, config.dim)?,
            blocks,
            ln: LayerNorm::new(&store.sub("ln"), config.dim)?,
            head: Linear::new(&store.sub("head"), config.dim, config.vocab, false)?,
        })
    }

    /// `ids` `[batch, time]` (`u32`, time ≤ context) to logits `[batch·time, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        let &[batch, time] = ids.dims() else {
            return Err(self.shape_error(ids, "ids are not [batch, time]"));
        };
        if time > self.config.context {
            return Err(self.shape_error(ids, "longer than the context"));
        }
        let positions = Tensor::arange(time, DType::U32, ids.device())?;
        let mut x = self
            .tokens
            .forward(ids)?
            .add(&self.positions.forward(&positions)?)?
            .cast(self.config.dtype)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let logits = self.head.forward(&self.ln.forward(&x)?)?;
        logits.reshape([batch * time, self.config.vocab])
    }

    fn shape_error(&self, ids: &Tensor, why: &str) -> Error {
        Error::Shape {
            op: "Gpt::forward".into(),
            device: ids.device().info().label(),
            detail: format!("{ids:?}: {why} (context {})", self.config.context),
        }
    }
}
