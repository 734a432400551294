//! Running sums and products along an axis (numpy's `cumsum` and `cumprod`), built from
//! views and elementwise ops in ⌈log₂ n⌉ doubling steps (Hillis and Steele's scan): step
//! `s` combines each element with the one `s` places before it. Every backend runs it as it
//! stands; the cost is log₂ n passes over the tensor instead of one.

use super::Tensor;
use super::axis::Axis;
use crate::{BinaryOp, Result};

impl Tensor {
    /// Running sums along `axis`: `out[i] = x[0] + … + x[i]`.
    pub fn cumsum(&self, axis: impl Axis) -> Result<Tensor> {
        self.scan(axis, BinaryOp::Add, "cumsum")
    }

    /// Running products along `axis`: `out[i] = x[0] · … · x[i]`.
    pub fn cumprod(&self, axis: impl Axis) -> Result<Tensor> {
        self.scan(axis, BinaryOp::Mul, "cumprod")
    }

    fn scan(&self, axis: impl Axis, op: BinaryOp, name: &str) -> Result<Tensor> {
        self.require_float(name)?;
        let axis = self.axis(axis, name)?;
        let n = self.dims()[axis];
        let mut y = self.clone();
        let mut step = 1;
        while step < n {
            // The first `step` elements are final; each later one takes in the one `step`
            // places before it.
            let done = y.narrow(axis, 0, step)?;
            let later =
                y.narrow(axis, step, n - step)?.binary(op, &y.narrow(axis, 0, n - step)?)?;
            y = Tensor::cat(&[&done, &later], axis)?;
            step *= 2;
        }
        Ok(y)
    }
}
