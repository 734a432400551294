use super::{Activation, CausalSelfAttention, LayerNorm, Linear};
use crate::Result;
use crate::train::{Param, ParamStore, Var};

/// A pre-norm transformer block (GPT-2's): `x + attn(ln1(x))`, then `x + mlp(ln2(x))` with
/// a 4× wide GELU MLP.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    pub ln1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl TransformerBlock {
    pub fn new(store: &ParamStore, dim: usize, heads: usize) -> Result<TransformerBlock> {
        Ok(TransformerBlock {
            ln1: LayerNorm::new(&store.sub("ln1"), dim)?,
            attn: CausalSelfAttention::new(&store.sub("attn"), dim, heads)?,
            ln2: LayerNorm::new(&store.sub("ln2"), dim)?,
            fc1: Linear::new(&store.sub("fc1"), dim, 4 * dim, true)?,
            fc2: Linear::new(&store.sub("fc2"), 4 * dim, dim, true)?,
        })
    }

    /// Its parameters, in creation order.
    pub fn params(&self) -> Vec<Param> {
        [self.attention_params(), self.feed_forward_params()].concat()
    }

    /// The parameters of its first half ([`attend`](Self::attend)).
    pub fn attention_params(&self) -> Vec<Param> {
        [self.ln1.params(), self.attn.params()].concat()
    }

    /// The parameters of its second half ([`feed_forward`](Self::feed_forward)).
    pub fn feed_forward_params(&self) -> Vec<Param> {
        [self.ln2.params(), self.fc1.params(), self.fc2.params()].concat()
    }

    /// The parameters of each of its quarters ([`project`](Self::project),
    /// [`attend_to`](Self::attend_to), [`expand`](Self::expand),
    /// [`contract`](Self::contract)), in order.
    pub fn quarter_params(&self) -> [Vec<Param>; 4] {
        [
            [self.ln1.params(), self.attn.qkv.params()].concat(),
            self.attn.proj.params(),
            [self.ln2.params(), self.fc1.params()].concat(),
            self.fc2.params(),
        ]
    }

    /// `x` is `[batch, time, dim]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.feed_forward(&self.attend(x)?)
    }

    /// The first half, a residual branch of its own: `x + attn(ln1(x))`.
    pub fn attend(&self, x: &Var) -> Result<Var> {
        self.attend_to(x, &self.project(x)?)
    }

    /// The second half: `x + mlp(ln2(x))`.
    pub fn feed_forward(&self, x: &Var) -> Result<Var> {
        self.contract(x, &self.expand(x)?)
    }

    /// The first quarter: attention's query, key and value of `ln1(x)`.
    pub fn project(&self, x: &Var) -> Result<[Var; 3]> {
        self.attn.project(&self.ln1.forward(x)?)
    }

    /// The second quarter: `x` plus the attention of [`project`](Self::project)'s `qkv`.
    pub fn attend_to(&self, x: &Var, [q, k, v]: &[Var; 3]) -> Result<Var> {
        x.add(&self.attn.combine(q, k, v)?)
    }

    /// The third quarter: the MLP's hidden activations of `ln2(x)`, `[batch, time, 4·dim]`.
    pub fn expand(&self, x: &Var) -> Result<Var> {
        self.fc1.forward_activated(&self.ln2.forward(x)?, Some(Activation::Gelu))
    }

    /// The last quarter: `x` plus the MLP's output of [`expand`](Self::expand)'s `hidden`.
    pub fn contract(&self, x: &Var, hidden: &Var) -> Result<Var> {
        x.add(&self.fc2.forward(hidden)?)
    }
}
