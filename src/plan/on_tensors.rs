//! The planner as a tensor API: the same ops as [`Tensor`]'s, with every large one spread
//! over the fleet. Inputs and result live on the inputs' device.

use manychips_api::{BinaryOp, Op, ReduceOp, Result, UnaryOp};

use super::Planner;
use crate::Tensor;

impl Planner {
    /// [`Tensor::matmul`], split over the fleet when that pays.
    pub fn matmul(&mut self, lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        lhs.matmul_with(rhs, &mut |out, op| self.run_into(out, op))
    }

    /// [`Tensor::binary`] (with broadcasting), split over the fleet when that pays.
    pub fn binary(&mut self, op: BinaryOp, lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        lhs.binary_with(op, rhs, &mut |out, op| self.run_into(out, op))
    }

    /// [`Tensor::unary`], split over the fleet when that pays.
    pub fn unary(&mut self, op: UnaryOp, input: &Tensor) -> Result<Tensor> {
        input.unary_with(op, &mut |out, op| self.run_into(out, op))
    }

    /// [`Tensor::reduce`], split along the kept axes when that pays.
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        input: &Tensor,
        axis: usize,
        keepdim: bool,
    ) -> Result<Tensor> {
        input.reduce_with(op, axis, keepdim, &mut |out, op| self.run_into(out, op))
    }

    /// [`Tensor::softmax`], split along the other axes when that pays.
    pub fn softmax(&mut self, input: &Tensor, axis: usize) -> Result<Tensor> {
        input.softmax_with(axis, false, &mut |out, op| self.run_into(out, op))
    }

    /// [`Tensor::log_softmax`], split along the other axes when that pays.
    pub fn log_softmax(&mut self, input: &Tensor, axis: usize) -> Result<Tensor> {
        input.softmax_with(axis, true, &mut |out, op| self.run_into(out, op))
    }

    fn run_into(&mut self, out: &Tensor, op: Op) -> Result<()> {
        if op.output().numel() == 0 {
            return Ok(());
        }
        let device = out.device().clone();
        self.run(&op, &device, &device).map(drop)
    }
}
