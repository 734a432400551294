//! Layers and losses. A layer owns its [`Param`](super::Param)s (created through a
//! [`ParamStore`](super::ParamStore), so they are named) and has a `forward` on [`Var`]s.

mod activation;
mod attention;
mod dropout;
mod embedding;
mod linear;
mod loss;
mod norm;
mod transformer;

pub use activation::Activation;
pub use attention::CausalSelfAttention;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use loss::{CrossEntropy, Reduction, cross_entropy, cross_entropy_with, mse};
pub use norm::{LayerNorm, RmsNorm};
pub use transformer::TransformerBlock;

/// What a forward pass knows besides its input: whether it trains (dropout on), which step
/// it is, and where its rows sit in the global batch. The last two make dropout masks a
/// function of (seed, step, global row), so a batch split over devices draws the same masks
/// as the whole batch on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    pub training: bool,
    pub step: u64,
    pub first_row: usize,
}

impl Ctx {
    pub fn train(step: u64) -> Ctx {
        Ctx { training: true, step, first_row: 0 }
    }

    pub fn eval() -> Ctx {
        Ctx::default()
    }

    /// The same context for a share of the batch starting at global row `first_row`.
    pub fn rows_from(self, first_row: usize) -> Ctx {
        Ctx { first_row, ..self }
    }
}
