//! Reductions and (log-)softmax along one axis: rows enumerated by the strided layout of the
//! other dims, a workgroup tree per row for long rows, one invocation per row for short ones.

use manychips_api::{DType, Error, Op, ReduceOp, Result, View};

use super::elementwise::{fused_steps, step_helpers};
use super::{MAX_LOOP_ITERATIONS, too_long};
use crate::kernel::{Kernel, Operand, WG, grid_1d};
use crate::params::{Params, Strided, word};
use crate::{Dispatch, Features};

const REDUCE: &str = include_str!("../../../../kernels/wgsl/reduce.wgsl");
const SOFTMAX: &str = include_str!("../../../../kernels/wgsl/softmax.wgsl");

/// Rows at least this long (or this few rows) get a workgroup each.
const WIDE_ROW: usize = 256;
const FEW_ROWS: usize = 64;
/// On a CPU-backed driver, rows up to this long get one invocation each however long they
/// are (within the loop budget: softmax walks a row three times), as long as there are
/// enough of them to keep the cores busy.
const CPU_SHORT_ROW: usize = MAX_LOOP_ITERATIONS / 3;
const CPU_MANY_ROWS: usize = 2 * WG;

/// `v`'s layout without `axis`.
fn without(v: &View, axis: usize) -> Strided {
    let mut strides = v.layout.strides.clone();
    strides.remove(axis);
    Strided::new(v.layout.offset, strides)
}

/// Parameters and grid for the rows of `inputs` (one shape) along `axis`, written to `out`;
/// each input's stride along the axis goes to its word of [`AXIS_STRIDES`].
fn rows(
    op: &Op,
    inputs: &[&View],
    out: &View,
    axis: usize,
    f: &Features,
) -> Result<(Params, [u32; 3], bool)> {
    let mut dims = inputs[0].dims().to_vec();
    let n = dims.remove(axis);
    let count: usize = dims.iter().product();
    let layouts: Vec<Strided> = inputs.iter().chain([&out]).map(|v| without(v, axis)).collect();
    let mut params = Params::strided(op, count, &dims, &layouts)?;
    params.set(2, word(op, "row length", n)?)?;
    for (input, slot) in inputs.iter().zip(AXIS_STRIDES) {
        params.set(slot, word(op, "stride", input.layout.strides[axis])?)?;
    }
    params.set(5, word(op, "stride", out.layout.strides[axis])?)?;
    let wide = if f.cpu_backed && count >= CPU_MANY_ROWS {
        n > CPU_SHORT_ROW
    } else {
        n >= WIDE_ROW || count <= FEW_ROWS
    };
    // Softmax walks a row three times.
    let limit = WG * MAX_LOOP_ITERATIONS / 3;
    if n > limit {
        return Err(too_long(op, "a row", n, limit));
    }
    let grid = if wide { grid_1d(op, count, 1, f)? } else { grid_1d(op, count, WG, f)? };
    Ok((params, grid, wide))
}

/// The words holding each input's stride along the reduced axis (reduce.wgsl).
const AXIS_STRIDES: [usize; 3] = [3, 4, 6];

/// Parameter words a reduction leaves free: a fused reduction's constants.
const CONSTANT_SLOTS: [usize; 12] = [52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63];

/// The reduce kernel's specialisation of `r` over elements of `dtype`.
struct Fold {
    /// The element type: f32, or u32 holding an integer's bits.
    v: &'static str,
    init: &'static str,
    combine: &'static str,
    finish: &'static str,
    /// The arg order: whether `b` beats `a`.
    better: &'static str,
    skips: &'static str,
    /// The output's store function (its number appended): `stf` converts an f32, `st`
    /// stores bits.
    store: &'static str,
    /// The input's load function (its number appended), for a plain reduction.
    load: &'static str,
    entry: &'static str,
}

fn fold(op: &Op, r: ReduceOp, dtype: DType, wide: bool) -> Result<Fold> {
    let entry = match (r.is_arg(), wide) {
        (true, true) => "arg_wide",
        (true, false) => "arg_short",
        (false, true) => "value_wide",
        (false, false) => "value_short",
    };
    if dtype.is_float() {
        let (init, combine, finish) = match r {
            ReduceOp::Sum | ReduceOp::ArgMax | ReduceOp::ArgMin => ("0.0", "a + b", "acc"),
            ReduceOp::Mean => ("0.0", "a + b", "acc / f32(n)"),
            ReduceOp::Max => ("bitcast<f32>(0xff800000u)", "max(a, b)", "acc"),
            ReduceOp::Min => ("bitcast<f32>(0x7f800000u)", "min(a, b)", "acc"),
        };
        // Arg reductions pass NaN over, as the other backends do.
        let better = if r == ReduceOp::ArgMin { "b < a" } else { "b > a" };
        let (v, skips, store, load) = ("f32", "is_nan(v)", "stf", "ldf");
        return Ok(Fold { v, init, combine, finish, better, skips, store, load, entry });
    }
    // Integers, on their bits: a sum wraps (u8 when stored).
    let signed = dtype.is_signed_int();
    let (init, combine) = match r {
        ReduceOp::Sum | ReduceOp::ArgMax | ReduceOp::ArgMin => ("0u", "a + b"),
        ReduceOp::Max if signed => {
            ("0x80000000u", "bitcast<u32>(max(bitcast<i32>(a), bitcast<i32>(b)))")
        }
        ReduceOp::Max => ("0u", "max(a, b)"),
        ReduceOp::Min if signed => {
            ("0x7fffffffu", "bitcast<u32>(min(bitcast<i32>(a), bitcast<i32>(b)))")
        }
        ReduceOp::Min => ("0xffffffffu", "min(a, b)"),
        ReduceOp::Mean => {
            return Err(Error::UnsupportedDType {
                op: op.name(),
                device: "wgsl".into(),
                dtype,
                detail: format!(" (a mean needs a float); {}", op.describe()),
            });
        }
    };
    let better = match (r, signed) {
        (ReduceOp::ArgMin, true) => "bitcast<i32>(b) < bitcast<i32>(a)",
        (ReduceOp::ArgMin, false) => "b < a",
        (_, true) => "bitcast<i32>(b) > bitcast<i32>(a)",
        (_, false) => "b > a",
    };
    let (v, finish, skips, store, load) = ("u32", "acc", "false", "st", "ld");
    Ok(Fold { v, init, combine, finish, better, skips, store, load, entry })
}

/// A reduction of `operands` (the inputs, then the output) by a kernel of `source` (reduce.wgsl,
/// and for a fused program the functions its steps call) whose elements `element` (the body
/// of its `element` function) reads or computes.
fn reduce_kernel(
    fold: Fold,
    (source, element): (&[&'static str], &str),
    operands: Vec<Operand>,
    (params, grid): (Params, [u32; 3]),
) -> Result<Dispatch> {
    let out = (operands.len() - 1).to_string();
    let out_c = ["x", "y", "z", "w"][operands.len() - 1];
    let k = Kernel {
        family: "reduce",
        source,
        entry: fold.entry,
        operands,
        status: false,
        subs: &[
            ("V", fold.v),
            ("COMBINE", fold.combine),
            ("FINISH", fold.finish),
            ("INIT", fold.init),
            ("ELEMENT", element),
            ("STORE", fold.store),
            ("BETTER", fold.better),
            ("SKIPS", fold.skips),
            ("OUT", &out),
            ("OUT_C", out_c),
        ],
    };
    k.dispatch(params, grid)
}

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    match op {
        Op::Reduce { op: r, input, out, axis } => {
            let (params, grid, wide) = rows(op, &[input], out, *axis, f)?;
            let fold = fold(op, *r, input.dtype, wide)?;
            let operands = vec![Operand::input(input), Operand::output(out)];
            let element = format!("return {}0(row_o.x + i * pw(3u));", fold.load);
            let source = (&[REDUCE][..], element.as_str());
            Ok(vec![reduce_kernel(fold, source, operands, (params, grid))?])
        }
        Op::FusedReduce { inputs, program, op: r, axis, out } => {
            let views: Vec<&View> = inputs.iter().collect();
            let (mut params, grid, wide) = rows(op, &views, out, *axis, f)?;
            let mut scalars = Vec::new();
            let steps = fused_steps(program, &CONSTANT_SLOTS, &mut scalars);
            for (slot, bits) in scalars {
                params.set(slot, bits)?;
            }
            // Each input's element `i` of the row, where the program's loads expect it.
            let element = format!(
                "let o = row_o + i * vec4<u32>(pw(3u), pw(4u), pw(6u), 0u); {steps}return r{};",
                program.len() - 1
            );
            let mut operands: Vec<Operand> = inputs.iter().map(Operand::input).collect();
            operands.push(Operand::output(out));
            let mut source = vec![REDUCE];
            source.extend(step_helpers(program)?);
            let fold = fold(op, *r, DType::F32, wide)?;
            Ok(vec![reduce_kernel(fold, (&source, &element), operands, (params, grid))?])
        }
        Op::Softmax { input, out, axis, log } => {
            let (mut params, grid, wide) = rows(op, &[input], out, *axis, f)?;
            params.set(4, u32::from(*log))?;
            let k = Kernel {
                family: "softmax",
                source: &[SOFTMAX],
                entry: if wide { "wide" } else { "short" },
                operands: vec![Operand::input(input), Operand::output(out)],
                status: false,
                subs: &[],
            };
            Ok(vec![k.dispatch(params, grid)?])
        }
        _ => Ok(Vec::new()),
    }
}
