//! Fused reductions (`Op::FusedReduce`): the library's own (a variance's centred squares, a
//! softmax backward's row dot product) and a program with every kind of step, summed,
//! averaged, maxed and minned along each axis of strided, broadcast and mixed-dtype inputs,
//! rows long enough to span several of a kernel's blocks included. Each case is checked
//! against the program and the reduction in f64 on the host, and against its decomposition
//! (`fused::decompose`: the program into a temporary, then `Op::Reduce`) on the same device.

use crate::fused::decompose;
use crate::{DType, Instr, Op, ReduceOp};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host, lanes};
use super::super::runner::{Ctx, Runner, device};
use super::super::tolerance::{ErrorModel, Expected};
use super::super::values::Dist;
use super::fused::{evaluate, program_inputs};
use super::{Arg, arg};
use crate::conformance::report::Problem;

pub(super) fn run(r: &mut Runner<'_>) {
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        let name = format!("fused_reduce.{}", op.name());
        let selects = matches!(op, ReduceOp::Max | ReduceOp::Min);
        for dtype in DType::FLOATS {
            let Some(mut rng) = r.begin(&name, dtype.name(), &[(dtype, "")]) else { continue };
            for (what, program, dists) in programs() {
                for form in forms(dists.len()) {
                    if selects && form.dims[form.axis] == 0 {
                        continue;
                    }
                    let inputs = program_inputs(&mut rng, dtype, &form.args, &dists, &form.dims);
                    let expected = reduced(op, &evaluate(&program, &inputs), &form.dims, form.axis);
                    let mut od = form.dims.clone();
                    od[form.axis] = 1;
                    let out = Output::new(dtype, &od).at(form.out);
                    let (p, axis) = (program.clone(), form.axis);
                    let build = move |v: &[crate::View], out| Op::FusedReduce {
                        inputs: v.to_vec(),
                        program: p.clone(),
                        op,
                        axis,
                        out,
                    };
                    r.run_case(
                        &name,
                        dtype.name(),
                        Case::new(inputs.clone(), out, expected.clone(), build),
                    );
                    let program = program.clone();
                    let dims = form.dims.clone();
                    r.check(
                        &name,
                        dtype.name(),
                        format!("{what} over {dims:?} along {axis}: native against decomposition"),
                        |ctx| {
                            against_decomposition(
                                ctx, &program, op, axis, &inputs, dtype, &od, &expected,
                            )
                        },
                    );
                }
            }
        }
    }
}

/// (name, program, the distribution of each input).
fn programs() -> Vec<(&'static str, Vec<Instr>, Vec<Dist>)> {
    use crate::{BinaryOp, UnaryOp};
    use Instr::*;
    let any = Dist::Uniform(-4.0, 4.0);
    let steps = vec![
        Input(0),
        Input(1),
        Const(0.5),
        Binary(BinaryOp::Mul, 0, 1),
        Unary(UnaryOp::Tanh, 3),
        Affine(4, 2.0, -0.25),
        Binary(BinaryOp::Max, 5, 2),
    ];
    vec![
        ("centred squares", crate::programs::centred_square(), vec![any, any]),
        ("row dot product", crate::programs::product(), vec![any, any]),
        ("a chain of steps", steps, vec![any, any]),
    ]
}

struct Form {
    dims: Vec<usize>,
    axis: usize,
    args: Vec<Arg>,
    out: Place,
}

/// Two inputs each: the second is often a broadcast (a row's mean, a weight row).
fn forms(n: usize) -> Vec<Form> {
    let form = |dims: &[usize], axis, srcs: [(&[usize], Place); 2], out| Form {
        dims: dims.to_vec(),
        axis,
        args: srcs.iter().take(n).map(|&(s, p)| arg(s, p)).collect(),
        out,
    };
    vec![
        form(&[37], 0, [(&[37], Offset), (&[37], Contiguous)], Contiguous),
        form(&[5, 9], 1, [(&[5, 9], Padded), (&[5, 1], Contiguous)], Padded),
        form(&[5, 9], 0, [(&[5, 9], Reversed), (&[1, 9], Contiguous)], Contiguous),
        form(&[7, 13], 1, [(&[7, 13], SwapLast), (&[7, 13], Padded)], Reversed),
        form(&[2, 3, 4], 1, [(&[2, 3, 4], Contiguous), (&[2, 1, 4], Contiguous)], Contiguous),
        form(&[3, 0], 1, [(&[3, 0], Contiguous), (&[3, 0], Contiguous)], Contiguous),
        // Rows longer than a staging block, and more rows than one block of a CPU kernel.
        form(&[3, 2100], 1, [(&[3, 2100], Contiguous), (&[3, 1], Contiguous)], Contiguous),
        form(&[40, 1000], 1, [(&[40, 1000], Offset), (&[40, 1000], Contiguous)], Contiguous),
    ]
}

/// The reduction of the program's f64 values, with the allowance widened by the program's
/// own rounding: per output, the sum (or, for a mean, the average; for max and min, the
/// largest) of its terms' allowances.
fn reduced(op: ReduceOp, values: &Expected, dims: &[usize], axis: usize) -> Expected {
    let terms = match &values.model {
        ErrorModel::Approx { scale, .. } => scale.clone(),
        ErrorModel::Exact => vec![0.0; values.values.len()],
    };
    let reduction = reference::reduce(op, &Host::new(dims, values.values.clone()), axis);
    let k = dims[axis].max(1) as f64;
    let own: Vec<f64> = lanes(dims, axis)
        .iter()
        .map(|lane| {
            let it = lane.iter().map(|&p| terms[p]);
            match op {
                ReduceOp::Sum => it.sum(),
                ReduceOp::Mean => it.sum::<f64>() / k,
                _ => it.fold(0.0, f64::max),
            }
        })
        .collect();
    let (scale, spread) = match reduction.model {
        ErrorModel::Approx { scale, spread } => (scale, spread),
        ErrorModel::Exact => (vec![0.0; own.len()], vec![0.0; own.len()]),
    };
    let scale = scale.iter().zip(&own).map(|(s, o)| s + o).collect();
    Expected::accumulated(reduction.values, scale, spread)
}

/// The device's `Op::FusedReduce` against `decompose` on the same device, to twice the
/// host check's allowance (both are within it of the true value).
#[allow(clippy::too_many_arguments)]
fn against_decomposition(
    ctx: &mut Ctx<'_>,
    program: &[Instr],
    op: ReduceOp,
    axis: usize,
    inputs: &[Operand],
    dtype: DType,
    out_dims: &[usize],
    expected: &Expected,
) -> Result<(), Problem> {
    let mut views = Vec::new();
    for operand in inputs {
        views.push(ctx.upload(operand)?);
    }
    let native = ctx.output(&Output::new(dtype, out_dims))?;
    let decomposed = ctx.output(&Output::new(dtype, out_dims))?;
    let fused = |out: &crate::View| Op::FusedReduce {
        inputs: views.clone(),
        program: program.to_vec(),
        op,
        axis,
        out: out.clone(),
    };
    ctx.run(&fused(&native.view))?;
    decompose(ctx.dev, &fused(&decomposed.view)).map_err(|e| device("fused::decompose", e))?;
    let n = reference::numel(out_dims);
    let bytes = ctx.read(decomposed.view.buffer, 0, decomposed.image.len())?;
    let values = super::super::values::decode(dtype, &bytes)[..n].to_vec();
    let model = match &expected.model {
        ErrorModel::Approx { scale, spread } => ErrorModel::Approx {
            scale: scale.iter().map(|s| 2.0 * s).collect(),
            spread: spread.iter().map(|s| 2.0 * s).collect(),
        },
        ErrorModel::Exact => ErrorModel::Exact,
    };
    match ctx.verify(&native, &Expected { values, model })? {
        (_, Some(problem)) => Err(problem),
        (_, None) => Ok(()),
    }
}
