use crate::train::Var;
use manychips_api::Instr;

use crate::{Result, UnaryOp};

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
    /// The op that computes it, and its backward program over `[y, grad]` where the slope
    /// is a function of the output `y` (ReLU's and tanh's; GELU's and SiLU's need the input).
    pub(crate) fn with_output_slope(self) -> Option<(UnaryOp, Vec<Instr>)> {
        match self {
            Activation::Relu => Some((UnaryOp::Relu, crate::programs::relu_backward())),
            Activation::Tanh => Some((UnaryOp::Tanh, crate::programs::tanh_backward())),
            Activation::Gelu | Activation::Silu => None,
        }
    }

    pub fn apply(self, x: &Var) -> Result<Var> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}
