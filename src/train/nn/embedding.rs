use crate::train::{Init, Param, ParamStore, Var};
use crate::{Result, Shape, Tensor};

/// A lookup table: `u32` ids of any shape to vectors of `dim`.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Param,
}

impl Embedding {
    pub fn new(store: &ParamStore, vocab: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding { weight: store.param("weight", [vocab, dim], Init::Normal { std: 0.02 })? })
    }

    pub fn params(&self) -> Vec<Param> {
        vec![self.weight.clone()]
    }

    /// `ids` of shape `[..]` gives `[.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        let rows = self.weight.var()?.index_select(0, &ids.flatten()?)?;
        let mut dims = ids.dims().to_vec();
        dims.push(rows.dims()[1]);
        rows.reshape(Shape::new(dims))
    }
}
