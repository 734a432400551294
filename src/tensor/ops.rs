//! Compute ops: elementwise, reductions, softmax, matmul, casts, selection.

use super::axis::{Axes, Axis};
use super::{Tensor, label};
use crate::{
    BinaryOp, CompareOp, DType, Error, Instr, Layout, Op, ReduceOp, Result, Shape, UnaryOp, View,
};

/// Where a tensor op sends the `Op` it built for its fresh output: straight to the device
/// ([`direct`]), or to a planner that spreads it over the fleet.
pub(crate) type Run<'a> = &'a mut dyn FnMut(&Tensor, Op) -> Result<()>;

/// Enqueues `op` on the output's device.
pub(crate) fn direct(out: &Tensor, op: Op) -> Result<()> {
    out.enqueue(op)
}

/// Which of several tied extremes `argmax_ties` and `argmin_ties` return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ties {
    /// The first along the axis (numpy's and PyTorch's rule).
    First,
    /// The last along the axis.
    Last,
}

impl Tensor {
    // ----- checks shared by the ops ---------------------------------------------------

    pub(crate) fn same_device(&self, other: &Tensor, op: &str) -> Result<()> {
        if self.device().info().id == other.device().info().id {
            return Ok(());
        }
        Err(Error::DeviceMismatch {
            op: op.into(),
            detail: format!(
                "{} and {} live on different devices (ids {} and {}); move one with to_device",
                self.describe(),
                other.describe(),
                self.device().info().id.as_u64(),
                other.device().info().id.as_u64()
            ),
        })
    }

    pub(crate) fn same_dtype(&self, other: &Tensor, op: &str) -> Result<()> {
        if self.dtype == other.dtype {
            return Ok(());
        }
        Err(Error::DType {
            op: op.into(),
            device: label(self.device()),
            detail: format!(
                "{} and {} have different dtypes; cast one first",
                self.describe(),
                other.describe()
            ),
        })
    }

    pub(crate) fn require_float(&self, op: &str) -> Result<()> {
        if self.dtype.is_float() {
            return Ok(());
        }
        Err(Error::UnsupportedDType {
            op: op.into(),
            device: label(self.device()),
            dtype: self.dtype,
            detail: format!(" (arithmetic needs f32, f16 or bf16); operand {}", self.describe()),
        })
    }

    /// Floats pass; integers pass where `int_ok` (the contract's integer arithmetic), with
    /// `why` saying what integers take.
    fn require_float_or(&self, op: &str, int_ok: bool, why: &str) -> Result<()> {
        if self.dtype.is_float() || int_ok {
            return Ok(());
        }
        Err(Error::UnsupportedDType {
            op: op.into(),
            device: label(self.device()),
            dtype: self.dtype,
            detail: format!(" ({why}); operand {}", self.describe()),
        })
    }

    pub(crate) fn check_axis(&self, axis: usize, op: &str) -> Result<()> {
        if axis < self.rank() {
            return Ok(());
        }
        Err(Error::IndexOutOfRange {
            op: op.into(),
            device: label(self.device()),
            detail: format!("axis {axis} of {} (rank {})", self.describe(), self.rank()),
        })
    }

    /// The numpy broadcast of two operands, as views of the common shape.
    fn broadcast_with(&self, other: &Tensor, op: &str) -> Result<(Layout, Layout)> {
        self.same_device(other, op)?;
        let shape = self.shape().broadcast(other.shape()).ok_or_else(|| Error::Shape {
            op: op.into(),
            device: label(self.device()),
            detail: format!("{} and {} do not broadcast", self.describe(), other.describe()),
        })?;
        // Both unwraps-free: broadcast() succeeded, so both layouts stretch to `shape`.
        let lhs = self.layout.broadcast_to(&shape);
        let rhs = other.layout.broadcast_to(&shape);
        match (lhs, rhs) {
            (Some(l), Some(r)) => Ok((l, r)),
            _ => Err(Error::Shape {
                op: op.into(),
                device: label(self.device()),
                detail: format!("{} and {} do not broadcast", self.describe(), other.describe()),
            }),
        }
    }

    // ----- elementwise ----------------------------------------------------------------

    /// Broadcasts `self` and `other` to one shape and enqueues the op `build` makes from
    /// the two stretched views and a fresh output of `out_dtype`.
    fn broadcast_op(
        &self,
        other: &Tensor,
        name: &str,
        out_dtype: DType,
        build: impl FnOnce(View, View, View) -> Op,
        run: Run,
    ) -> Result<Tensor> {
        self.same_dtype(other, name)?;
        let (lhs, rhs) = self.broadcast_with(other, name)?;
        let out = self.output(name, lhs.shape.clone(), out_dtype)?;
        run(&out, build(self.with_layout(lhs).view(), other.with_layout(rhs).view(), out.view()))?;
        Ok(out)
    }

    /// `self ∘ other` with numpy broadcasting.
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        self.binary_with(op, other, &mut direct)
    }

    pub(crate) fn binary_with(&self, op: BinaryOp, other: &Tensor, run: Run) -> Result<Tensor> {
        self.require_float_or(op.name(), op != BinaryOp::Pow, "pow needs f32, f16 or bf16")?;
        let build = |lhs, rhs, out| Op::Binary { op, lhs, rhs, out };
        self.broadcast_op(other, op.name(), self.dtype, build, run)
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, other)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, other)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, other)
    }
    /// True division on floats; on integers floor division (Python's `//`: towards −∞),
    /// where a zero divisor gives 0.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, other)
    }
    /// The remainder with the divisor's sign (Python's `%`, PyTorch's `remainder`):
    /// `a - floor(a / b) · b`. A zero divisor gives NaN on floats, 0 on integers.
    pub fn remainder(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Rem, other)
    }
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Max, other)
    }
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Min, other)
    }
    pub fn pow(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Pow, other)
    }

    /// `self^exponent` for a scalar exponent, one pass.
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        self.require_float("powf")?;
        let program = [Instr::Input(0), Instr::Const(exponent), Instr::Binary(BinaryOp::Pow, 0, 1)];
        Tensor::fused(&[self], &program, self.dtype)
    }

    /// Every element limited to `lo..=hi`: `min(max(x, lo), hi)`, one pass (so `hi` wins
    /// where `lo > hi`, as in PyTorch). An infinite bound leaves that side open.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.require_float("clamp")?;
        if lo.is_nan() || hi.is_nan() {
            return Err(Error::InvalidArgument {
                op: "clamp".into(),
                device: label(self.device()),
                detail: format!("bounds {lo}..={hi} for {}: NaN is no bound", self.describe()),
            });
        }
        // min(max(x, +∞), hi) is hi and min(·, −∞) is −∞ everywhere.
        if lo == f64::INFINITY || hi == f64::NEG_INFINITY {
            return Tensor::full(hi, self.shape().clone(), self.dtype, self.device());
        }
        let mut program = vec![Instr::Input(0)];
        for (bound, op) in [(lo, BinaryOp::Max), (hi, BinaryOp::Min)] {
            if bound.is_finite() {
                let at = program.len();
                program.push(Instr::Const(bound));
                program.push(Instr::Binary(op, at - 1, at));
            }
        }
        Tensor::fused(&[self], &program, self.dtype)
    }

    /// `value` where the `u8` `mask` (broadcast to this shape) is set, else this tensor's
    /// element.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::full(value, Shape::scalar(), self.dtype, self.device())?;
        let out = mask.where_cond(&fill, self)?;
        if out.dims() != self.dims() {
            return Err(Error::Shape {
                op: "masked_fill".into(),
                device: label(self.device()),
                detail: format!(
                    "mask {} does not broadcast to {}",
                    mask.describe(),
                    self.describe()
                ),
            });
        }
        Ok(out)
    }

    /// Elementwise comparison with broadcasting; the result is a `u8` mask (0 or 1).
    pub fn compare(&self, op: CompareOp, other: &Tensor) -> Result<Tensor> {
        let build = |lhs, rhs, out| Op::Compare { op, lhs, rhs, out };
        self.broadcast_op(other, op.name(), DType::U8, build, &mut direct)
    }

    pub fn eq(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Eq, other)
    }
    pub fn ne(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Ne, other)
    }
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Lt, other)
    }
    pub fn le(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Le, other)
    }
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Gt, other)
    }
    pub fn ge(&self, other: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Ge, other)
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.unary_with(op, &mut direct)
    }

    pub(crate) fn unary_with(&self, op: UnaryOp, run: Run) -> Result<Tensor> {
        let int_ok = self.dtype.is_signed_int() && matches!(op, UnaryOp::Neg | UnaryOp::Abs);
        self.require_float_or(op.name(), int_ok, "integers take neg and abs, when signed")?;
        let out = self.output(op.name(), self.shape().clone(), self.dtype)?;
        run(&out, Op::Unary { op, input: self.view(), out: out.view() })?;
        Ok(out)
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// GELU, tanh approximation.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    /// GELU, exact erf form.
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluErf)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }

    /// `self * mul + add`, one fused pass.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.require_float("affine")?;
        let out = self.output("affine", self.shape().clone(), self.dtype)?;
        out.enqueue(Op::Affine { input: self.view(), out: out.view(), mul, add })?;
        Ok(out)
    }

    /// Converts every element to `dtype` (round to nearest for floats, saturating
    /// truncation for integers).
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let out = self.output("cast", self.shape().clone(), dtype)?;
        out.enqueue(Op::Cast { input: self.view(), out: out.view() })?;
        Ok(out)
    }

    /// `cond ? on_true : on_false` elementwise with broadcasting; `self` is the `u8` mask.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let name = "where";
        on_true.same_dtype(on_false, name)?;
        if self.dtype != DType::U8 {
            return Err(Error::DType {
                op: name.into(),
                device: label(self.device()),
                detail: format!("the condition must be u8, got {}", self.describe()),
            });
        }
        let (t, f) = on_true.broadcast_with(on_false, name)?;
        let shape = self.shape().broadcast(&t.shape).ok_or_else(|| Error::Shape {
            op: name.into(),
            device: label(self.device()),
            detail: format!(
                "condition {} does not broadcast with {}",
                self.describe(),
                on_true.describe()
            ),
        })?;
        self.same_device(on_true, name)?;
        let stretch = |t: &Tensor, l: &Layout| {
            l.broadcast_to(&shape).map(|l| t.with_layout(l).view()).ok_or_else(|| Error::Shape {
                op: name.into(),
                device: label(t.device()),
                detail: format!("{} does not broadcast to {shape}", t.describe()),
            })
        };
        let cond = stretch(self, &self.layout)?;
        let on_true_view = stretch(on_true, &t)?;
        let on_false_view = stretch(on_false, &f)?;
        let out = self.output(name, shape.clone(), on_true.dtype)?;
        out.enqueue(Op::Where {
            cond,
            on_true: on_true_view,
            on_false: on_false_view,
            out: out.view(),
        })?;
        Ok(out)
    }

    // ----- reductions -----------------------------------------------------------------

    /// Reduces `axis`; keeps it as a dim of 1 when `keepdim`.
    pub fn reduce(&self, op: ReduceOp, axis: impl Axis, keepdim: bool) -> Result<Tensor> {
        let axis = self.axis(axis, op.name())?;
        self.reduce_with(op, axis, keepdim, &mut direct)
    }

    /// Reduces every axis of `axes` (none: the tensor itself, as numpy's `axis=()`).
    pub fn reduce_axes(&self, op: ReduceOp, axes: impl Axes, keepdim: bool) -> Result<Tensor> {
        let at = self.axes(&axes, op.name())?;
        if let [axis] = at[..] {
            return self.reduce_with(op, axis, keepdim, &mut direct);
        }
        let mut out = self.clone();
        for &axis in &at {
            out = out.reduce_with(op, axis, true, &mut direct)?;
        }
        Ok(if keepdim { out } else { out.without_dims(&at) })
    }

    pub(crate) fn reduce_with(
        &self,
        op: ReduceOp,
        axis: usize,
        keepdim: bool,
        run: Run,
    ) -> Result<Tensor> {
        let name = op.name();
        let why = "integers take sum, max, min, argmax and argmin";
        self.require_float_or(name, op != ReduceOp::Mean, why)?;
        self.check_axis(axis, name)?;
        if self.dims()[axis] == 0 && !matches!(op, ReduceOp::Sum | ReduceOp::Mean) {
            return Err(Error::InvalidArgument {
                op: name.into(),
                device: label(self.device()),
                detail: format!("{name} over axis {axis} of {}, which is empty", self.describe()),
            });
        }
        let mut dims = self.dims().to_vec();
        dims[axis] = 1;
        let dtype = if op.is_arg() { DType::U32 } else { self.dtype };
        let out = self.output(name, Shape::new(dims.clone()), dtype)?;
        run(&out, Op::Reduce { op, input: self.view(), out: out.view(), axis })?;
        if keepdim {
            return Ok(out);
        }
        dims.remove(axis);
        Ok(out.with_layout(Layout::contiguous(dims)))
    }

    /// Sum over `axes` (one axis, or several: `sum([0, -1])`).
    pub fn sum(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Sum, axes, false)
    }
    pub fn sum_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Sum, axes, true)
    }
    pub fn mean(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Mean, axes, false)
    }
    pub fn mean_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Mean, axes, true)
    }
    pub fn max(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Max, axes, false)
    }
    pub fn max_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Max, axes, true)
    }
    pub fn min(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Min, axes, false)
    }
    pub fn min_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_axes(ReduceOp::Min, axes, true)
    }
    /// Index (u32) of the first maximum along `axis` (NaNs are skipped).
    pub fn argmax(&self, axis: impl Axis) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMax, axis, false)
    }
    /// [`argmax`](Self::argmax) keeping `axis` as a dim of 1.
    pub fn argmax_keepdim(&self, axis: impl Axis) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMax, axis, true)
    }
    /// Index (u32) of the first minimum along `axis` (NaNs are skipped).
    pub fn argmin(&self, axis: impl Axis) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMin, axis, false)
    }
    /// [`argmin`](Self::argmin) keeping `axis` as a dim of 1.
    pub fn argmin_keepdim(&self, axis: impl Axis) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMin, axis, true)
    }
    /// [`argmax`](Self::argmax) choosing among tied maxima by `ties`.
    pub fn argmax_ties(&self, axis: impl Axis, keepdim: bool, ties: Ties) -> Result<Tensor> {
        self.arg_with_ties(ReduceOp::ArgMax, axis, keepdim, ties)
    }
    /// [`argmin`](Self::argmin) choosing among tied minima by `ties`.
    pub fn argmin_ties(&self, axis: impl Axis, keepdim: bool, ties: Ties) -> Result<Tensor> {
        self.arg_with_ties(ReduceOp::ArgMin, axis, keepdim, ties)
    }

    /// The last of tied extremes is the first one of the axis reversed, counted back from
    /// the end: `n - 1 - first(reversed)`.
    fn arg_with_ties(
        &self,
        op: ReduceOp,
        axis: impl Axis,
        keepdim: bool,
        ties: Ties,
    ) -> Result<Tensor> {
        let axis = self.axis(axis, op.name())?;
        if ties == Ties::First {
            return self.reduce(op, axis, keepdim);
        }
        let n = self.dims()[axis];
        let backwards: Vec<u32> = (0..n).rev().map(|i| i as u32).collect();
        let order = Tensor::from_slice(&backwards, [n], self.device())?;
        let first = self.index_select(axis, &order)?.reduce(op, axis, keepdim)?;
        let last = n.saturating_sub(1) as f64;
        Tensor::full(last, Shape::scalar(), DType::U32, self.device())?.sub(&first)
    }

    /// Sum of all elements, as a scalar (0-d) tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flatten()?.sum(0)
    }

    /// Mean of all elements, as a scalar (0-d) tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flatten()?.mean(0)
    }

    /// The largest element, as a scalar (0-d) tensor.
    pub fn max_all(&self) -> Result<Tensor> {
        self.flatten()?.max(0)
    }

    /// The smallest element, as a scalar (0-d) tensor.
    pub fn min_all(&self) -> Result<Tensor> {
        self.flatten()?.min(0)
    }

    pub fn softmax(&self, axis: impl Axis) -> Result<Tensor> {
        let axis = self.axis(axis, "softmax")?;
        self.softmax_with(axis, false, &mut direct)
    }

    pub fn log_softmax(&self, axis: impl Axis) -> Result<Tensor> {
        let axis = self.axis(axis, "log_softmax")?;
        self.softmax_with(axis, true, &mut direct)
    }

    pub(crate) fn softmax_with(&self, axis: usize, log: bool, run: Run) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        self.require_float(name)?;
        self.check_axis(axis, name)?;
        let out = self.output(name, self.shape().clone(), self.dtype)?;
        run(&out, Op::Softmax { input: self.view(), out: out.view(), axis, log })?;
        Ok(out)
    }

    // ----- matmul ---------------------------------------------------------------------

    /// Matrix product over the last two dims, batch dims broadcast numpy-style:
    /// `[.., m, k] x [.., k, n] -> [.., m, n]`; a 1-D operand is a row on the left and a
    /// column on the right, as in numpy (`[k] x [k]` is a 0-d scalar). Transposed operands
    /// (`t()`) cost no copy.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_with(rhs, &mut direct)
    }

    pub(crate) fn matmul_with(&self, rhs: &Tensor, run: Run) -> Result<Tensor> {
        let name = "matmul";
        self.same_device(rhs, name)?;
        self.same_dtype(rhs, name)?;
        self.require_float(name)?;
        let shape_err = |why: &str| Error::Shape {
            op: name.into(),
            device: label(self.device()),
            detail: format!("{} x {}: {why}", self.describe(), rhs.describe()),
        };
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(shape_err("both operands need at least 1 dim"));
        }
        // numpy's 1-D rules: a vector on the left is a row, on the right a column, and the
        // dim it gained is dropped from the product again.
        if self.rank() == 1 || rhs.rank() == 1 {
            let k = self.dims()[self.rank() - 1];
            let k2 = rhs.dims()[rhs.rank().saturating_sub(2)];
            if k != k2 {
                return Err(shape_err(&format!("inner dims differ ({k} vs {k2})")));
            }
            let lhs = if self.rank() == 1 { self.unsqueeze(0)? } else { self.clone() };
            let rhs2 = if rhs.rank() == 1 { rhs.unsqueeze(1)? } else { rhs.clone() };
            let product = lhs.matmul_with(&rhs2, run)?;
            let r = product.rank();
            let mut gained = Vec::new();
            if self.rank() == 1 {
                gained.push(r - 2);
            }
            if rhs.rank() == 1 {
                gained.push(r - 1);
            }
            return Ok(product.without_dims(&gained));
        }
        let (l, r) = (self.dims(), rhs.dims());
        let (m, k) = (l[l.len() - 2], l[l.len() - 1]);
        let (k2, n) = (r[r.len() - 2], r[r.len() - 1]);
        if k != k2 {
            return Err(shape_err(&format!("inner dims differ ({k} vs {k2})")));
        }
        let lhs_batch = Shape::from(&l[..l.len() - 2]);
        let rhs_batch = Shape::from(&r[..r.len() - 2]);
        let batch = lhs_batch
            .broadcast(&rhs_batch)
            .ok_or_else(|| shape_err("batch dims do not broadcast"))?;
        let with_batch = |mat: [usize; 2]| {
            let mut dims = batch.dims().to_vec();
            dims.extend_from_slice(&mat);
            Shape::new(dims)
        };
        let lhs = self.layout.broadcast_to(&with_batch([m, k]));
        let rhs_layout = rhs.layout.broadcast_to(&with_batch([k, n]));
        let (Some(lhs), Some(rhs_layout)) = (lhs, rhs_layout) else {
            return Err(shape_err("batch dims do not broadcast"));
        };
        let out = self.output(name, with_batch([m, n]), self.dtype)?;
        if k == 0 {
            // An empty sum: the product is all zeros.
            out.enqueue(Op::Fill { out: out.view(), value: 0.0 })?;
            return Ok(out);
        }
        run(
            &out,
            Op::Matmul {
                lhs: self.with_layout(lhs).view(),
                rhs: rhs.with_layout(rhs_layout).view(),
                out: out.view(),
            },
        )?;
        Ok(out)
    }
}
