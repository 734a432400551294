//! Reductions over one axis.
//!
//! The input, made contiguous f32 if it is not already, is seen as `[outer, len, inner]`.
//! With `inner == 1` each output is a row reduction (SIMD lanes, rows in parallel, or one
//! long row split across threads); otherwise rows of `inner` elements are folded into an
//! accumulator vector, which vectorises over `inner`. Sums add f32 blocks into f64, so
//! long reductions stay accurate without giving up f32 SIMD speed.

use std::ops::Range;

use manychips_api::{Layout, ReduceOp};
use rayon::prelude::*;

use super::copy;
use super::elementwise::{BLOCK, Map, map};
use super::plan::{MIN_CHUNK, Plan, split_point};
use super::simd;
use crate::element::{Elem, Int};
use crate::storage::Scratch;

/// Width of the accumulator vectors when `inner > 1`.
const COLS: usize = 256;
/// Rows summed in f32 before the partial sums move into f64.
const F32_ROWS: usize = 64;

/// Memory ran out for scratch.
#[derive(Debug)]
pub(crate) struct Oom;

/// The input as contiguous f32 `[outer, len, inner]`: borrowed when it already is, else
/// converted into `buf`.
fn contiguous<'a, T: Elem>((a, al): (&'a [T], &Layout), buf: &'a mut [f32]) -> &'a [f32] {
    if let Some(f) = T::as_f32(a)
        && al.is_contiguous()
    {
        return &f[al.offset..al.offset + al.numel()];
    }
    let n = al.numel();
    map::<T, f32>(Map::Identity, (a, al), (&mut buf[..n], &Layout::contiguous(al.shape.clone())));
    &buf[..n]
}

fn needs_staging<T: Elem>(al: &Layout) -> bool {
    T::as_f32(&[]).is_none() || !al.is_contiguous()
}

/// `[outer, len, inner]` around `axis`.
fn split_dims(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product())
}

/// The float-valued reductions; arg-max has its own path (u32 results).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fold {
    Sum,
    Mean,
    Max,
    Min,
}

/// Sum, mean, max or min of `input` along `axis` into `out` (arg-max goes to [`argmax`]).
pub(crate) fn reduce<T: Elem>(
    op: ReduceOp,
    input: (&[T], &Layout),
    (out, ol): (&mut [T], &Layout),
    axis: usize,
    scratch: &mut Scratch,
) -> Result<(), Oom> {
    let fold = match op {
        ReduceOp::Sum => Fold::Sum,
        ReduceOp::Mean => Fold::Mean,
        ReduceOp::Max => Fold::Max,
        ReduceOp::Min => Fold::Min,
        ReduceOp::ArgMax | ReduceOp::ArgMin => return Ok(()),
    };
    let (outer, len, inner) = split_dims(input.1.dims(), axis);
    let n_out = outer * inner;
    if n_out == 0 {
        return Ok(());
    }
    let staged = if needs_staging::<T>(input.1) { outer * len * inner } else { 0 };
    let buf = scratch.f32s(n_out + staged).ok_or(Oom)?;
    let (res, buf) = buf.split_at_mut(n_out);
    if len == 0 {
        res.fill(if fold == Fold::Mean { f32::NAN } else { 0.0 });
    } else {
        let src = contiguous(input, buf);
        if inner == 1 {
            rows(fold, src, len, res);
        } else {
            columns(fold, src, len, inner, res);
        }
    }
    map::<f32, T>(Map::Identity, (res, &Layout::contiguous(ol.shape.clone())), (out, ol));
    Ok(())
}

/// Index (u32) of the first maximum (`max`) or minimum of `input` along `axis`; NaNs are
/// skipped.
pub(crate) fn arg_extremum<T: Elem>(
    max: bool,
    input: (&[T], &Layout),
    (out, ol): (&mut [u32], &Layout),
    axis: usize,
    scratch: &mut Scratch,
) -> Result<(), Oom> {
    let (outer, len, inner) = split_dims(input.1.dims(), axis);
    let n_out = outer * inner;
    if n_out == 0 || len == 0 {
        return Ok(());
    }
    let staged = if needs_staging::<T>(input.1) { outer * len * inner } else { 0 };
    let mut res: Vec<u32> = Vec::new();
    res.try_reserve_exact(n_out).map_err(|_| Oom)?;
    res.resize(n_out, 0);
    let buf = scratch.f32s(staged).ok_or(Oom)?;
    let src = contiguous(input, buf);
    if inner == 1 {
        let split = split_rows(outer, len);
        let per_task = (MIN_CHUNK / len).max(1);
        res.par_chunks_mut(per_task).enumerate().for_each(|(t, chunk)| {
            for (r, slot) in chunk.iter_mut().enumerate() {
                let row = &src[(t * per_task + r) * len..][..len];
                *slot = row_arg_extremum(max, row, split) as u32;
            }
        });
    } else {
        for_columns(&mut res, len, inner, |o, c0, chunk| {
            let w = chunk.len();
            let mut best = [if max { f32::NEG_INFINITY } else { f32::INFINITY }; COLS];
            for r in 0..len {
                let row = &src[(o * len + r) * inner + c0..][..w];
                if max {
                    simd::argmax_assign(&mut best[..w], chunk, row, r as u32);
                } else {
                    simd::argmin_assign(&mut best[..w], chunk, row, r as u32);
                }
            }
        });
    }
    copy::copy::<u32>((&res, &Layout::contiguous(ol.shape.clone())), (out, ol));
    Ok(())
}

/// Few, long rows: split each row across threads instead of giving each thread rows.
fn split_rows(rows: usize, len: usize) -> bool {
    rows < 2 * rayon::current_num_threads() && len >= 2 * MIN_CHUNK
}

/// One result per contiguous row of `len`.
fn rows(fold: Fold, src: &[f32], len: usize, res: &mut [f32]) {
    let split = split_rows(res.len(), len);
    let per_task = (MIN_CHUNK / len).max(1);
    res.par_chunks_mut(per_task).enumerate().for_each(|(t, chunk)| {
        for (r, slot) in chunk.iter_mut().enumerate() {
            let row = &src[(t * per_task + r) * len..][..len];
            *slot = match fold {
                Fold::Sum => row_sum(row, split) as f32,
                Fold::Mean => (row_sum(row, split) / len as f64) as f32,
                Fold::Max => row_fold(row, split, f32::NEG_INFINITY, simd::max, f32::max),
                Fold::Min => row_fold(row, split, f32::INFINITY, simd::min, f32::min),
            };
        }
    });
}

/// Σ row: f32 SIMD blocks added in f64, split across threads for long rows.
fn row_sum(row: &[f32], parallel: bool) -> f64 {
    if parallel {
        row.par_chunks(BLOCK).map(|c| simd::sum(c) as f64).sum()
    } else {
        row.chunks(BLOCK).map(|c| simd::sum(c) as f64).sum()
    }
}

fn row_fold(
    row: &[f32],
    parallel: bool,
    init: f32,
    block: fn(&[f32]) -> f32,
    combine: fn(f32, f32) -> f32,
) -> f32 {
    if parallel {
        row.par_chunks(MIN_CHUNK).map(block).reduce(|| init, combine)
    } else {
        block(row)
    }
}

fn row_arg_extremum(max: bool, row: &[f32], parallel: bool) -> usize {
    let m = if max {
        row_fold(row, parallel, f32::NEG_INFINITY, simd::max, f32::max)
    } else {
        row_fold(row, parallel, f32::INFINITY, simd::min, f32::min)
    };
    let found = if parallel {
        row.par_iter().position_first(|&v| v == m)
    } else {
        row.iter().position(|&v| v == m)
    };
    found.unwrap_or(0)
}

/// Calls `f(o, c0, piece)` for every piece of at most `COLS` results of one outer index
/// (`piece` holds columns `c0..` of outer index `o`), in parallel: over outer indices when
/// there are enough of them, else over the pieces.
fn for_columns<R: Send>(
    res: &mut [R],
    len: usize,
    inner: usize,
    f: impl Fn(usize, usize, &mut [R]) + Sync,
) {
    let outer = res.len() / inner;
    let per_outer = |o: usize, row: &mut [R]| {
        for (c, piece) in row.chunks_mut(COLS).enumerate() {
            f(o, c * COLS, piece);
        }
    };
    if outer >= 2 * rayon::current_num_threads() || inner <= COLS {
        let per_task = (MIN_CHUNK / (len * inner).max(1)).max(1);
        res.par_chunks_mut(inner * per_task).enumerate().for_each(|(t, rows)| {
            for (i, row) in rows.chunks_mut(inner).enumerate() {
                per_outer(t * per_task + i, row);
            }
        });
    } else {
        let pieces: Vec<(usize, usize, &mut [R])> = res
            .chunks_mut(inner)
            .enumerate()
            .flat_map(|(o, r)| r.chunks_mut(COLS).enumerate().map(move |(c, p)| (o, c * COLS, p)))
            .collect();
        let grain = (MIN_CHUNK / (len * COLS).max(1)).max(1);
        pieces.into_par_iter().with_min_len(grain).for_each(|(o, c0, p)| f(o, c0, p));
    }
}

/// One result per (outer, inner) column: rows of `inner` folded into accumulators.
///
/// When there are too few (outer, column piece) pairs to occupy every thread (a bias
/// gradient: `[tokens, hidden]` summed over tokens), the rows are split as well, and the
/// partial results of each row range combined at the end.
fn columns(fold: Fold, src: &[f32], len: usize, inner: usize, res: &mut [f32]) {
    let n_out = res.len();
    let pieces = (n_out / inner) * inner.div_ceil(COLS);
    let threads = rayon::current_num_threads();
    let splits = if pieces < 2 * threads && len * inner >= 4 * MIN_CHUNK {
        (2 * threads).div_ceil(pieces).min(len / F32_ROWS).max(1)
    } else {
        1
    };
    if splits <= 1 {
        for_columns(res, len, inner, |o, c0, chunk| {
            let mut acc = [0f64; COLS];
            let acc = &mut acc[..chunk.len()];
            fold_rows(fold, src, (len, inner), (o, c0), 0..len, acc);
            for (slot, &v) in chunk.iter_mut().zip(acc.iter()) {
                *slot = finish(fold, v, len);
            }
        });
        return;
    }
    let mut partials = vec![0f64; splits * n_out];
    partials.par_chunks_mut(n_out).enumerate().for_each(|(s, part)| {
        let rows = split_point(len, splits, s)..split_point(len, splits, s + 1);
        for (o, row) in part.chunks_mut(inner).enumerate() {
            for (c, piece) in row.chunks_mut(COLS).enumerate() {
                fold_rows(fold, src, (len, inner), (o, c * COLS), rows.clone(), piece);
            }
        }
    });
    let (first, rest) = partials.split_at(n_out);
    for (i, slot) in res.iter_mut().enumerate() {
        let v = rest.chunks_exact(n_out).fold(first[i], |v, part| match fold {
            Fold::Sum | Fold::Mean => v + part[i],
            Fold::Max => v.max(part[i]),
            Fold::Min => v.min(part[i]),
        });
        *slot = finish(fold, v, len);
    }
}

/// Folds rows `rows` of columns `c0..c0 + out.len()` of outer index `o` into `out`.
fn fold_rows(
    fold: Fold,
    src: &[f32],
    (len, inner): (usize, usize),
    (o, c0): (usize, usize),
    rows: Range<usize>,
    out: &mut [f64],
) {
    let w = out.len();
    let row = |r: usize| &src[(o * len + r) * inner + c0..][..w];
    let mut acc = [0f32; COLS];
    let acc = &mut acc[..w];
    match fold {
        Fold::Sum | Fold::Mean => {
            out.fill(0.0);
            for r0 in rows.clone().step_by(F32_ROWS) {
                acc.fill(0.0);
                for r in r0..(r0 + F32_ROWS).min(rows.end) {
                    simd::add_assign(acc, row(r));
                }
                for (x, &v) in out.iter_mut().zip(acc.iter()) {
                    *x += v as f64;
                }
            }
        }
        Fold::Max | Fold::Min => {
            let max = fold == Fold::Max;
            acc.fill(if max { f32::NEG_INFINITY } else { f32::INFINITY });
            for r in rows {
                if max {
                    simd::max_assign(acc, row(r));
                } else {
                    simd::min_assign(acc, row(r));
                }
            }
            for (x, &v) in out.iter_mut().zip(acc.iter()) {
                *x = v as f64;
            }
        }
    }
}

fn finish(fold: Fold, v: f64, len: usize) -> f32 {
    if fold == Fold::Mean { (v / len as f64) as f32 } else { v as f32 }
}

/// Sum (wrapping), max or min of integers along `axis` into `out` of the same type: exact,
/// one lane at a time (no f32 staging, which would round values past 2^24).
pub(crate) fn reduce_int<T: Int>(
    op: ReduceOp,
    input: (&[T], &Layout),
    out: (&mut [T], &Layout),
    axis: usize,
) {
    match op {
        ReduceOp::Max => along_axis(input, out, axis, |lane| lane.max().unwrap_or(T::ZERO)),
        ReduceOp::Min => along_axis(input, out, axis, |lane| lane.min().unwrap_or(T::ZERO)),
        // Validation lets integers take sum, max, min and the arg ops only.
        _ => along_axis(input, out, axis, |lane| lane.fold(T::ZERO, T::add)),
    }
}

/// Index (u32) of the first maximum (`max`) or minimum of integers along `axis`.
pub(crate) fn arg_extremum_int<T: Int>(
    max: bool,
    input: (&[T], &Layout),
    out: (&mut [u32], &Layout),
    axis: usize,
) {
    along_axis(input, out, axis, |lane| {
        let mut best = (0, None);
        for (i, v) in lane.enumerate() {
            let better = match best.1 {
                None => true,
                Some(b) => (max && v > b) || (!max && v < b),
            };
            if better {
                best = (i, Some(v));
            }
        }
        best.0 as u32
    });
}

/// The elements of one output's lane along the reduced axis.
struct Lane<'a, T> {
    data: &'a [T],
    at: usize,
    stride: usize,
    left: usize,
}

impl<T: Copy> Iterator for Lane<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        let v = self.data[self.at];
        self.left -= 1;
        if self.left > 0 {
            self.at += self.stride;
        }
        Some(v)
    }
}

/// `out[p] = f(lane of input at p along axis)` for every output position, in parallel.
fn along_axis<T: Elem, O: Elem>(
    (a, al): (&[T], &Layout),
    (out, ol): (&mut [O], &Layout),
    axis: usize,
    f: impl Fn(Lane<'_, T>) -> O + Sync,
) {
    let (len, stride) = (al.dims()[axis], al.strides[axis]);
    let base = Layout { shape: ol.shape.clone(), strides: al.strides.clone(), offset: al.offset };
    let plan = Plan::new(ol.dims(), [ol, &base]);
    let [so, sb] = plan.inner_strides();
    let chunk = (MIN_CHUNK / len.max(1)).max(1);
    plan.run(
        out,
        chunk,
        || (),
        |_, out, [oo, ob], n| {
            for k in 0..n {
                let lane = Lane { data: a, at: ob + k * sb, stride, left: len };
                out[oo + k * so] = f(lane);
            }
        },
    );
}
