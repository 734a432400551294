//! Two ready models the examples, benches and tests share: a multilayer perceptron and a
//! GPT-style causal transformer. Small on purpose; a user's own model is built the same way
//! from [`nn`](super::nn) layers.

use super::nn::{Activation, Ctx, Dropout, Embedding, LayerNorm, Linear, TransformerBlock};
use super::{Layered, Param, ParamStore, Var};
use std::ops::Range;

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
        self.forward_layers(0..self.layers.len(), x, ctx)
    }
}

/// Layer `i` is `fc{i+1}` with its activation and dropout.
impl Layered for Mlp {
    fn depth(&self) -> usize {
        self.layers.len()
    }

    fn forward_layer(&self, layer: usize, x: &Var, ctx: &Ctx) -> Result<Var> {
        let Some(linear) = self.layers.get(layer) else {
            return Err(Error::InvalidArgument {
                op: "Mlp::forward_layer".into(),
                device: x.tensor().device().info().label(),
                detail: format!("layer {layer} of {}", self.layers.len()),
            });
        };
        let hidden = layer + 1 < self.layers.len();
        let h = linear.forward_activated(x, hidden.then_some(self.activation))?;
        match &self.dropout {
            Some(dropout) if hidden => dropout.forward(&h, ctx),
            _ => Ok(h),
        }
    }

    fn layer_params(&self, layer: usize) -> Vec<Param> {
        self.layers.get(layer).map_or_else(Vec::new, Linear::params)
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
        self.forward_layers(0..self.depth(), &Var::constant(ids.clone()), &Ctx::eval())
    }

    /// Token plus position embeddings of `ids` `[batch, time]`.
    fn embed(&self, ids: &Tensor) -> Result<Var> {
        let &[_, time] = ids.dims() else {
            return Err(self.shape_error(ids, "ids are not [batch, time]"));
        };
        if time > self.config.context {
            return Err(self.shape_error(ids, "longer than the context"));
        }
        let positions = Tensor::arange(time, DType::U32, ids.device())?;
        self.tokens.forward(ids)?.add(&self.positions.forward(&positions)?)?.cast(self.config.dtype)
    }

    /// The final norm and the head, logits flattened to `[batch·time, vocab]`.
    fn logits(&self, x: &Var) -> Result<Var> {
        let rows = x.dims().iter().rev().skip(1).product::<usize>();
        self.head.forward(&self.ln.forward(x)?)?.reshape([rows, self.config.vocab])
    }

    fn shape_error(&self, ids: &Tensor, why: &str) -> Error {
        Error::Shape {
            op: "Gpt::forward".into(),
            device: ids.device().info().label(),
            detail: format!("{ids:?}: {why} (context {})", self.config.context),
        }
    }
}

/// Layer 0 embeds the ids (`[batch, time]` `u32`); then each block is four layers, its
/// quarters ([`TransformerBlock::project`], [`attend_to`](TransformerBlock::attend_to),
/// [`expand`](TransformerBlock::expand), [`contract`](TransformerBlock::contract): a
/// pipeline's stages are balanced by a quarter of a block); the last layer is the final
/// norm with the head.
///
/// A quarter's output is the residual stream with, after the first and the third, what the
/// next quarter reads beside it: `[x | q | k | v]` and `[x | hidden]` along the last axis.
/// Those are joined only where a run of layers ends there (a stage boundary); within a
/// run, the quarters pass their parts along as the whole block would.
impl Layered for Gpt {
    fn depth(&self) -> usize {
        4 * self.blocks.len() + 2
    }

    fn forward_layer(&self, layer: usize, x: &Var, ctx: &Ctx) -> Result<Var> {
        self.forward_layers(layer..layer + 1, x, ctx)
    }

    fn forward_layers(&self, layers: Range<usize>, x: &Var, _ctx: &Ctx) -> Result<Var> {
        let quarters = 4 * self.blocks.len();
        if layers.end > quarters + 2 || layers.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Gpt::forward_layers".into(),
                device: x.tensor().device().info().label(),
                detail: format!("layers {layers:?} of {}", quarters + 2),
            });
        }
        let dim = self.config.dim;
        // What the previous layer's output holds: after a block's first quarter, the stream
        // and `q, k, v`; after its third, the stream and the hidden activations.
        let mut parts = match layers.start {
            0 => vec![self.embed(x.tensor())?],
            l if l <= quarters && l % 4 == 2 => split(x, &[dim; 4])?,
            l if l <= quarters && l % 4 == 0 => split(x, &[dim, 4 * dim])?,
            _ => vec![x.clone()],
        };
        for layer in layers.start.max(1)..layers.end {
            parts = match layer {
                l if l > quarters => vec![self.logits(&parts[0])?],
                l => {
                    let block = &self.blocks[(l - 1) / 4];
                    match (l - 1) % 4 {
                        0 => {
                            let [q, k, v] = block.project(&parts[0])?;
                            vec![parts[0].clone(), q, k, v]
                        }
                        1 => {
                            let qkv = [parts[1].clone(), parts[2].clone(), parts[3].clone()];
                            vec![block.attend_to(&parts[0], &qkv)?]
                        }
                        2 => vec![parts[0].clone(), block.expand(&parts[0])?],
                        _ => vec![block.contract(&parts[0], &parts[1])?],
                    }
                }
            };
        }
        match parts.len() {
            1 => Ok(parts.remove(0)),
            _ => Var::cat(&parts.iter().collect::<Vec<_>>(), -1),
        }
    }

    fn joins_output(&self, layer: usize) -> bool {
        // A block's first and third quarters: `[x | q | k | v]` and `[x | hidden]`.
        (1..=4 * self.blocks.len()).contains(&layer) && (layer - 1).is_multiple_of(2)
    }

    fn layer_params(&self, layer: usize) -> Vec<Param> {
        let quarters = 4 * self.blocks.len();
        match layer {
            0 => [self.tokens.params(), self.positions.params()].concat(),
            l if l <= quarters => {
                let [a, b, c, d] = self.blocks[(l - 1) / 4].quarter_params();
                [a, b, c, d].into_iter().nth((l - 1) % 4).unwrap_or_default()
            }
            l if l == quarters + 1 => [self.ln.params(), self.head.params()].concat(),
            _ => Vec::new(),
        }
    }
}

/// `x` cut along its last axis into parts of `widths` (views), as the layer
/// that joined them had them.
fn split(x: &Var, widths: &[usize]) -> Result<Vec<Var>> {
    let total: usize = widths.iter().sum();
    if x.dims().last() != Some(&total) {
        return Err(Error::Shape {
            op: "Gpt::forward_layers".into(),
            device: x.tensor().device().info().label(),
            detail: format!("input {:?} is not [.., {total}] (parts {widths:?})", x.dims()),
        });
    }
    let axis = x.rank() - 1;
    let mut start = 0;
    widths
        .iter()
        .map(|&w| {
            let part = x.narrow(axis, start, w);
            start += w;
            part
        })
        .collect()
}
