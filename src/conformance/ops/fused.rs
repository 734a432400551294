//! Fused elementwise programs (`Op::Fused`): the library's own programs (GELU's backward,
//! AdamW's moments and update, LayerNorm's pieces of four to six inputs) and one that uses
//! every kind of step, over broadcast, strided and mixed-dtype inputs. Each case is checked twice: against the program
//! evaluated in f64 on the host, and against its decomposition into primitive ops
//! (`fused::decompose`) on the same device, which a native kernel must match to a few ulps.

use crate::fused::decompose;
use crate::{BinaryOp, CompareOp, DType, Instr, Op, UnaryOp};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host};
use super::super::runner::{Ctx, Runner, device};
use super::super::tolerance::{ErrorModel, Expected};
use super::super::values::{Dist, decode, min_normal};
use super::{Arg, arg, host};
use crate::conformance::report::Problem;

pub(super) fn run(r: &mut Runner<'_>) {
    for dtype in DType::FLOATS {
        let name = dtype.name();
        let Some(mut rng) = r.begin("fused", name, &[(dtype, "")]) else { continue };
        for (what, program, dists) in programs() {
            for form in forms(dists.len()) {
                let inputs = program_inputs(&mut rng, dtype, &form.args, &dists, &form.dims);
                let expected = evaluate(&program, &inputs);
                let magnitude = match &expected.model {
                    ErrorModel::Approx { scale, .. } => scale.iter().map(|s| s / 16.0).collect(),
                    ErrorModel::Exact => vec![0.0; expected.values.len()],
                };
                let out = Output::new(dtype, &form.dims).at(form.out);
                let p = program.clone();
                let build = move |v: &[crate::View], out| Op::Fused {
                    inputs: v.to_vec(),
                    program: p.clone(),
                    out,
                };
                let case = Case::new(inputs.clone(), out, expected, build);
                r.run_case("fused", name, case);
                let dims = form.dims.clone();
                let program = program.clone();
                r.check(
                    "fused",
                    name,
                    format!("{what} over {dims:?}: native against decomposition"),
                    |ctx| against_decomposition(ctx, &program, &inputs, dtype, &dims, &magnitude),
                );
            }
        }
    }
}

/// A program's inputs: random values from `dists` placed as `args` say, broadcast to
/// `dims`; the second in f32 when the case is in a half type (mixed dtypes).
pub(super) fn program_inputs(
    rng: &mut rand_chacha::ChaCha8Rng,
    dtype: DType,
    args: &[Arg],
    dists: &[Dist],
    dims: &[usize],
) -> Vec<Operand> {
    args.iter()
        .zip(dists)
        .enumerate()
        .map(|(k, (a, &dist))| {
            let dt = if k == 1 && dtype != DType::F32 { DType::F32 } else { dtype };
            Operand::new(dt, host(rng, dt, dist, &a.src)).at(a.place).broadcast(dims)
        })
        .collect()
}

/// (name, program, the distribution of each input).
fn programs() -> Vec<(&'static str, Vec<Instr>, Vec<Dist>)> {
    use Instr::*;
    let any = Dist::Uniform(-4.0, 4.0);
    let positive = Dist::Uniform(0.0, 2.0);
    let everything = vec![
        Input(0),
        Input(1),
        Const(0.75),
        Unary(UnaryOp::Abs, 0),
        Affine(3, 1.0, 0.5),
        Unary(UnaryOp::Sqrt, 4),
        Unary(UnaryOp::Log, 4),
        Unary(UnaryOp::Exp, 1),
        Binary(BinaryOp::Mul, 5, 2),
        Binary(BinaryOp::Div, 6, 7),
        Binary(BinaryOp::Max, 8, 9),
        Binary(BinaryOp::Min, 10, 1),
        Unary(UnaryOp::Sigmoid, 11),
        Binary(BinaryOp::Sub, 12, 5),
        Compare(CompareOp::Gt, 0, 1),
        Compare(CompareOp::Le, 13, 2),
        Binary(BinaryOp::Add, 14, 15),
        Binary(BinaryOp::Mul, 13, 16),
    ];
    vec![
        ("gelu_tanh_backward", crate::programs::gelu_tanh_backward(), vec![any, any]),
        ("relu_backward", crate::programs::relu_backward(), vec![any, any]),
        ("silu_backward", crate::programs::silu_backward(), vec![any, any]),
        ("softmax_backward", crate::programs::softmax_backward(), vec![any, any, any]),
        ("log_softmax_backward", crate::programs::log_softmax_backward(), vec![any, any, any]),
        ("moment", crate::programs::moment(0.9, false, false), vec![any, any]),
        ("squared moment, first step", crate::programs::moment(0.999, true, true), vec![any]),
        (
            "adamw_update",
            crate::programs::adamw_update(1e-3, 0.01, 1e-8, 0.19, 0.002),
            vec![any, any, positive],
        ),
        ("every kind of step", everything, vec![any, any]),
        // More inputs than the GPU kernels take: those backends run them in parts.
        ("times_normalized", crate::programs::times_normalized(), vec![any; 4]),
        ("layer_norm", crate::programs::layer_norm(), vec![any; 5]),
        ("layer_norm_input_grad", crate::programs::layer_norm_input_grad(), vec![any; 6]),
    ]
}

struct Form {
    dims: Vec<usize>,
    args: Vec<Arg>,
    out: Place,
}

/// Layouts for `n` inputs: contiguous, strided, reversed, a broadcast row, a scalar.
fn forms(n: usize) -> Vec<Form> {
    if n > 3 {
        return wide_forms(n);
    }
    let form = |dims: &[usize], srcs: [(&[usize], Place); 3], out| Form {
        dims: dims.to_vec(),
        args: srcs.iter().take(n).map(|&(s, p)| arg(s, p)).collect(),
        out,
    };
    vec![
        form(&[1], [(&[1], Contiguous), (&[1], Contiguous), (&[1], Contiguous)], Contiguous),
        form(&[37], [(&[37], Offset), (&[37], Contiguous), (&[1], Contiguous)], Contiguous),
        form(&[5, 9], [(&[5, 9], Padded), (&[1, 9], Contiguous), (&[5, 9], Reversed)], Padded),
        form(&[7, 13], [(&[7, 13], SwapLast), (&[7, 13], Padded), (&[], Contiguous)], Reversed),
        form(
            &[3, 0],
            [(&[3, 0], Contiguous), (&[3, 0], Contiguous), (&[3, 0], Contiguous)],
            Contiguous,
        ),
        form(
            &[3, 2100],
            [(&[3, 2100], Contiguous), (&[3, 2100], Offset), (&[3, 1], Contiguous)],
            Contiguous,
        ),
    ]
}

/// Layouts for four to six inputs (a layer norm's): rows, per-row statistics broadcast along
/// them, per-column weights broadcast across them, strided and offset.
fn wide_forms(n: usize) -> Vec<Form> {
    let form = |dims: &[usize], srcs: [(&[usize], Place); 6], out| Form {
        dims: dims.to_vec(),
        args: srcs.iter().take(n).map(|&(s, p)| arg(s, p)).collect(),
        out,
    };
    vec![
        form(
            &[37],
            [
                (&[37], Offset),
                (&[37], Contiguous),
                (&[1], Contiguous),
                (&[37], Reversed),
                (&[1], Contiguous),
                (&[37], Contiguous),
            ],
            Contiguous,
        ),
        form(
            &[5, 9],
            [
                (&[5, 9], Padded),
                (&[5, 9], SwapLast),
                (&[5, 1], Contiguous),
                (&[5, 1], Contiguous),
                (&[1, 9], Contiguous),
                (&[5, 1], Offset),
            ],
            Padded,
        ),
        form(
            &[3, 2100],
            [
                (&[3, 2100], Contiguous),
                (&[3, 2100], Offset),
                (&[3, 1], Contiguous),
                (&[3, 1], Contiguous),
                (&[1, 2100], Contiguous),
                (&[3, 1], Contiguous),
            ],
            Contiguous,
        ),
    ]
}

/// The program in f64 on the host. The allowance grows with every register's magnitude:
/// each step rounds to f32 on the device, and later steps carry that error along.
pub(super) fn evaluate(program: &[Instr], inputs: &[Operand]) -> Expected {
    let logical: Vec<Host> = inputs.iter().map(Operand::logical).collect();
    let n = logical.first().map_or(0, Host::numel);
    let mut values = vec![0.0; n];
    let mut scale = vec![0.0; n];
    let mut regs = vec![0.0f64; program.len()];
    for e in 0..n {
        let mut magnitude = 0.0;
        for (k, instr) in program.iter().enumerate() {
            let v = match *instr {
                Instr::Input(m) => logical[m].data[e],
                Instr::Const(c) => c as f32 as f64,
                Instr::Unary(op, a) => {
                    reference::unary(op, &Host::new(vec![1], vec![regs[a]])).values[0]
                }
                Instr::Binary(op, a, b) => {
                    let (x, y) =
                        (Host::new(vec![1], vec![regs[a]]), Host::new(vec![1], vec![regs[b]]));
                    reference::binary(op, &x, &y).values[0]
                }
                Instr::Affine(a, mul, add) => regs[a] * mul + add,
                Instr::Compare(op, a, b) => {
                    let (x, y) =
                        (Host::new(vec![1], vec![regs[a]]), Host::new(vec![1], vec![regs[b]]));
                    reference::compare(op, &x, &y).values[0]
                }
            };
            regs[k] = v;
            magnitude += v.abs();
        }
        values[e] = regs[program.len() - 1];
        scale[e] = 16.0 * magnitude;
    }
    Expected::approx(values, scale)
}

/// The device's `Op::Fused` against `decompose` on the same device: equal to a few ulps of
/// the output dtype, of the result or, where steps cancel, of the steps' `magnitude` (the
/// sum of every register's absolute value: a GPU compiler may contract `a·b + c` into one
/// rounding in one and not the other). The CPU's native kernel is bit-exact.
fn against_decomposition(
    ctx: &mut Ctx<'_>,
    program: &[Instr],
    inputs: &[Operand],
    dtype: DType,
    dims: &[usize],
    magnitude: &[f64],
) -> Result<(), Problem> {
    let mut views = Vec::new();
    for operand in inputs {
        views.push(ctx.upload(operand)?);
    }
    let native = ctx.output(&Output::new(dtype, dims))?;
    let decomposed = ctx.output(&Output::new(dtype, dims))?;
    let fused = |out: &crate::View| Op::Fused {
        inputs: views.clone(),
        program: program.to_vec(),
        out: out.clone(),
    };
    ctx.run(&fused(&native.view))?;
    decompose(ctx.dev, &fused(&decomposed.view)).map_err(|e| device("fused::decompose", e))?;
    let len = native.image.len();
    let a = decode(dtype, &ctx.read(native.view.buffer, 0, len)?);
    let b = decode(dtype, &ctx.read(decomposed.view.buffer, 0, len)?);
    let ulp = match dtype {
        DType::F32 => f32::EPSILON as f64,
        DType::F16 => 2f64.powi(-10),
        _ => 2f64.powi(-7),
    };
    let n = crate::conformance::reference::numel(dims);
    for (i, (&x, &y)) in a.iter().zip(&b).take(n).enumerate() {
        let scale = x.abs().max(y.abs()) + f32::EPSILON as f64 / ulp * magnitude[i];
        let bound = 4.0 * ulp * scale + min_normal(dtype);
        if !(x == y || (x - y).abs() <= bound || (x.is_nan() && y.is_nan())) {
            return Err(Problem::Mismatch {
                index: crate::conformance::reference::unravel(i, dims),
                expected: y,
                got: x,
                ratio: (x - y).abs() / bound,
                wrong: 1,
                total: n,
            });
        }
    }
    Ok(())
}
