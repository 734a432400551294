//! One rule per differentiable op: given the gradient of an op's output, the gradients of
//! its inputs. The rules are tensor ops themselves, so the backward pass runs on whatever
//! device the forward pass ran on.

use std::cell::OnceCell;

use crate::{DType, DeviceRef, Error, ReduceOp, Result, ScatterOp, Shape, Tensor};

/// The data an op keeps for its backward pass (the graph keeps the inputs and the output
/// that its rule reads: [`Backward::reads_input`], [`Backward::reads_output`]).
#[derive(Clone, Debug)]
pub(crate) enum Backward {
    Add,
    Sub,
    Mul,
    Div,
    /// `remainder(a, b)` of inputs `[a, b]`.
    Remainder,
    Neg,
    /// `x * mul + add`.
    Affine {
        mul: f64,
    },
    Exp,
    Log,
    Abs,
    Sin,
    Cos,
    /// `a^b` of two vars.
    Pow,
    /// `x^exponent` for a scalar exponent.
    Powf {
        exponent: f64,
    },
    /// `maximum(a, b)` (`max`) or `minimum(a, b)`.
    Extremum {
        max: bool,
    },
    Clamp {
        lo: f64,
        hi: f64,
    },
    /// A max or min reduction over `axis`: the gradient goes to the elements equal to the
    /// result, split evenly among ties (PyTorch's `amax`).
    ReduceExtremum {
        axis: usize,
        keepdim: bool,
    },
    /// Running sums along `axis`.
    Cumsum {
        axis: usize,
    },
    /// Running products along `axis`.
    Cumprod {
        axis: usize,
    },
    /// `where(cond, a, b)` of inputs `[a, b]`.
    Where {
        cond: Tensor,
    },
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// The tanh approximation of GELU.
    Gelu,
    Silu,
    /// GELU in its exact erf form.
    GeluErf,
    Matmul,
    Sum {
        axis: usize,
        keepdim: bool,
    },
    Mean {
        axis: usize,
        keepdim: bool,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Reshape, squeeze, unsqueeze, flatten: the gradient takes the input's shape back.
    Reshape,
    Permute {
        perm: Vec<usize>,
    },
    Narrow {
        axis: usize,
        start: usize,
    },
    BroadcastAs,
    Cat {
        axis: usize,
    },
    IndexSelect {
        indices: Tensor,
        axis: usize,
    },
    Gather {
        indices: Tensor,
        axis: usize,
    },
    /// `index_add` of inputs `[self, src]` with 1-D `indices`.
    IndexAdd {
        indices: Tensor,
        axis: usize,
    },
    /// `scatter` (`Assign`) or `scatter_reduce` of inputs `[self, src]`.
    Scatter {
        op: ScatterOp,
        indices: Tensor,
        axis: usize,
    },
    Cast,
    /// A copy to another device: the gradient travels back to the input's device.
    ToDevice,
    /// Attention's heads `softmax(scale · q·kᵀ)·v` (`Op::Attention`) from inputs `[q, k,
    /// v]`; its backward op computes the weights again from `q` and `k` rather than keeping
    /// them.
    Attention {
        scale: f64,
        causal: bool,
    },
    /// `contiguous()`: same values, new layout.
    Identity,
    /// Layer norm over `axis` (the last) of inputs `[x, weight, bias]`, with the statistics
    /// of the forward pass (f32, keepdim).
    LayerNorm {
        axis: usize,
        mean: Tensor,
        rstd: Tensor,
    },
    /// `act(h + b)` for a layer's output `h` and bias `b` (inputs `[h, b]`), in one pass,
    /// for an activation whose slope reads its output `y`: `slope` is its backward program
    /// over `[y, grad]`.
    BiasActivation {
        slope: Vec<manychips_api::Instr>,
    },
    /// Softmax cross-entropy per row of f32 logits `[rows, classes]`, from the forward
    /// pass's log-probabilities, the target of each row (`[rows, 1]`), the rows' weights
    /// (`[rows, 1]`; `None` when all are 1) and the label smoothing ε.
    CrossEntropy {
        log_probs: Tensor,
        targets: Tensor,
        weights: Option<Tensor>,
        smoothing: f64,
    },
}

impl Backward {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backward::Add => "add",
            Backward::Sub => "sub",
            Backward::Mul => "mul",
            Backward::Div => "div",
            Backward::Remainder => "remainder",
            Backward::Neg => "neg",
            Backward::Affine { .. } => "affine",
            Backward::Exp => "exp",
            Backward::Log => "log",
            Backward::Abs => "abs",
            Backward::Sin => "sin",
            Backward::Cos => "cos",
            Backward::Pow => "pow",
            Backward::Powf { .. } => "powf",
            Backward::Extremum { max: true } => "maximum",
            Backward::Extremum { max: false } => "minimum",
            Backward::Clamp { .. } => "clamp",
            Backward::ReduceExtremum { .. } => "max/min",
            Backward::Where { .. } => "where",
            Backward::Cumsum { .. } => "cumsum",
            Backward::Cumprod { .. } => "cumprod",
            Backward::Sqrt => "sqrt",
            Backward::Rsqrt => "rsqrt",
            Backward::Tanh => "tanh",
            Backward::Sigmoid => "sigmoid",
            Backward::Relu => "relu",
            Backward::Gelu => "gelu",
            Backward::Silu => "silu",
            Backward::GeluErf => "gelu_erf",
            Backward::Matmul => "matmul",
            Backward::Sum { .. } => "sum",
            Backward::Mean { .. } => "mean",
            Backward::Softmax { .. } => "softmax",
            Backward::LogSoftmax { .. } => "log_softmax",
            Backward::Reshape => "reshape",
            Backward::Permute { .. } => "permute",
            Backward::Narrow { .. } => "narrow",
            Backward::BroadcastAs => "broadcast_as",
            Backward::Cat { .. } => "cat",
            Backward::IndexSelect { .. } => "index_select",
            Backward::Gather { .. } => "gather",
            Backward::Scatter { .. } => "scatter",
            Backward::IndexAdd { .. } => "index_add",
            Backward::Cast => "cast",
            Backward::ToDevice => "to_device",
            Backward::Attention { .. } => "attention",
            Backward::Identity => "contiguous",
            Backward::LayerNorm { .. } => "layer_norm",
            Backward::BiasActivation { .. } => "bias_activation",
            Backward::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// The tensors this rule keeps besides the inputs and output the graph keeps for it.
    pub(crate) fn saved(&self) -> Vec<&Tensor> {
        match self {
            Backward::IndexSelect { indices, .. }
            | Backward::Gather { indices, .. }
            | Backward::Scatter { indices, .. }
            | Backward::IndexAdd { indices, .. } => vec![indices],
            Backward::Where { cond } => vec![cond],
            Backward::LayerNorm { mean, rstd, .. } => vec![mean, rstd],
            Backward::CrossEntropy { log_probs, targets, weights, .. } => {
                [Some(log_probs), Some(targets), weights.as_ref()].into_iter().flatten().collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether this rule reads the value of its input `i` (the graph keeps it for the
    /// backward pass only then; of the others, it keeps their shape, dtype and device).
    pub(crate) fn reads_input(&self, i: usize) -> bool {
        match self {
            Backward::Mul
            | Backward::Remainder
            | Backward::Pow
            | Backward::Extremum { .. }
            | Backward::Matmul
            | Backward::Attention { .. } => true,
            // A sum passes the gradient on and an overwrite picks it by place: neither
            // reads a value.
            Backward::Scatter { op, .. } => !matches!(op, ScatterOp::Sum | ScatterOp::Assign),
            Backward::Div => i == 1,
            Backward::LayerNorm { .. } => i < 2,
            Backward::Log
            | Backward::Abs
            | Backward::Sin
            | Backward::Cos
            | Backward::Powf { .. }
            | Backward::Clamp { .. }
            | Backward::ReduceExtremum { .. }
            | Backward::Cumprod { .. }
            | Backward::Relu
            | Backward::Gelu
            | Backward::Silu
            | Backward::GeluErf => i == 0,
            _ => false,
        }
    }

    /// Whether this rule reads its op's output (the graph keeps it only then).
    pub(crate) fn reads_output(&self) -> bool {
        if let Backward::Scatter { op, .. } = self {
            return matches!(op, ScatterOp::Max | ScatterOp::Min);
        }
        matches!(
            self,
            Backward::Div
                | Backward::Remainder
                | Backward::Exp
                | Backward::ReduceExtremum { .. }
                | Backward::Sqrt
                | Backward::Rsqrt
                | Backward::Tanh
                | Backward::Sigmoid
                | Backward::GeluErf
                | Backward::Softmax { .. }
                | Backward::LogSoftmax { .. }
                | Backward::BiasActivation { .. }
        )
    }

    /// The gradients of `inputs` (in order; `None` where an input gets none) given `g`, the
    /// gradient of the output `y` (`None` unless [`reads_output`](Self::reads_output)).
    /// `needs[i]` says whether input `i` wants its gradient: a constant operand (a batch
    /// of inputs, a mask) gets none computed.
    pub(crate) fn apply(
        &self,
        g: &Tensor,
        y: Option<&Tensor>,
        inputs: &[Operand<'_>],
        needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let value = |i: usize| inputs[i].value(self.name());
        let output = || y.ok_or_else(|| not_kept(self.name(), "its output", g));
        let one = |t: Tensor| Ok(vec![Some(t)]);
        // Input `i`'s gradient, computed only if it is wanted.
        let want = |i: usize, grad: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
            if needs.get(i).copied().unwrap_or(true) { grad().map(Some) } else { Ok(None) }
        };
        match self {
            Backward::Add => Ok(vec![
                want(0, &|| sum_to(g, inputs[0].dims()))?,
                want(1, &|| sum_to(g, inputs[1].dims()))?,
            ]),
            Backward::Sub => Ok(vec![
                want(0, &|| sum_to(g, inputs[0].dims()))?,
                want(1, &|| sum_to(&g.neg()?, inputs[1].dims()))?,
            ]),
            Backward::Mul => {
                let (a, b) = (value(0)?, value(1)?);
                Ok(vec![
                    want(0, &|| sum_to(&g.mul(b)?, a.dims()))?,
                    want(1, &|| sum_to(&g.mul(a)?, b.dims()))?,
                ])
            }
            Backward::Div => {
                // d(a/b)/db = -a/b² = -y/b.
                let b = value(1)?;
                let ga = g.div(b)?;
                let gb = want(1, &|| sum_to(&ga.mul(output()?)?.neg()?, b.dims()))?;
                Ok(vec![want(0, &|| sum_to(&ga, inputs[0].dims()))?, gb])
            }
            Backward::Remainder => {
                // y = a - q·b with q = floor(a / b) = (a - y) / b: dy/da = 1, dy/db = -q.
                let (a, b, y) = (value(0)?, value(1)?, output()?);
                let gb = want(1, &|| sum_to(&g.mul(&a.sub(y)?.div(b)?)?.neg()?, b.dims()))?;
                Ok(vec![want(0, &|| sum_to(g, a.dims()))?, gb])
            }
            Backward::Neg => one(g.neg()?),
            Backward::Affine { mul } => one(g.affine(*mul, 0.0)?),
            Backward::Exp => one(g.mul(output()?)?),
            Backward::Log => one(g.div(value(0)?)?),
            Backward::Abs => one(slope(crate::programs::abs_backward(), value(0)?, g)?),
            Backward::Sin => one(slope(crate::programs::sin_cos_backward(true), value(0)?, g)?),
            Backward::Cos => one(slope(crate::programs::sin_cos_backward(false), value(0)?, g)?),
            Backward::Pow => {
                let (a, b) = (value(0)?, value(1)?);
                let part = |program: Vec<manychips_api::Instr>| {
                    Tensor::fused(&[a, b, g], &program, g.dtype())
                };
                Ok(vec![
                    want(0, &|| sum_to(&part(crate::programs::pow_base_backward())?, a.dims()))?,
                    want(1, &|| {
                        sum_to(&part(crate::programs::pow_exponent_backward())?, b.dims())
                    })?,
                ])
            }
            Backward::Powf { exponent } => {
                one(g.mul(&value(0)?.powf(exponent - 1.0)?)?.affine(*exponent, 0.0)?)
            }
            Backward::Extremum { max } => {
                let (a, b) = (value(0)?, value(1)?);
                let program = crate::programs::extremum_backward(*max);
                Ok(vec![
                    want(0, &|| {
                        sum_to(&Tensor::fused(&[a, b, g], &program, g.dtype())?, a.dims())
                    })?,
                    want(1, &|| {
                        sum_to(&Tensor::fused(&[b, a, g], &program, g.dtype())?, b.dims())
                    })?,
                ])
            }
            Backward::Clamp { lo, hi } => {
                one(slope(crate::programs::clamp_backward(*lo, *hi), value(0)?, g)?)
            }
            Backward::ReduceExtremum { axis, keepdim } => {
                let y = output()?;
                let (y, g) = if *keepdim {
                    (y.clone(), g.clone())
                } else {
                    (y.unsqueeze(*axis)?, g.unsqueeze(*axis)?)
                };
                let hits = value(0)?.eq(&y)?.cast(g.dtype())?;
                let share = g.div(&hits.sum_keepdim(*axis)?)?;
                one(hits.mul(&share)?)
            }
            Backward::Cumsum { axis } => {
                // Each input reaches every later output: the gradient is g's sums from the
                // back, Σg − cumsum(g) + g.
                let total = g.sum_keepdim(*axis)?;
                one(total.sub(&g.cumsum(*axis)?)?.add(g)?)
            }
            Backward::Cumprod { axis } => one(value(0)?.cumprod_backward(g, *axis)?),
            Backward::Where { cond } => {
                let zero = Tensor::zeros(Shape::scalar(), g.dtype(), g.device())?;
                Ok(vec![
                    want(0, &|| sum_to(&cond.where_cond(g, &zero)?, inputs[0].dims()))?,
                    want(1, &|| sum_to(&cond.where_cond(&zero, g)?, inputs[1].dims()))?,
                ])
            }
            Backward::Sqrt => one(g.div(output()?)?.affine(0.5, 0.0)?),
            Backward::Rsqrt => {
                // d x^-1/2 = -1/2 x^-3/2 = -1/2 y³, multiplied into g one y at a time: y³
                // alone overflows f16 where y is only 41.
                let y = output()?;
                one(g.mul(y)?.mul(y)?.mul(y)?.affine(-0.5, 0.0)?)
            }
            // One fused pass each, computing what the unfused ops did, in their order.
            Backward::Tanh => one(slope(crate::programs::tanh_backward(), output()?, g)?),
            Backward::Sigmoid => one(slope(crate::programs::sigmoid_backward(), output()?, g)?),
            Backward::Relu => one(slope(crate::programs::relu_backward(), value(0)?, g)?),
            Backward::Gelu => one(slope(crate::programs::gelu_tanh_backward(), value(0)?, g)?),
            Backward::Silu => one(slope(crate::programs::silu_backward(), value(0)?, g)?),
            Backward::GeluErf => one(gelu_erf_backward(value(0)?, output()?, g)?),
            Backward::Matmul => {
                let (a, b) = (&inputs[0], &inputs[1]);
                // Each gradient in its operand's layout: for an operand stored transposed
                // (a Linear's weight, `x · wᵀ`) the product is taken the other way round and
                // viewed transposed, so the transpose's own backward hands the leaf a
                // contiguous gradient instead of one that must be copied into place. Each
                // reads only the other operand's value (a split backward pass's input part
                // never makes an activation again for the weights' gradient).
                let ga = want(0, &|| {
                    let ga = if a.transposed {
                        value(1)?.matmul(&g.t()?)?.t()?
                    } else {
                        g.matmul(&value(1)?.t()?)?
                    };
                    sum_to(&ga, a.dims())
                })?;
                let gb = want(1, &|| {
                    let gb = if b.transposed {
                        g.t()?.matmul(value(0)?)?.t()?
                    } else {
                        value(0)?.t()?.matmul(g)?
                    };
                    sum_to(&gb, b.dims())
                })?;
                Ok(vec![ga, gb])
            }
            Backward::Sum { axis, keepdim } => one(spread(g, x.shape, *axis, *keepdim)?),
            Backward::Mean { axis, keepdim } => {
                let n = x.dims()[*axis].max(1) as f64;
                one(spread(g, x.shape, *axis, *keepdim)?.affine(1.0 / n, 0.0)?)
            }
            Backward::Softmax { axis } => {
                let y = output()?;
                let product = crate::programs::product();
                let dot =
                    Tensor::fused_reduce(&[g, y], &product, ReduceOp::Sum, *axis, DType::F32)?;
                let program = crate::programs::softmax_backward();
                one(Tensor::fused(&[y, g, &dot], &program, y.dtype())?)
            }
            Backward::LogSoftmax { axis } => {
                let y = output()?;
                let total = g.sum_keepdim(*axis)?;
                let program = crate::programs::log_softmax_backward();
                one(Tensor::fused(&[y, g, &total], &program, y.dtype())?)
            }
            Backward::Reshape => one(g.reshape(x.shape.clone())?),
            Backward::Permute { perm } => {
                let mut inverse = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                one(g.permute(&inverse)?)
            }
            Backward::Narrow { axis, start } => one(pad_to(g, x.dims()[*axis], *axis, *start)?),
            Backward::BroadcastAs => one(sum_to(g, x.dims())?),
            Backward::Cat { axis } => {
                let mut start = 0;
                let mut out = Vec::with_capacity(inputs.len());
                for input in inputs {
                    let len = input.dims()[*axis];
                    out.push(Some(g.narrow(*axis, start, len)?));
                    start += len;
                }
                Ok(out)
            }
            Backward::IndexSelect { indices, axis } => {
                let zeros = Tensor::zeros(x.shape.clone(), g.dtype(), g.device())?;
                one(zeros.index_add_owned(*axis, indices, &g.contiguous()?)?)
            }
            Backward::Gather { indices, axis } => {
                let zeros = Tensor::zeros(x.shape.clone(), g.dtype(), g.device())?;
                one(zeros.scatter_add_owned(*axis, indices, &g.contiguous()?)?)
            }
            Backward::IndexAdd { indices, axis } => {
                Ok(vec![want(0, &|| Ok(g.clone()))?, want(1, &|| g.index_select(*axis, indices))?])
            }
            Backward::Scatter { op, indices, axis } => {
                let (x_shape, src_shape) = (x.shape, inputs[1].shape);
                let grads = match op {
                    ScatterOp::Sum => vec![g.clone(), g.gather(*axis, indices)?],
                    ScatterOp::Assign => {
                        scatter_assign_backward(g, x_shape, src_shape, indices, *axis)?
                    }
                    ScatterOp::Max | ScatterOp::Min => {
                        let operands = (value(0)?, value(1)?);
                        scatter_extremum_backward(g, output()?, operands, indices, *axis)?
                    }
                    ScatterOp::Prod => {
                        scatter_prod_backward(g, (value(0)?, value(1)?), indices, *axis)?
                    }
                };
                Ok(grads.into_iter().map(Some).collect())
            }
            Backward::Cast => one(cast_to(g, x.dtype)?),
            Backward::ToDevice => one(g.to_device(x.device)?),
            Backward::Attention { scale, causal } => {
                let (q, k, v) = (value(0)?, value(1)?, value(2)?);
                let (dq, dk, dv) = q.attention_backward(k, v, g, *scale, *causal)?;
                // One op computes all three.
                Ok(vec![
                    want(0, &|| Ok(dq.clone()))?,
                    want(1, &|| Ok(dk.clone()))?,
                    want(2, &|| Ok(dv.clone()))?,
                ])
            }
            Backward::Identity => one(g.clone()),
            Backward::LayerNorm { axis, mean, rstd } => {
                let (x, w) = (value(0)?, value(1)?);
                let xf = x.cast(DType::F32)?;
                // h = g·w; dx = rstd·(h − mean(h) − x̂·mean(h·x̂)); dw = Σ g·x̂; db = Σ g.
                let times = crate::programs::times_normalized();
                let dx = want(0, &|| {
                    let h = Tensor::fused(&[g, w], &crate::programs::product(), DType::F32)?;
                    let h_mean = h.mean_keepdim(*axis)?;
                    let (mean_of, f32) = (ReduceOp::Mean, DType::F32);
                    let hx_mean =
                        Tensor::fused_reduce(&[&h, &xf, mean, rstd], &times, mean_of, *axis, f32)?;
                    let input_grad = crate::programs::layer_norm_input_grad();
                    Tensor::fused(&[&h, &xf, mean, rstd, &h_mean, &hx_mean], &input_grad, x.dtype())
                })?;
                let dw = want(1, &|| {
                    let gx = Tensor::fused(&[g, &xf, mean, rstd], &times, DType::F32)?;
                    sum_to(&gx, w.dims())
                })?;
                let db = want(2, &|| sum_to(&cast_to(g, inputs[2].dtype)?, inputs[2].dims()))?;
                Ok(vec![dx, dw, db])
            }
            Backward::BiasActivation { slope: program } => {
                let d = slope(program.clone(), output()?, g)?;
                Ok(vec![want(0, &|| Ok(d.clone()))?, want(1, &|| sum_to(&d, inputs[1].dims()))?])
            }
            Backward::CrossEntropy { log_probs, targets, weights, smoothing } => {
                // d/dlogits = w·g·(softmax − ε/C) − w·g·(1 − ε) at the target: one pass over
                // the logits, then one add per row.
                let g = g.reshape(targets.shape().clone())?;
                let shift = smoothing / x.dims()[1].max(1) as f64;
                let at_target = -(1.0 - smoothing);
                let (spread, target) = match weights {
                    Some(w) => (
                        Tensor::fused(
                            &[log_probs, &g, w],
                            &crate::programs::cross_entropy_backward(shift, true),
                            DType::F32,
                        )?,
                        Tensor::fused(
                            &[&g, w],
                            &crate::programs::scaled_product(at_target),
                            DType::F32,
                        )?,
                    ),
                    None => (
                        Tensor::fused(
                            &[log_probs, &g],
                            &crate::programs::cross_entropy_backward(shift, false),
                            DType::F32,
                        )?,
                        g.affine(at_target, 0.0)?,
                    ),
                };
                one(spread.scatter_add_owned(1, targets, &target)?)
            }
        }
    }
}

/// An op's input as its backward rule sees it: its shape, dtype and device always, its
/// value only where the rule reads it ([`Backward::reads_input`]), kept or made again.
pub(crate) struct Operand<'a> {
    pub shape: &'a Shape,
    pub dtype: DType,
    pub device: &'a DeviceRef,
    /// The value is a transposed view of a contiguous buffer (a `Linear`'s weight, `wᵀ`).
    pub transposed: bool,
    pub value: Option<&'a Tensor>,
    /// Where the graph keeps no value but can make it again from what it keeps (an
    /// activation's output from its input): made at the rule's first read.
    pub again: Option<Box<dyn Fn() -> Result<Tensor> + 'a>>,
    pub made: OnceCell<Tensor>,
}

impl Operand<'_> {
    fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    fn value(&self, rule: &str) -> Result<&Tensor> {
        if let Some(value) = self.value.or(self.made.get()) {
            return Ok(value);
        }
        let Some(again) = &self.again else {
            return Err(Error::InvalidArgument {
                op: format!("backward of {rule}"),
                device: self.device.info().label(),
                detail: "the graph did not keep an input this rule reads (a bug of the rule's \
                         `reads_input`)"
                    .into(),
            });
        };
        let made = again()?;
        Ok(self.made.get_or_init(|| made))
    }
}

fn not_kept(rule: &str, what: &str, g: &Tensor) -> Error {
    Error::InvalidArgument {
        op: format!("backward of {rule}"),
        device: g.device().info().label(),
        detail: format!("the graph did not keep {what}, which this rule reads"),
    }
}

fn cast_to(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype { Ok(t.clone()) } else { t.cast(dtype) }
}

/// d/dx x·Φ(x) = Φ(x) + x·φ(x), with Φ(x) = y / x from the forward's own output (no erf
/// op needed), and ½ + x·φ(0) where |x| is too small to divide by (its Taylor series, exact
/// to f32 there).
fn gelu_erf_backward(x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    let (dtype, device) = (x.dtype(), x.device());
    let x = x.cast(DType::F32)?;
    let y = y.cast(DType::F32)?;
    let tiny = Tensor::full(1e-3, Shape::scalar(), DType::F32, device)?;
    let safe = x.abs()?.gt(&tiny)?;
    let one = Tensor::ones(Shape::scalar(), DType::F32, device)?;
    let cdf =
        safe.where_cond(&y.div(&safe.where_cond(&x, &one)?)?, &x.affine(INV_SQRT_2PI, 0.5)?)?;
    let pdf = x.mul(&x)?.affine(-0.5, 0.0)?.exp()?.affine(INV_SQRT_2PI, 0.0)?;
    let slope = cdf.add(&x.mul(&pdf)?)?;
    cast_to(&slope.mul(&g.cast(DType::F32)?)?, dtype)
}

/// The gradients of `y = scatter(x, axis, indices, src)` overwriting (`x` of shape `x`,
/// `src` of shape `src`): an overwritten element of `x` gets none, and of several sources
/// naming one target only the one that stayed (the last) gets it.
fn scatter_assign_backward(
    g: &Tensor,
    x: &Shape,
    src: &Shape,
    indices: &Tensor,
    axis: usize,
) -> Result<Vec<Tensor>> {
    let dtype = g.dtype();
    // Each source element's place along the axis; the target keeps the last one's.
    let n = src.dims()[axis];
    let mut along = vec![1; src.rank()];
    along[axis] = n;
    let place = Tensor::arange(n, DType::U32, g.device())?.reshape(along)?;
    let place = place.expand(src.clone())?.contiguous()?;
    let none = Tensor::full(f64::from(u32::MAX), x.clone(), DType::U32, g.device())?;
    let kept = none.scatter(axis, indices, &place)?.gather(axis, indices)?.eq(&place)?;
    let dx = g.scatter(axis, indices, &Tensor::zeros(src.clone(), dtype, g.device())?)?;
    Ok(vec![dx, g.gather(axis, indices)?.mul(&kept.cast(dtype)?)?])
}

/// The gradients of `y = scatter(x, axis, indices, src)` keeping the max or the min, for
/// `x` and `src`: split evenly among every element equal to the result, `x`'s included
/// (PyTorch's `amax`/`amin`).
fn scatter_extremum_backward(
    g: &Tensor,
    y: &Tensor,
    (x, src): (&Tensor, &Tensor),
    indices: &Tensor,
    axis: usize,
) -> Result<Vec<Tensor>> {
    let dtype = g.dtype();
    let hits_x = x.eq(y)?.cast(dtype)?;
    let hits_src = src.eq(&y.gather(axis, indices)?)?.cast(dtype)?;
    let ties = hits_x.scatter_reduce(axis, indices, &hits_src, ScatterOp::Sum)?;
    let share = g.div(&ties)?;
    Ok(vec![hits_x.mul(&share)?, hits_src.mul(&share.gather(axis, indices)?)?])
}

/// The gradients of `y = scatter(x, axis, indices, src)` multiplying, for `x` and `src`.
fn scatter_prod_backward(
    g: &Tensor,
    (x, src): (&Tensor, &Tensor),
    indices: &Tensor,
    axis: usize,
) -> Result<Vec<Tensor>> {
    let dtype = g.dtype();
    // Each factor's gradient is the product of the target's other factors: the
    // product of its nonzero factors divided by its own value where the target has
    // no zero factor; that product, for the zero itself, where it has exactly one;
    // 0 everywhere else. No division by a zero, as PyTorch's rule.
    let zero = Tensor::zeros(Shape::scalar(), dtype, g.device())?;
    let one = Tensor::ones(Shape::scalar(), dtype, g.device())?;
    let (x_zero, src_zero) = (x.eq(&zero)?, src.eq(&zero)?);
    let zeros = x_zero.cast(dtype)?.scatter_reduce(
        axis,
        indices,
        &src_zero.cast(dtype)?,
        ScatterOp::Sum,
    )?;
    let nonzero = |v: &Tensor, is_zero: &Tensor| is_zero.where_cond(&one, v);
    let product = nonzero(x, &x_zero)?.scatter_reduce(
        axis,
        indices,
        &nonzero(src, &src_zero)?,
        ScatterOp::Prod,
    )?;
    let others = |v: &Tensor, is_zero: &Tensor, zeros: &Tensor, product: &Tensor| {
        let divided = product.div(&nonzero(v, is_zero)?)?;
        let lone_zero = zeros.eq(&one)?.mul(is_zero)?;
        let none = zeros.eq(&zero)?;
        none.where_cond(&divided, &lone_zero.where_cond(product, &zero)?)
    };
    let dx = g.mul(&others(x, &x_zero, &zeros, &product)?)?;
    let (zeros_at, product_at) = (zeros.gather(axis, indices)?, product.gather(axis, indices)?);
    let share = others(src, &src_zero, &zeros_at, &product_at)?;
    Ok(vec![dx, g.gather(axis, indices)?.mul(&share)?])
}

/// The gradient of a broadcast operand: `g` summed over the axes `like` was stretched along.
fn sum_to(g: &Tensor, like: &[usize]) -> Result<Tensor> {
    if g.dims() == like {
        return Ok(g.clone());
    }
    let mut g = g.clone();
    while g.rank() > like.len() {
        g = g.sum(0)?;
    }
    for (axis, &want) in like.iter().enumerate() {
        if want == 1 && g.dims()[axis] != 1 {
            g = g.sum_keepdim(axis)?;
        }
    }
    Ok(g)
}

/// A reduction's gradient: `g` put back along the reduced axis, the same value for every
/// element that was summed.
fn spread(g: &Tensor, shape: &Shape, axis: usize, keepdim: bool) -> Result<Tensor> {
    let g = if keepdim { g.clone() } else { g.unsqueeze(axis)? };
    g.broadcast_as(shape.clone())
}

/// `g` placed at `start` along `axis` in zeros `total` long there: the gradient of a narrow.
fn pad_to(g: &Tensor, total: usize, axis: usize, start: usize) -> Result<Tensor> {
    let len = g.dims()[axis];
    let zeros = |n: usize| {
        let mut dims = g.dims().to_vec();
        dims[axis] = n;
        Tensor::zeros(Shape::new(dims), g.dtype(), g.device())
    };
    let before = (start > 0).then(|| zeros(start)).transpose()?;
    let after = (start + len < total).then(|| zeros(total - start - len)).transpose()?;
    let parts: Vec<&Tensor> = before.iter().chain(std::iter::once(g)).chain(after.iter()).collect();
    if parts.len() == 1 { Ok(g.clone()) } else { Tensor::cat(&parts, axis) }
}

/// `program(t, g)` in `t`'s dtype: an activation's backward from its input or output `t`
/// and the output's gradient `g`.
fn slope(program: Vec<manychips_api::Instr>, t: &Tensor, g: &Tensor) -> Result<Tensor> {
    Tensor::fused(&[t, g], &program, t.dtype())
}

/// True for a transposed view of a contiguous tensor (its last two axes swapped).
pub(crate) fn stored_transposed(t: &Tensor) -> bool {
    t.rank() >= 2 && !t.is_contiguous() && t.t().is_ok_and(|t| t.is_contiguous())
}
