use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Ctx;
use crate::train::Var;
use crate::{Error, Result, Tensor};

/// Zeroes each element with probability `p` while training and scales the rest by
/// `1/(1-p)`. The mask of a row depends only on (seed, step, global row), so it does not
/// change when the batch is split differently over devices.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "Dropout::new".into(),
                device: "-".into(),
                detail: format!("p = {p} is outside [0, 1)"),
            });
        }
        Ok(Dropout { p, seed })
    }

    /// `x`'s first dim is the batch.
    pub fn forward(&self, x: &Var, ctx: &Ctx) -> Result<Var> {
        if !ctx.training || self.p == 0.0 || x.rank() == 0 {
            return Ok(x.clone());
        }
        let rows = x.dims()[0];
        let per_row = x.tensor().numel() / rows.max(1);
        let keep = 1.0 / (1.0 - self.p);
        let mut mask = Vec::with_capacity(rows * per_row);
        for row in 0..rows {
            let global = (ctx.first_row + row) as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.seed, ctx.step), global));
            mask.extend(
                (0..per_row).map(|_| if rng.random::<f64>() < self.p { 0.0 } else { keep }),
            );
        }
        let x_t = x.tensor();
        let mask = Tensor::from_f64(&mask, x_t.shape().clone(), x_t.dtype(), x_t.device())?;
        x.mul(&Var::constant(mask))
    }
}

/// SplitMix64's finaliser over two words: distinct (seed, step, row) give unrelated seeds.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
