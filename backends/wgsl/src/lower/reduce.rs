//! Reductions and (log-)softmax along one axis: rows enumerated by the strided layout of the
//! other dims, a workgroup tree per row for long rows, one invocation per row for short ones.

use manychips_api::{Op, ReduceOp, Result, View};

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

/// Parameters and grid for the rows of `input` along `axis`, written to `out`.
fn rows(
    op: &Op,
    input: &View,
    out: &View,
    axis: usize,
    f: &Features,
) -> Result<(Params, [u32; 3], bool)> {
    let mut dims = input.dims().to_vec();
    let n = dims.remove(axis);
    let count: usize = dims.iter().product();
    let mut params =
        Params::strided(op, count, &dims, &[without(input, axis), without(out, axis)])?;
    params.set(2, word(op, "row length", n)?)?;
    params.set(3, word(op, "stride", input.layout.strides[axis])?)?;
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

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    match op {
        Op::Reduce { op: r, input, out, axis } => {
            let (params, grid, wide) = rows(op, input, out, *axis, f)?;
            let (init, combine, finish) = match r {
                ReduceOp::Sum | ReduceOp::ArgMax => ("0.0", "a + b", "acc"),
                ReduceOp::Mean => ("0.0", "a + b", "acc / f32(n)"),
                ReduceOp::Max => ("bitcast<f32>(0xff800000u)", "max(a, b)", "acc"),
                ReduceOp::Min => ("bitcast<f32>(0x7f800000u)", "min(a, b)", "acc"),
            };
            let entry = match (r, wide) {
                (ReduceOp::ArgMax, true) => "argmax_wide",
                (ReduceOp::ArgMax, false) => "argmax_short",
                (_, true) => "value_wide",
                (_, false) => "value_short",
            };
            let k = Kernel {
                family: "reduce",
                source: REDUCE,
                entry,
                operands: vec![Operand::input(input), Operand::output(out)],
                status: false,
                subs: &[("COMBINE", combine), ("FINISH", finish), ("INIT", init)],
            };
            Ok(vec![k.dispatch(params, grid)?])
        }
        Op::Softmax { input, out, axis, log } => {
            let (mut params, grid, wide) = rows(op, input, out, *axis, f)?;
            params.set(4, u32::from(*log))?;
            let k = Kernel {
                family: "softmax",
                source: SOFTMAX,
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
