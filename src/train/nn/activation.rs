use crate::Result;
use crate::train::Var;

/// The pointwise nonlinearities, as a value so a layer can be configured with one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Tanh approximation (GPT-2's).
    Gelu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn apply(self, x: &Var) -> Result<Var> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}
