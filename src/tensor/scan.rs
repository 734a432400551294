//! Running sums and products along an axis (numpy's `cumsum` and `cumprod`), built from
//! views and elementwise ops in ⌈log₂ n⌉ doubling steps (Hillis and Steele's scan): step
//! `s` combines each element with the one `s` places before it. Every backend runs it as it
//! stands; the cost is log₂ n passes over the tensor instead of one.

use super::Tensor;
use super::axis::Axis;
use crate::{BinaryOp, Result, Shape};

impl Tensor {
    /// Running sums along `axis`: `out[i] = x[0] + … + x[i]` (integers wrap).
    pub fn cumsum(&self, axis: impl Axis) -> Result<Tensor> {
        self.scan(axis, BinaryOp::Add, "cumsum")
    }

    /// Running products along `axis`: `out[i] = x[0] · … · x[i]` (integers wrap).
    pub fn cumprod(&self, axis: impl Axis) -> Result<Tensor> {
        self.scan(axis, BinaryOp::Mul, "cumprod")
    }

    fn scan(&self, axis: impl Axis, op: BinaryOp, name: &str) -> Result<Tensor> {
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

    /// The gradient of [`cumprod`](Self::cumprod) of `self` along `axis` for the output's
    /// gradient `g`, without dividing by the input, so zeros get theirs too:
    /// `dx_j = P_j · S_j`, where `P_j` is the product of the elements before `j` and
    /// `S_j = Σ_{i≥j} g_i · x_{j+1} ⋯ x_i`. `S` solves `S_j = g_j + x_{j+1} · S_{j+1}` from the
    /// back, by the same doubling as the scan on pairs `(a, b)` that mean
    /// `S_j = a_j + b_j · S_{j+s}`.
    pub(crate) fn cumprod_backward(&self, g: &Tensor, axis: usize) -> Result<Tensor> {
        let n = self.dims()[axis];
        if n == 0 {
            return Ok(g.clone());
        }
        let mut edge = self.dims().to_vec();
        edge[axis] = 1;
        let edge = Shape::new(edge);
        let ones = Tensor::full(1.0, edge.clone(), self.dtype(), self.device())?;
        let zeros = Tensor::zeros(edge, self.dtype(), self.device())?;
        let before = self.cumprod(axis)?.narrow(axis, 0, n - 1)?;
        let before = Tensor::cat(&[&ones, &before], axis)?;
        let (mut a, mut b) =
            (g.clone(), Tensor::cat(&[&self.narrow(axis, 1, n - 1)?, &zeros], axis)?);
        let mut step = 1;
        while step < n {
            let m = n - step;
            let (a_here, b_here) = (a.narrow(axis, 0, m)?, b.narrow(axis, 0, m)?);
            let (a_next, b_next) = (a.narrow(axis, step, m)?, b.narrow(axis, step, m)?);
            // Past the end S is 0: the last `step` pairs are final.
            let a_head = a_here.add(&b_here.mul(&a_next)?)?;
            let b_head = b_here.mul(&b_next)?;
            a = Tensor::cat(&[&a_head, &a.narrow(axis, m, step)?], axis)?;
            b = Tensor::cat(&[&b_head, &b.narrow(axis, m, step)?], axis)?;
            step *= 2;
        }
        before.mul(&a)
    }
}
