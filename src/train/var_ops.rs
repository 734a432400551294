//! The differentiable ops: each runs the tensor op and records its [`Backward`] rule.
//! Names and argument orders follow [`Tensor`]'s, so moving code between the two is a
//! change of type, not of vocabulary.

use std::ops::{Add, Div, Mul, Neg, Sub};

use super::backward::Backward;
use super::var::Var;
use crate::{Axes, Axis, DType, NewShape, ReduceOp, Result, ScatterOp, Shape, Tensor};

macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident => $rule:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Result<Var> {
                Ok(Var::from_op(self.tensor().$name()?, $rule, &[self]))
            }
        )*
    };
}

impl Var {
    // ----- elementwise ----------------------------------------------------------------

    pub fn add(&self, other: &Var) -> Result<Var> {
        Ok(Var::from_op(self.tensor().add(other.tensor())?, Backward::Add, &[self, other]))
    }

    pub fn sub(&self, other: &Var) -> Result<Var> {
        Ok(Var::from_op(self.tensor().sub(other.tensor())?, Backward::Sub, &[self, other]))
    }

    pub fn mul(&self, other: &Var) -> Result<Var> {
        Ok(Var::from_op(self.tensor().mul(other.tensor())?, Backward::Mul, &[self, other]))
    }

    pub fn div(&self, other: &Var) -> Result<Var> {
        Ok(Var::from_op(self.tensor().div(other.tensor())?, Backward::Div, &[self, other]))
    }

    /// The remainder with the divisor's sign, as [`Tensor::remainder`]. Its gradient is
    /// that of `a - floor(a / b) · b` with the floor held constant (PyTorch's rule).
    pub fn remainder(&self, other: &Var) -> Result<Var> {
        let value = self.tensor().remainder(other.tensor())?;
        Ok(Var::from_op(value, Backward::Remainder, &[self, other]))
    }

    /// `self * mul + add` with scalars, one op.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Var> {
        Ok(Var::from_op(self.tensor().affine(mul, add)?, Backward::Affine { mul }, &[self]))
    }

    unary! {
        neg => Backward::Neg;
        exp => Backward::Exp;
        log => Backward::Log;
        sqrt => Backward::Sqrt;
        /// `1/√x`, the normalisations' op.
        rsqrt => Backward::Rsqrt;
        tanh => Backward::Tanh;
        sigmoid => Backward::Sigmoid;
        relu => Backward::Relu;
        /// GELU, tanh approximation (GPT-2's).
        gelu => Backward::Gelu;
        /// GELU in its exact form, `x·Φ(x)` (BERT's).
        gelu_erf => Backward::GeluErf;
        silu => Backward::Silu;
        abs => Backward::Abs;
        sin => Backward::Sin;
        cos => Backward::Cos;
    }

    /// `self^exponent`, elementwise, both vars (broadcast).
    pub fn pow(&self, exponent: &Var) -> Result<Var> {
        let value = self.tensor().pow(exponent.tensor())?;
        Ok(Var::from_op(value, Backward::Pow, &[self, exponent]))
    }

    /// `self^exponent` for a scalar exponent.
    pub fn powf(&self, exponent: f64) -> Result<Var> {
        Ok(Var::from_op(self.tensor().powf(exponent)?, Backward::Powf { exponent }, &[self]))
    }

    /// The larger of the two, elementwise (broadcast); a tie sends half the gradient each
    /// way, as in PyTorch.
    pub fn maximum(&self, other: &Var) -> Result<Var> {
        let value = self.tensor().maximum(other.tensor())?;
        Ok(Var::from_op(value, Backward::Extremum { max: true }, &[self, other]))
    }

    /// The smaller of the two, elementwise (broadcast); ties as [`maximum`](Self::maximum).
    pub fn minimum(&self, other: &Var) -> Result<Var> {
        let value = self.tensor().minimum(other.tensor())?;
        Ok(Var::from_op(value, Backward::Extremum { max: false }, &[self, other]))
    }

    /// As [`Tensor::clamp`]; the gradient passes where `lo ≤ x ≤ hi`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Var> {
        Ok(Var::from_op(self.tensor().clamp(lo, hi)?, Backward::Clamp { lo, hi }, &[self]))
    }

    /// `on_true` where the `u8` `cond` is set, else `on_false` (all three broadcast).
    pub fn where_cond(cond: &Tensor, on_true: &Var, on_false: &Var) -> Result<Var> {
        let value = cond.where_cond(on_true.tensor(), on_false.tensor())?;
        Ok(Var::from_op(value, Backward::Where { cond: cond.clone() }, &[on_true, on_false]))
    }

    /// As [`Tensor::masked_fill`]: no gradient flows where the mask is set.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Var> {
        let fill = Tensor::full(value, Shape::scalar(), self.tensor().dtype(), self.device())?;
        let out = Var::where_cond(mask, &Var::constant(fill), self)?;
        if out.dims() != self.dims() {
            // Let the tensor op word the error.
            self.tensor().masked_fill(mask, value)?;
        }
        Ok(out)
    }

    /// `self²`, elementwise.
    pub fn square(&self) -> Result<Var> {
        self.mul(self)
    }

    /// To another float dtype; the gradient comes back in this var's dtype (mixed
    /// precision: f32 master weights, bf16/f16 compute).
    pub fn cast(&self, dtype: DType) -> Result<Var> {
        if self.tensor().dtype() == dtype {
            return Ok(self.clone());
        }
        Ok(Var::from_op(self.tensor().cast(dtype)?, Backward::Cast, &[self]))
    }

    /// The same values on `device` (through the host; itself when already there). The
    /// gradient flows back to this var's device: a pipeline's activations cross stages
    /// this way, and its backward pass crosses them again in the other direction.
    pub fn to_device(&self, device: &crate::DeviceRef) -> Result<Var> {
        if self.device().info().id == device.info().id {
            return Ok(self.clone());
        }
        Ok(Var::from_op(self.tensor().to_device(device)?, Backward::ToDevice, &[self]))
    }

    // ----- reductions -----------------------------------------------------------------

    /// Sum over `axes` (one axis, or several: `sum([0, -1])`).
    pub fn sum(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("sum", &axes, false, Var::reduce_sum)
    }

    pub fn sum_keepdim(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("sum", &axes, true, Var::reduce_sum)
    }

    pub fn mean(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("mean", &axes, false, Var::reduce_mean)
    }

    pub fn mean_keepdim(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("mean", &axes, true, Var::reduce_mean)
    }

    /// Largest elements over `axes`; the gradient goes to the elements equal to the result
    /// (split evenly among ties).
    pub fn max(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("max", &axes, false, Var::reduce_max)
    }

    pub fn max_keepdim(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("max", &axes, true, Var::reduce_max)
    }

    /// Smallest elements over `axes`, as [`max`](Self::max).
    pub fn min(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("min", &axes, false, Var::reduce_min)
    }

    pub fn min_keepdim(&self, axes: impl Axes) -> Result<Var> {
        self.reduce_axes("min", &axes, true, Var::reduce_min)
    }

    /// The largest element, as a scalar (0-d).
    pub fn max_all(&self) -> Result<Var> {
        self.flatten()?.max(0)
    }

    /// The smallest element, as a scalar (0-d).
    pub fn min_all(&self) -> Result<Var> {
        self.flatten()?.min(0)
    }

    /// Running sums along `axis`, as [`Tensor::cumsum`].
    pub fn cumsum(&self, axis: impl Axis) -> Result<Var> {
        let axis = self.tensor().axis(axis, "cumsum")?;
        Ok(Var::from_op(self.tensor().cumsum(axis)?, Backward::Cumsum { axis }, &[self]))
    }

    /// Running products along `axis`, as [`Tensor::cumprod`]; its gradient is exact where
    /// inputs are zero (no division by them).
    pub fn cumprod(&self, axis: impl Axis) -> Result<Var> {
        let axis = self.tensor().axis(axis, "cumprod")?;
        Ok(Var::from_op(self.tensor().cumprod(axis)?, Backward::Cumprod { axis }, &[self]))
    }

    /// The sum of every element, as a scalar (0-d), as [`Tensor::sum_all`].
    pub fn sum_all(&self) -> Result<Var> {
        self.flatten()?.sum(0)
    }

    /// The mean of every element, as a scalar (0-d), as [`Tensor::mean_all`].
    pub fn mean_all(&self) -> Result<Var> {
        self.flatten()?.mean(0)
    }

    /// One reduction node per axis, then the reduced dims dropped unless `keepdim`.
    fn reduce_axes(
        &self,
        name: &str,
        axes: &impl Axes,
        keepdim: bool,
        reduce: fn(&Var, usize, bool) -> Result<Var>,
    ) -> Result<Var> {
        let at = self.tensor().axes(axes, name)?;
        if let [axis] = at[..] {
            return reduce(self, axis, keepdim);
        }
        let mut out = self.clone();
        for &axis in &at {
            out = reduce(&out, axis, true)?;
        }
        if keepdim || at.is_empty() { Ok(out) } else { out.squeeze(at) }
    }

    fn reduce_sum(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let value =
            if keepdim { self.tensor().sum_keepdim(axis)? } else { self.tensor().sum(axis)? };
        Ok(Var::from_op(value, Backward::Sum { axis, keepdim }, &[self]))
    }

    fn reduce_max(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let value = self.tensor().reduce(ReduceOp::Max, axis, keepdim)?;
        Ok(Var::from_op(value, Backward::ReduceExtremum { axis, keepdim }, &[self]))
    }

    fn reduce_min(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let value = self.tensor().reduce(ReduceOp::Min, axis, keepdim)?;
        Ok(Var::from_op(value, Backward::ReduceExtremum { axis, keepdim }, &[self]))
    }

    fn reduce_mean(&self, axis: usize, keepdim: bool) -> Result<Var> {
        let value =
            if keepdim { self.tensor().mean_keepdim(axis)? } else { self.tensor().mean(axis)? };
        Ok(Var::from_op(value, Backward::Mean { axis, keepdim }, &[self]))
    }

    /// [`Tensor::attention`] with `self` the queries: `softmax(scale · q · kᵀ) · v`, causal
    /// or not, as one op whose backward pass computes the weights again.
    pub fn attention(&self, k: &Var, v: &Var, scale: f64, causal: bool) -> Result<Var> {
        let value = self.tensor().attention(k.tensor(), v.tensor(), scale, causal)?;
        Ok(Var::from_op(value, Backward::Attention { scale, causal }, &[self, k, v]))
    }

    pub fn softmax(&self, axis: impl Axis) -> Result<Var> {
        let axis = self.tensor().axis(axis, "softmax")?;
        Ok(Var::from_op(self.tensor().softmax(axis)?, Backward::Softmax { axis }, &[self]))
    }

    pub fn log_softmax(&self, axis: impl Axis) -> Result<Var> {
        let axis = self.tensor().axis(axis, "log_softmax")?;
        let value = self.tensor().log_softmax(axis)?;
        Ok(Var::from_op(value, Backward::LogSoftmax { axis }, &[self]))
    }

    // ----- matmul ---------------------------------------------------------------------

    /// Matrix product over the last two dims with broadcast batch dims, like
    /// [`Tensor::matmul`].
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        // numpy's 1-D rules, as in `Tensor::matmul`: the backward rule sees matrices only.
        if (self.rank() == 1 || rhs.rank() == 1) && self.rank() > 0 && rhs.rank() > 0 {
            let lhs = if self.rank() == 1 { self.unsqueeze(0)? } else { self.clone() };
            let rhs2 = if rhs.rank() == 1 { rhs.unsqueeze(1)? } else { rhs.clone() };
            let product = lhs.matmul(&rhs2)?;
            let r = product.rank();
            let gained: Vec<usize> = [(self.rank() == 1, r - 2), (rhs.rank() == 1, r - 1)]
                .into_iter()
                .filter_map(|(dropped, axis)| dropped.then_some(axis))
                .collect();
            return product.squeeze(gained);
        }
        Ok(Var::from_op(self.tensor().matmul(rhs.tensor())?, Backward::Matmul, &[self, rhs]))
    }

    // ----- shapes ---------------------------------------------------------------------

    /// As [`Tensor::reshape`]: one dim may be `-1`.
    pub fn reshape(&self, shape: impl NewShape) -> Result<Var> {
        Ok(Var::from_op(self.tensor().reshape(shape)?, Backward::Reshape, &[self]))
    }

    pub fn flatten(&self) -> Result<Var> {
        Ok(Var::from_op(self.tensor().flatten()?, Backward::Reshape, &[self]))
    }

    pub fn unsqueeze(&self, axes: impl Axes) -> Result<Var> {
        Ok(Var::from_op(self.tensor().unsqueeze(axes)?, Backward::Reshape, &[self]))
    }

    pub fn squeeze(&self, axes: impl Axes) -> Result<Var> {
        Ok(Var::from_op(self.tensor().squeeze(axes)?, Backward::Reshape, &[self]))
    }

    pub fn squeeze_all(&self) -> Result<Var> {
        Ok(Var::from_op(self.tensor().squeeze_all()?, Backward::Reshape, &[self]))
    }

    pub fn permute(&self, perm: impl Axes) -> Result<Var> {
        let perm = self.tensor().permutation(&perm)?;
        let value = self.tensor().permute(&perm)?;
        Ok(Var::from_op(value, Backward::Permute { perm }, &[self]))
    }

    pub fn transpose(&self, a: impl Axis, b: impl Axis) -> Result<Var> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        let a = self.tensor().axis(a, "transpose")?;
        let b = self.tensor().axis(b, "transpose")?;
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Swaps the last two dims.
    pub fn t(&self) -> Result<Var> {
        let rank = self.rank();
        if rank < 2 {
            // Let the tensor op word the error.
            self.tensor().t()?;
        }
        self.transpose(rank - 2, rank - 1)
    }

    pub fn narrow(&self, axis: impl Axis, start: usize, len: usize) -> Result<Var> {
        let axis = self.tensor().axis(axis, "narrow")?;
        let value = self.tensor().narrow(axis, start, len)?;
        Ok(Var::from_op(value, Backward::Narrow { axis, start }, &[self]))
    }

    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Var> {
        Ok(Var::from_op(self.tensor().broadcast_as(shape)?, Backward::BroadcastAs, &[self]))
    }

    /// As [`Tensor::expand`]: `-1` keeps a dim.
    pub fn expand(&self, shape: impl NewShape) -> Result<Var> {
        Ok(Var::from_op(self.tensor().expand(shape)?, Backward::BroadcastAs, &[self]))
    }

    pub fn contiguous(&self) -> Result<Var> {
        if self.tensor().is_contiguous() {
            return Ok(self.clone());
        }
        Ok(Var::from_op(self.tensor().contiguous()?, Backward::Identity, &[self]))
    }

    /// Joins vars along `axis`.
    pub fn cat(vars: &[&Var], axis: impl Axis) -> Result<Var> {
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.tensor()).collect();
        let value = Tensor::cat(&tensors, axis)?;
        // `cat` resolved the axis against the first var's rank, which it then checked.
        let axis = vars[0].tensor().axis(axis, "cat")?;
        Ok(Var::from_op(value, Backward::Cat { axis }, vars))
    }

    /// Entries of `axis` picked by the `u32` `indices` (an embedding lookup; N-D indices
    /// put their dims in place of `axis`); the gradient adds back into the picked entries.
    pub fn index_select(&self, axis: impl Axis, indices: &Tensor) -> Result<Var> {
        let axis = self.tensor().axis(axis, "index_select")?;
        if indices.rank() != 1 {
            let mut dims = self.dims()[..axis].to_vec();
            dims.extend_from_slice(indices.dims());
            dims.extend_from_slice(&self.dims()[axis + 1..]);
            return self.index_select(axis, &indices.flatten()?)?.reshape(dims);
        }
        let value = self.tensor().index_select(axis, indices)?;
        let rule = Backward::IndexSelect { indices: indices.clone(), axis };
        Ok(Var::from_op(value, rule, &[self]))
    }

    /// `torch.gather` along `axis` (picking each row's target logit).
    pub fn gather(&self, axis: impl Axis, indices: &Tensor) -> Result<Var> {
        let axis = self.tensor().axis(axis, "gather")?;
        let value = self.tensor().gather(axis, indices)?;
        Ok(Var::from_op(value, Backward::Gather { indices: indices.clone(), axis }, &[self]))
    }

    /// [`Tensor::index_add`]: `src` added at the 1-D `indices` along `axis`; the gradient
    /// passes to `self` whole and to `src` as the rows it added to.
    pub fn index_add(&self, axis: impl Axis, indices: &Tensor, src: &Var) -> Result<Var> {
        let axis = self.tensor().axis(axis, "index_add")?;
        let value = self.tensor().index_add(axis, indices, src.tensor())?;
        let rule = Backward::IndexAdd { indices: indices.clone(), axis };
        Ok(Var::from_op(value, rule, &[self, src]))
    }

    /// [`Tensor::scatter_add`], as [`scatter_reduce`](Self::scatter_reduce) with a sum.
    pub fn scatter_add(&self, axis: impl Axis, indices: &Tensor, src: &Var) -> Result<Var> {
        let axis = self.tensor().axis(axis, "scatter_add")?;
        let value = self.tensor().scatter_add(axis, indices, src.tensor())?;
        let rule = Backward::Scatter { op: ScatterOp::Sum, indices: indices.clone(), axis };
        Ok(Var::from_op(value, rule, &[self, src]))
    }

    /// Every var expanded to their common (numpy) shape, as [`Tensor::broadcast_tensors`].
    pub fn broadcast_tensors(vars: &[&Var]) -> Result<Vec<Var>> {
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.tensor()).collect();
        let shapes = Tensor::broadcast_tensors(&tensors)?;
        vars.iter().zip(shapes).map(|(v, t)| v.expand(t.dims().to_vec())).collect()
    }

    /// [`Tensor::scatter`]: `src` written along `axis` at `indices`; the gradient reaches
    /// the elements of `self` not overwritten and the source elements that stayed.
    pub fn scatter(&self, axis: impl Axis, indices: &Tensor, src: &Var) -> Result<Var> {
        self.scatter_reduce(axis, indices, src, ScatterOp::Assign)
    }

    /// [`Tensor::scatter_reduce`] with its gradient (for `Prod`, PyTorch's rule: exact where
    /// factors are zero, no division by them).
    pub fn scatter_reduce(
        &self,
        axis: impl Axis,
        indices: &Tensor,
        src: &Var,
        op: ScatterOp,
    ) -> Result<Var> {
        let axis = self.tensor().axis(axis, "scatter_reduce")?;
        let value = self.tensor().scatter_reduce(axis, indices, src.tensor(), op)?;
        let rule = Backward::Scatter { op, indices: indices.clone(), axis };
        Ok(Var::from_op(value, rule, &[self, src]))
    }

    /// [`Tensor::sort`]: the sorted values (their gradient goes back to where each came
    /// from) and the positions (`u32`).
    pub fn sort(&self, axis: impl Axis, descending: bool) -> Result<(Var, Tensor)> {
        let axis = self.tensor().axis(axis, "sort")?;
        let order = self.tensor().argsort(axis, descending)?;
        Ok((self.gather(axis, &order)?, order))
    }

    /// [`Tensor::topk`]: the `k` largest (or smallest) values with their gradient, and their
    /// positions (`u32`).
    pub fn topk(&self, k: usize, axis: impl Axis, largest: bool) -> Result<(Var, Tensor)> {
        let axis = self.tensor().axis(axis, "topk")?;
        let (_, order) = self.tensor().topk(k, axis, largest)?;
        Ok((self.gather(axis, &order)?, order))
    }
}

macro_rules! var_binary_op {
    ($trait:ident, $method:ident, $scalar:expr) => {
        impl $trait<&Var> for &Var {
            type Output = Result<Var>;
            fn $method(self, rhs: &Var) -> Result<Var> {
                Var::$method(self, rhs)
            }
        }
        impl $trait<Var> for Var {
            type Output = Result<Var>;
            fn $method(self, rhs: Var) -> Result<Var> {
                Var::$method(&self, &rhs)
            }
        }
        impl $trait<&Var> for Var {
            type Output = Result<Var>;
            fn $method(self, rhs: &Var) -> Result<Var> {
                Var::$method(&self, rhs)
            }
        }
        impl $trait<f64> for &Var {
            type Output = Result<Var>;
            fn $method(self, rhs: f64) -> Result<Var> {
                let (mul, add) = $scalar(rhs);
                self.affine(mul, add)
            }
        }
        impl $trait<f64> for Var {
            type Output = Result<Var>;
            fn $method(self, rhs: f64) -> Result<Var> {
                let (mul, add) = $scalar(rhs);
                self.affine(mul, add)
            }
        }
    };
}

var_binary_op!(Add, add, |s: f64| (1.0, s));
var_binary_op!(Sub, sub, |s: f64| (1.0, -s));
var_binary_op!(Mul, mul, |s: f64| (s, 0.0));
var_binary_op!(Div, div, |s: f64| (1.0 / s, 0.0));

impl Neg for &Var {
    type Output = Result<Var>;
    fn neg(self) -> Result<Var> {
        Var::neg(self)
    }
}
