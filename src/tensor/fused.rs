//! [`Tensor::fused`]: one pass of a fused elementwise program over tensors broadcast to one
//! shape, and the programs the library itself uses ([`programs`]).

use manychips_api::Instr;

use super::{Tensor, label};
use crate::{DType, Error, Op, ReduceOp, Result, Shape, View};

impl Tensor {
    /// `program(inputs…)` elementwise in one pass (see [`manychips_api::fused`]): the inputs
    /// broadcast to one shape as numpy does, any float dtypes, computed in f32; the result in
    /// `dtype`. All inputs on one device.
    pub fn fused(inputs: &[&Tensor], program: &[Instr], dtype: DType) -> Result<Tensor> {
        let (first, shape, views) = broadcast_views(inputs, "fused")?;
        let out = first.output("fused", shape, dtype)?;
        out.enqueue(Op::Fused { inputs: views, program: program.to_vec(), out: out.view() })?;
        Ok(out)
    }

    /// `program(inputs…)` (as [`Tensor::fused`] computes it) reduced along `axis` by `op`
    /// (sum, mean, max or min) in the same pass: the values are never stored. The result
    /// keeps `axis` with length 1, in `dtype`.
    pub fn fused_reduce(
        inputs: &[&Tensor],
        program: &[Instr],
        op: ReduceOp,
        axis: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let name = "fused_reduce";
        let (first, shape, views) = broadcast_views(inputs, name)?;
        if axis >= shape.rank() {
            return Err(Error::IndexOutOfRange {
                op: name.into(),
                device: label(first.device()),
                detail: format!("axis {axis} of the {}-d iteration shape {shape}", shape.rank()),
            });
        }
        let mut dims = shape.dims().to_vec();
        dims[axis] = 1;
        let out = first.output(name, Shape::new(dims), dtype)?;
        let program = program.to_vec();
        out.enqueue(Op::FusedReduce { inputs: views, program, op, axis, out: out.view() })?;
        Ok(out)
    }
}

/// The first input, the shape `inputs` broadcast to, and each input's view at that shape.
fn broadcast_views<'t>(inputs: &[&'t Tensor], op: &str) -> Result<(&'t Tensor, Shape, Vec<View>)> {
    let Some(&first) = inputs.first() else {
        return Err(Error::InvalidArgument {
            op: op.into(),
            device: "-".into(),
            detail: "a fused program needs at least one input".into(),
        });
    };
    let mut shape: Shape = first.shape().clone();
    for t in &inputs[1..] {
        first.same_device(t, op)?;
        shape = shape.broadcast(t.shape()).ok_or_else(|| Error::Shape {
            op: op.into(),
            device: label(first.device()),
            detail: format!(
                "{} do not broadcast",
                inputs.iter().map(|t| t.describe()).collect::<Vec<_>>().join(", ")
            ),
        })?;
    }
    let views = inputs
        .iter()
        .map(|t| {
            let layout = t.layout.broadcast_to(&shape).ok_or_else(|| Error::Shape {
                op: op.into(),
                device: label(t.device()),
                detail: format!("{} does not broadcast to {shape}", t.describe()),
            })?;
            Ok(t.with_layout(layout).view())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((first, shape, views))
}

/// The fused programs of the library's own layers (autograd, optimizers).
pub(crate) mod programs {
    use manychips_api::{BinaryOp, CompareOp, Instr, UnaryOp};

    use Instr::*;

    /// `√(2/π)`, GELU's tanh-approximation factor.
    const GELU_K: f64 = 0.797_884_560_802_865_4;
    const GELU_C: f64 = 0.044_715;

    /// `grad · gelu_tanh'(x)` from inputs `[x, grad]`:
    /// `½(1 + t) + ½·x·(1 − t²)·k·(1 + 3c·x²)` with `t = tanh(k·x·(1 + c·x²))`, in the
    /// order of the unfused backward.
    pub fn gelu_tanh_backward() -> Vec<Instr> {
        vec![
            Input(0),                      // 0: x
            Input(1),                      // 1: grad
            Binary(BinaryOp::Mul, 0, 0),   // 2: x²
            Affine(2, GELU_C, 1.0),        // 3: 1 + c·x²
            Binary(BinaryOp::Mul, 0, 3),   // 4
            Affine(4, GELU_K, 0.0),        // 5: k·x·(1 + c·x²)
            Unary(UnaryOp::Tanh, 5),       // 6: t
            Affine(6, 0.5, 0.5),           // 7: ½(1 + t)
            Binary(BinaryOp::Mul, 6, 6),   // 8: t²
            Affine(8, -1.0, 1.0),          // 9: 1 − t²
            Binary(BinaryOp::Mul, 0, 9),   // 10
            Affine(2, 3.0 * GELU_C, 1.0),  // 11: 1 + 3c·x²
            Binary(BinaryOp::Mul, 10, 11), // 12
            Affine(12, 0.5 * GELU_K, 0.0), // 13
            Binary(BinaryOp::Add, 7, 13),  // 14: gelu'(x)
            Binary(BinaryOp::Mul, 1, 14),  // 15: grad · gelu'(x)
        ]
    }

    /// An exponential moving average `β·avg + (1 − β)·x` from inputs `[avg, x]`, of `x`
    /// itself or (`squared`) of `x²`: AdamW's two moments. Without a previous average
    /// (`first`), from inputs `[x]`: `(1 − β)·x`.
    pub fn moment(beta: f64, squared: bool, first: bool) -> Vec<Instr> {
        let mut p = if first { vec![Input(0)] } else { vec![Input(0), Input(1)] };
        let mut x = p.len() - 1;
        if squared {
            p.push(Binary(BinaryOp::Mul, x, x));
            x = p.len() - 1;
        }
        p.push(Affine(x, 1.0 - beta, 0.0));
        if !first {
            let scaled = p.len() - 1;
            p.push(Affine(0, beta, 0.0));
            p.push(Binary(BinaryOp::Add, p.len() - 1, scaled));
        }
        p
    }

    /// AdamW's step from inputs `[param, m, v]`, in the order of the unfused update:
    /// `param·(1 − lr·wd) − (m / (√(v / bc2) + eps))·(lr / bc1)`.
    pub fn adamw_update(lr: f64, weight_decay: f64, eps: f64, bc1: f64, bc2: f64) -> Vec<Instr> {
        vec![
            Input(0),                                // 0: param
            Input(1),                                // 1: m
            Input(2),                                // 2: v
            Affine(0, 1.0 - lr * weight_decay, 0.0), // 3: decayed param
            Affine(2, 1.0 / bc2, 0.0),               // 4: v̂
            Unary(UnaryOp::Sqrt, 4),                 // 5
            Affine(5, 1.0, eps),                     // 6: √v̂ + eps
            Binary(BinaryOp::Div, 1, 6),             // 7
            Affine(7, lr / bc1, 0.0),                // 8: the step
            Binary(BinaryOp::Sub, 3, 8),             // 9
        ]
    }

    /// `(x − mean)²` from inputs `[x, mean]`: the terms of a variance.
    pub fn centred_square() -> Vec<Instr> {
        vec![Input(0), Input(1), Binary(BinaryOp::Sub, 0, 1), Binary(BinaryOp::Mul, 2, 2)]
    }

    /// `1 / √(var + eps)` from inputs `[var]`.
    pub fn rstd(eps: f64) -> Vec<Instr> {
        vec![Input(0), Affine(0, 1.0, eps), Unary(UnaryOp::Rsqrt, 1)]
    }

    /// Layer norm's output `(x − mean)·rstd·w + b` from inputs `[x, mean, rstd, w, b]`.
    pub fn layer_norm() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Input(3),
            Input(4),
            Binary(BinaryOp::Sub, 0, 1), // 5: x − mean
            Binary(BinaryOp::Mul, 5, 2), // 6: x̂
            Binary(BinaryOp::Mul, 6, 3), // 7
            Binary(BinaryOp::Add, 7, 4), // 8
        ]
    }

    /// `a · b` from inputs `[a, b]`.
    pub fn product() -> Vec<Instr> {
        vec![Input(0), Input(1), Binary(BinaryOp::Mul, 0, 1)]
    }

    /// `g · x̂` with `x̂ = (x − mean)·rstd`, from inputs `[g, x, mean, rstd]`.
    pub fn times_normalized() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Input(3),
            Binary(BinaryOp::Sub, 1, 2), // 4: x − mean
            Binary(BinaryOp::Mul, 4, 3), // 5: x̂
            Binary(BinaryOp::Mul, 0, 5), // 6
        ]
    }

    /// Layer norm's input gradient `rstd·(h − mean(h) − x̂·mean(h·x̂))` with `h = g·w`, from
    /// inputs `[h, x, mean, rstd, mean(h), mean(h·x̂)]`.
    pub fn layer_norm_input_grad() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Input(3),
            Input(4),
            Input(5),
            Binary(BinaryOp::Sub, 1, 2),  // 6: x − mean
            Binary(BinaryOp::Mul, 6, 3),  // 7: x̂
            Binary(BinaryOp::Mul, 7, 5),  // 8: x̂·mean(h·x̂)
            Binary(BinaryOp::Sub, 0, 4),  // 9: h − mean(h)
            Binary(BinaryOp::Sub, 9, 8),  // 10
            Binary(BinaryOp::Mul, 10, 3), // 11
        ]
    }

    /// Softmax's input gradient `y · (g − Σ g·y)` from inputs `[y, g, Σ g·y]` (the sum over
    /// the softmax axis, broadcast back along it).
    pub fn softmax_backward() -> Vec<Instr> {
        vec![Input(0), Input(1), Input(2), Binary(BinaryOp::Sub, 1, 2), Binary(BinaryOp::Mul, 0, 3)]
    }

    /// Log-softmax's input gradient `g − e^y · Σ g` from inputs `[y, g, Σ g]`.
    pub fn log_softmax_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Unary(UnaryOp::Exp, 0),
            Binary(BinaryOp::Mul, 3, 2),
            Binary(BinaryOp::Sub, 1, 4),
        ]
    }

    /// Cross-entropy per row from inputs `[picked, mean?, weight?]`: `−w·((1 − ε)·picked +
    /// ε·mean)`, with `picked` the target's log-probability and `mean` the row's mean
    /// log-probability (an input only when `smoothing` ε > 0), `w` only when `weighted`.
    pub fn cross_entropy_rows(smoothing: f64, weighted: bool) -> Vec<Instr> {
        let mut p = vec![Input(0)];
        let mut inputs = 1;
        let mut last = if smoothing > 0.0 {
            p.push(Input(1)); // 1: mean
            inputs += 1;
            p.push(Affine(0, -(1.0 - smoothing), 0.0)); // 2
            p.push(Affine(1, -smoothing, 0.0)); // 3
            p.push(Binary(BinaryOp::Add, 2, 3)); // 4
            4
        } else {
            p.push(Affine(0, -1.0, 0.0)); // 1
            1
        };
        if weighted {
            p.push(Input(inputs));
            p.push(Binary(BinaryOp::Mul, last, p.len() - 1));
            last = p.len() - 1;
        }
        debug_assert_eq!(last, p.len() - 1);
        p
    }

    /// Cross-entropy's gradient before the target's term, `(e^lp − shift)·g·w`, from inputs
    /// `[lp, g, w?]` (`w` only when `weighted`): `shift` is the smoothing spread over the
    /// classes, ε/C.
    pub fn cross_entropy_backward(shift: f64, weighted: bool) -> Vec<Instr> {
        let mut p = vec![Input(0), Input(1)];
        p.push(Unary(UnaryOp::Exp, 0)); // 2
        p.push(Affine(2, 1.0, -shift)); // 3
        p.push(Binary(BinaryOp::Mul, 3, 1)); // 4
        if weighted {
            p.push(Input(2)); // 5
            p.push(Binary(BinaryOp::Mul, 4, 5)); // 6
        }
        p
    }

    /// `g · w · scale` from inputs `[g, w]`: what cross-entropy's gradient adds at each
    /// row's target, for weighted rows.
    pub fn scaled_product(scale: f64) -> Vec<Instr> {
        vec![Input(0), Input(1), Binary(BinaryOp::Mul, 0, 1), Affine(2, scale, 0.0)]
    }

    /// `act(h + b)` from inputs `[h, b]`: a layer's bias and activation in one pass.
    pub fn bias_activation(act: UnaryOp) -> Vec<Instr> {
        vec![Input(0), Input(1), Binary(BinaryOp::Add, 0, 1), Unary(act, 2)]
    }

    /// `grad · (x > 0)` from inputs `[x, grad]`: ReLU's backward.
    pub fn relu_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Const(0.0),
            Compare(CompareOp::Gt, 0, 2),
            Binary(BinaryOp::Mul, 1, 3),
        ]
    }

    /// `grad · (1 − y²)` from inputs `[y, grad]`, `y = tanh(x)`.
    pub fn tanh_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Binary(BinaryOp::Mul, 0, 0),
            Affine(2, -1.0, 1.0),
            Binary(BinaryOp::Mul, 1, 3),
        ]
    }

    /// `grad · y·(1 − y)` from inputs `[y, grad]`, `y = sigmoid(x)`.
    pub fn sigmoid_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Affine(0, -1.0, 1.0),
            Binary(BinaryOp::Mul, 0, 2),
            Binary(BinaryOp::Mul, 1, 3),
        ]
    }

    /// `grad · s·(1 + x·(1 − s))` with `s = sigmoid(x)`, from inputs `[x, grad]`: SiLU's
    /// backward.
    pub fn silu_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Unary(UnaryOp::Sigmoid, 0),
            Affine(2, -1.0, 1.0),
            Binary(BinaryOp::Mul, 0, 3),
            Affine(4, 1.0, 1.0),
            Binary(BinaryOp::Mul, 2, 5),
            Binary(BinaryOp::Mul, 1, 6),
        ]
    }

    /// `grad · sign(x)` from inputs `[x, grad]`: |x|'s backward (0 at 0, as PyTorch).
    pub fn abs_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Const(0.0),
            Compare(CompareOp::Gt, 0, 2),
            Compare(CompareOp::Lt, 0, 2),
            Binary(BinaryOp::Sub, 3, 4),
            Binary(BinaryOp::Mul, 1, 5),
        ]
    }

    /// `grad · cos(x)` (sin's backward) or `−grad · sin(x)` (cos's), from `[x, grad]`.
    pub fn sin_cos_backward(of_sin: bool) -> Vec<Instr> {
        let (slope, sign) = if of_sin { (UnaryOp::Cos, 1.0) } else { (UnaryOp::Sin, -1.0) };
        vec![Input(0), Input(1), Unary(slope, 0), Affine(2, sign, 0.0), Binary(BinaryOp::Mul, 1, 3)]
    }

    /// `grad · b · a^(b − 1)` from inputs `[a, b, grad]`: `a^b`'s backward for the base.
    pub fn pow_base_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Affine(1, 1.0, -1.0),
            Binary(BinaryOp::Pow, 0, 3),
            Binary(BinaryOp::Mul, 1, 4),
            Binary(BinaryOp::Mul, 2, 5),
        ]
    }

    /// `grad · a^b · ln a` from inputs `[a, b, grad]`: `a^b`'s backward for the exponent.
    pub fn pow_exponent_backward() -> Vec<Instr> {
        vec![
            Input(0),
            Input(1),
            Input(2),
            Binary(BinaryOp::Pow, 0, 1),
            Unary(UnaryOp::Log, 0),
            Binary(BinaryOp::Mul, 3, 4),
            Binary(BinaryOp::Mul, 2, 5),
        ]
    }

    /// The share of `grad` that `maximum(a, b)` (or `minimum`) sends to `a`, from inputs
    /// `[a, b, grad]`: all of it where `a` wins, half on a tie (as PyTorch), none elsewhere.
    pub fn extremum_backward(max: bool) -> Vec<Instr> {
        let wins = if max { CompareOp::Gt } else { CompareOp::Lt };
        vec![
            Input(0),
            Input(1),
            Input(2),
            Compare(wins, 0, 1),
            Compare(CompareOp::Eq, 0, 1),
            Affine(4, 0.5, 0.0),
            Binary(BinaryOp::Add, 3, 5),
            Binary(BinaryOp::Mul, 2, 6),
        ]
    }

    /// `grad · (lo ≤ x ≤ hi)` from inputs `[x, grad]`: clamp's backward (bounds included,
    /// as PyTorch; an infinite bound is no test).
    pub fn clamp_backward(lo: f64, hi: f64) -> Vec<Instr> {
        let mut program = vec![Input(0), Input(1)];
        let mut slope = None;
        for (bound, test) in [(lo, CompareOp::Ge), (hi, CompareOp::Le)] {
            if bound.is_finite() {
                program.push(Const(bound));
                program.push(Compare(test, 0, program.len() - 1));
                let inside = program.len() - 1;
                slope = Some(match slope {
                    None => inside,
                    Some(s) => {
                        program.push(Binary(BinaryOp::Mul, s, inside));
                        program.len() - 1
                    }
                });
            }
        }
        if let Some(s) = slope {
            program.push(Binary(BinaryOp::Mul, 1, s));
        }
        program
    }
}
