//! Reductions (sum, mean, max, min, argmax) and softmax / log-softmax over first, middle and
//! last axes, long rows, strided and broadcast inputs, empty dims.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::{DType, Op, ReduceOp};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, lanes};
use super::super::runner::Runner;
use super::super::values::Dist;
use super::{Arg, arg, host};

/// A reduction layout: the input's logical shape, how it is stored, the axis, and the
/// output's placement.
struct Form {
    dims: Vec<usize>,
    input: Arg,
    axis: usize,
    out: Place,
    dist: Dist,
}

const UNIT: Dist = Dist::Uniform(-4.0, 4.0);

fn red(dims: &[usize], axis: usize, place: Place, out: Place) -> Form {
    Form { dims: dims.to_vec(), input: arg(dims, place), axis, out, dist: UNIT }
}

fn red_bcast(dims: &[usize], src: &[usize], axis: usize) -> Form {
    Form { dims: dims.to_vec(), input: arg(src, Contiguous), axis, out: Contiguous, dist: UNIT }
}

fn reduce_forms(full: bool) -> Vec<Form> {
    let c = Contiguous;
    let mut v = vec![
        red(&[1], 0, c, c),
        red(&[7], 0, Offset, c),
        red(&[13, 7], 0, c, c),
        red(&[13, 7], 1, c, Padded),
        red(&[3, 4, 5], 0, c, c),
        red(&[3, 4, 5], 1, c, c),
        red(&[3, 4, 5], 2, Reversed, c),
        red(&[2, 3, 4, 5], 2, Padded, Offset),
        red(&[127, 33], 1, SwapLast, c),
        red(&[33, 65], 0, Reversed, Padded),
        red_bcast(&[4, 5], &[1, 5], 0),
        red(&[4099], 0, c, c),
        red(&[3, 4099], 1, Offset, c),
        red(&[0, 5], 1, c, c),
        // An empty reduced axis: sum 0, mean NaN (max/min/argmax are refused by validate).
        red(&[3, 0], 1, c, Padded),
    ];
    if full {
        v.push(red(&[1, 65537], 1, c, c));
        v.push(red(&[256, 257], 0, SwapLast, c));
    }
    v
}

fn softmax_forms(full: bool) -> Vec<Form> {
    let c = Contiguous;
    let mut v = vec![
        red(&[1], 0, c, c),
        red(&[7], 0, Offset, c),
        red(&[13, 7], 1, c, c),
        red(&[13, 7], 0, c, Padded),
        red(&[3, 4, 5], 1, c, c),
        red(&[3, 4, 5], 2, Padded, Padded),
        red(&[127, 33], 1, SwapLast, c),
        red(&[33, 65], 0, Reversed, c),
        red(&[4099], 0, c, c),
        red(&[3, 4099], 1, c, Offset),
        red(&[0, 5], 1, c, c),
        red(&[5, 0], 1, c, c),
        // Broadcast along the softmax axis: every lane is uniform.
        red_bcast(&[4, 5], &[4, 1], 1),
        // Large logits: exp overflows f32 unless the maximum is subtracted first.
        Form { dist: Dist::Uniform(80.0, 100.0), ..red(&[7, 33], 1, c, c) },
    ];
    if full {
        v.push(red(&[2, 65537], 1, c, c));
        v.push(red(&[256, 257], 0, SwapLast, c));
    }
    v
}

pub(super) fn run(r: &mut Runner<'_>) {
    reduce(r);
    softmax(r);
}

/// Copies each lane's maximum (`max`) or minimum to a second random place in about half of
/// the lanes, so that argmax or argmin must pick the first of tied extremes.
fn with_tied_extremes(rng: &mut ChaCha8Rng, x: &mut Operand, axis: usize, max: bool) {
    if x.src.dims != x.dims {
        return;
    }
    for lane in lanes(&x.src.dims, axis) {
        if lane.len() < 2 || !rng.random_bool(0.5) {
            continue;
        }
        let vals = lane.iter().map(|&p| x.src.data[p]);
        let extreme = if max {
            vals.fold(f64::NEG_INFINITY, f64::max)
        } else {
            vals.fold(f64::INFINITY, f64::min)
        };
        let at = lane[rng.random_range(0..lane.len())];
        x.src.data[at] = extreme;
    }
}

fn reduce(r: &mut Runner<'_>) {
    for op in ReduceOp::ALL {
        let name = format!("reduce.{}", op.name());
        let selects_only = !matches!(op, ReduceOp::Sum | ReduceOp::Mean);
        for dtype in DType::ALL {
            if dtype.is_int() && op == ReduceOp::Mean {
                continue;
            }
            let out_dtype = if op.is_arg() { DType::U32 } else { dtype };
            let needs = [(dtype, ""), (out_dtype, "output")];
            let Some(mut rng) = r.begin(&name, dtype.name(), &needs) else { continue };
            for f in reduce_forms(r.full()) {
                if selects_only && f.dims[f.axis] == 0 {
                    continue;
                }
                // Integers over their whole range: sums wrap.
                let dist = if dtype.is_int() { Dist::Data } else { f.dist };
                let mut x = Operand::new(dtype, host(&mut rng, dtype, dist, &f.input.src))
                    .at(f.input.place)
                    .broadcast(&f.dims);
                if op.is_arg() {
                    with_tied_extremes(&mut rng, &mut x, f.axis, op == ReduceOp::ArgMax);
                }
                let expected = if dtype.is_int() && op == ReduceOp::Sum {
                    reference::sum_int(dtype, &x.logical(), f.axis)
                } else {
                    reference::reduce(op, &x.logical(), f.axis)
                };
                let mut od = f.dims.clone();
                od[f.axis] = 1;
                let out = Output::new(out_dtype, &od).at(f.out);
                let axis = f.axis;
                let case = Case::new(vec![x], out, expected, move |v, out| Op::Reduce {
                    op,
                    input: v[0].clone(),
                    out,
                    axis,
                });
                r.run_case(&name, dtype.name(), case);
            }
        }
    }
}

fn softmax(r: &mut Runner<'_>) {
    for log in [false, true] {
        let name = if log { "log_softmax" } else { "softmax" };
        for dtype in DType::FLOATS {
            let Some(mut rng) = r.begin(name, dtype.name(), &[(dtype, "")]) else { continue };
            for f in softmax_forms(r.full()) {
                let x = Operand::new(dtype, host(&mut rng, dtype, f.dist, &f.input.src))
                    .at(f.input.place)
                    .broadcast(&f.dims);
                let expected = reference::softmax(&x.logical(), f.axis, log);
                let out = Output::new(dtype, &f.dims).at(f.out);
                let axis = f.axis;
                let case = Case::new(vec![x], out, expected, move |v, out| Op::Softmax {
                    input: v[0].clone(),
                    out,
                    axis,
                    log,
                });
                r.run_case(name, dtype.name(), case);
            }
        }
    }
}
