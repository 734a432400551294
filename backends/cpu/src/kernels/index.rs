//! Indexed reads and writes: index_select / gather, index_add / scatter_add.
//!
//! Both pairs share one kernel each. An `IndexSelect` index vector is a `Gather` index tensor
//! broadcast (stride 0) over the other dims, and likewise for `IndexAdd`/`ScatterAdd`. The
//! indexed operand is addressed as `base + index · axis_stride`, where `base` is its layout
//! with the axis stride zeroed, so the rest is ordinary strided iteration.
//!
//! An index past the axis is a data error: the element is skipped (gather writes 0), no
//! memory outside the view is touched, and the bad value is reported after the op.

use std::sync::OnceLock;

use manychips_api::{Layout, ScatterOp};
use rayon::prelude::*;

use super::elementwise::{BLOCK, Map, Stage, load, map};
use super::plan::{MIN_CHUNK, Plan, split_point, task_count};
use super::simd;
use crate::element::{Elem, Int};
use crate::storage::Scratch;

/// An index dtype: `U32`, `I32` or `I64`, a negative value counting from the end.
pub(crate) trait Index: bytemuck::Pod + Send + Sync {
    /// The position this index names on an axis of `len`, if it names one.
    fn resolve(self, len: usize) -> Option<usize>;
    /// The value as given, for the error message.
    fn value(self) -> i64;
}

impl Index for u32 {
    #[inline(always)]
    fn resolve(self, len: usize) -> Option<usize> {
        ((self as usize) < len).then_some(self as usize)
    }
    fn value(self) -> i64 {
        self.into()
    }
}

macro_rules! signed_index {
    ($($t:ty),*) => {$(
        impl Index for $t {
            #[inline(always)]
            fn resolve(self, len: usize) -> Option<usize> {
                let i = if self < 0 { len as i128 + self as i128 } else { self as i128 };
                (0 <= i && i < len as i128).then_some(i as usize)
            }
            fn value(self) -> i64 {
                self.into()
            }
        }
    )*};
}

signed_index!(i32, i64);

/// The first out-of-range index value seen by any task.
struct BadIndex(OnceLock<i64>);

impl BadIndex {
    fn new() -> Self {
        BadIndex(OnceLock::new())
    }

    fn record(&self, index: impl Index) {
        let _ = self.0.set(index.value());
    }

    fn get(&self) -> Option<i64> {
        self.0.get().copied()
    }
}

/// The result of an indexed op.
pub(crate) type IndexResult = Result<(), IndexError>;

/// Why an indexed op failed. Out-of-range indices are reported after the op has run (with
/// those elements skipped), naming one offending value.
#[derive(Debug)]
pub(crate) enum IndexError {
    OutOfRange { value: i64, len: usize },
    Oom,
}

/// A 1-D index vector seen as an index tensor of shape `dims`: its stride on `axis`, 0 on
/// every other dim.
pub(crate) fn broadcast_indices(indices: &Layout, dims: &[usize], axis: usize) -> Layout {
    let mut strides = vec![0; dims.len()];
    strides[axis] = indices.strides.first().copied().unwrap_or(0);
    Layout { shape: dims.into(), strides, offset: indices.offset }
}

/// `layout` restricted to `dims`, with the stride of `axis` zeroed.
fn base_layout(layout: &Layout, dims: &[usize], axis: usize) -> Layout {
    let mut strides = layout.strides.clone();
    strides[axis] = 0;
    Layout { shape: dims.into(), strides, offset: layout.offset }
}

/// `out[p] = input[p with p[axis] = indices[p]]` (`indices` already has `out`'s shape).
pub(crate) fn gather<T: Elem, X: Index>(
    (input, il): (&[T], &Layout),
    (idx, xl): (&[X], &Layout),
    (out, ol): (&mut [T], &Layout),
    axis: usize,
) -> IndexResult {
    let len = il.dims()[axis];
    let astride = il.strides[axis];
    let base = base_layout(il, ol.dims(), axis);
    let plan = Plan::new(ol.dims(), [ol, xl, &base]);
    let [so, sx, sb] = plan.inner_strides();
    let bad = BadIndex::new();
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo, ox, ob], n| {
            if sx == 0 || n == 1 {
                // One index for the whole segment (index_select rows, embedding lookups).
                let Some(i) = idx[ox].resolve(len) else {
                    bad.record(idx[ox]);
                    for k in 0..n {
                        out[oo + k * so] = T::ZERO;
                    }
                    return;
                };
                let src = ob + i * astride;
                if (so, sb) == (1, 1) || n == 1 {
                    out[oo..oo + n].copy_from_slice(&input[src..src + n]);
                } else {
                    for k in 0..n {
                        out[oo + k * so] = input[src + k * sb];
                    }
                }
                return;
            }
            for k in 0..n {
                let x = idx[ox + k * sx];
                out[oo + k * so] = match x.resolve(len) {
                    Some(i) => input[ob + k * sb + i * astride],
                    None => {
                        bad.record(x);
                        T::ZERO
                    }
                };
            }
        },
    );
    match bad.get() {
        Some(value) => Err(IndexError::OutOfRange { value, len }),
        None => Ok(()),
    }
}

/// `out[p with p[axis] = indices[p]] += src[p]` for every `p` of `src` (`indices` already has
/// `src`'s shape). Sums are formed in f32: in `out` itself for f32, in scratch otherwise, so
/// f16/bf16 round once at the end however many duplicates there are.
pub(crate) fn scatter_add<T: Elem, X: Index>(
    src: (&[T], &Layout),
    indices: (&[X], &Layout),
    (out, ol): (&mut [T], &Layout),
    axis: usize,
    scratch: &mut Scratch,
) -> IndexResult {
    if let Some(acc) = T::as_f32_mut(out) {
        return scatter_add_f32(src, indices, (acc, ol), axis);
    }
    let contiguous = Layout::contiguous(ol.shape.clone());
    let acc = scratch.f32s(ol.numel()).ok_or(IndexError::Oom)?;
    map::<T, f32>(Map::Identity, (&*out, ol), (&mut *acc, &contiguous));
    let result = scatter_add_f32(src, indices, (&mut *acc, &contiguous), axis);
    map::<f32, T>(Map::Identity, (acc, &contiguous), (out, ol));
    result
}

fn scatter_add_f32<T: Elem, X: Index>(
    (src, sl): (&[T], &Layout),
    (idx, xl): (&[X], &Layout),
    (acc, al): (&mut [f32], &Layout),
    axis: usize,
) -> IndexResult {
    let len = al.dims()[axis];
    let base = base_layout(al, sl.dims(), axis);
    let bad = BadIndex::new();
    let job = Scatter { src, sl, idx, xl, base: &base, astride: al.strides[axis], len, bad: &bad };
    // Duplicate indices make two elements of `src` land on one element of `out`, so tasks may
    // only be cut along a dim other than `axis`. Cutting along the output's outermost dim
    // (largest stride) gives each task its own contiguous stretch of `out`.
    let outermost = (0..al.rank()).filter(|&d| al.dims()[d] > 1).max_by_key(|&d| al.strides[d]);
    let tasks = task_count(sl.numel(), MIN_CHUNK);
    match outermost {
        Some(d) if d != axis && tasks > 1 && sl.dims()[d] > 1 => {
            let extent = sl.dims()[d];
            let stride = al.strides[d];
            let tasks = tasks.min(extent);
            // Cut `acc` at the start of each task's first index along `d`.
            let mut pieces = Vec::with_capacity(tasks);
            let (_, mut rest) = acc.split_at_mut(al.offset.min(acc.len()));
            let mut at = al.offset;
            for t in 0..tasks {
                let (j0, j1) = (split_point(extent, tasks, t), split_point(extent, tasks, t + 1));
                let end = if t + 1 == tasks { at + rest.len() } else { al.offset + j1 * stride };
                let (head, tail) = rest.split_at_mut((end - at).min(rest.len()));
                pieces.push((head, at, j0, j1));
                rest = tail;
                at = end;
            }
            pieces
                .into_par_iter()
                .for_each(|(chunk, start, j0, j1)| job.run(chunk, start, d, j0, j1));
        }
        _ => job.run(acc, 0, 0, 0, sl.dims().first().copied().unwrap_or(1)),
    }
    match bad.get() {
        Some(value) => Err(IndexError::OutOfRange { value, len }),
        None => Ok(()),
    }
}

/// One scatter-add, runnable on a slab `[j0, j1)` of dim `dim`.
struct Scatter<'a, T, X> {
    src: &'a [T],
    sl: &'a Layout,
    idx: &'a [X],
    xl: &'a Layout,
    /// `acc`'s layout over `src`'s shape with the axis stride zeroed.
    base: &'a Layout,
    /// `acc`'s stride along the axis.
    astride: usize,
    len: usize,
    bad: &'a BadIndex,
}

impl<T: Elem, X: Index> Scatter<'_, T, X> {
    /// Adds the slab into `acc`, which starts at element `start` of the full accumulator.
    /// (With `j0..j1` covering all of `dim` this is the whole op.)
    fn run(&self, acc: &mut [f32], start: usize, dim: usize, j0: usize, j1: usize) {
        let narrow = |l: &Layout| {
            if l.rank() == 0 { l.clone() } else { l.narrowed(dim, j0, j1 - j0) }
        };
        let (sl, xl, mut bl) = (narrow(self.sl), narrow(self.xl), narrow(self.base));
        bl.offset -= start;
        let astride = self.astride;
        let plan = Plan::new(sl.dims(), [&sl, &xl, &bl]);
        let [ss, sx, sb] = plan.inner_strides();
        let mut stage = Stage::<1>::new();
        let [block] = stage.blocks();
        plan.walk(0..plan.numel(), |[os, ox, ob], n| {
            if sx == 0 || n == 1 {
                let Some(i) = self.idx[ox].resolve(self.len) else {
                    return self.bad.record(self.idx[ox]);
                };
                let at = ob + i * astride;
                let mut k = 0;
                while k < n {
                    let m = BLOCK.min(n - k);
                    load(self.src, os + k * ss, ss, &mut block[..m]);
                    let first = at + k * sb;
                    if sb == 1 {
                        simd::add_assign(&mut acc[first..first + m], &block[..m]);
                    } else {
                        for (q, &v) in block[..m].iter().enumerate() {
                            acc[first + q * sb] += v;
                        }
                    }
                    k += m;
                }
                return;
            }
            for k in 0..n {
                let x = self.idx[ox + k * sx];
                let Some(i) = x.resolve(self.len) else {
                    self.bad.record(x);
                    continue;
                };
                acc[ob + k * sb + i * astride] += self.src[os + k * ss].to_f32();
            }
        });
    }
}

/// `out[p with p[axis] = indices[p]] = combine(that element, src[p])` for every `p` of `src`
/// (`indices` has `src`'s shape), in increasing order along `axis` within each lane (every
/// other coordinate fixed), so duplicate indices give one defined result: the last source
/// element for an assignment, the ordered fold for a reduction.
pub(crate) fn scatter<T: Elem, X: Index>(
    (src, sl): (&[T], &Layout),
    (idx, xl): (&[X], &Layout),
    (out, ol): (&mut [T], &Layout),
    axis: usize,
    combine: impl Fn(T, T) -> T,
) -> IndexResult {
    let (len, out_len) = (sl.dims()[axis], ol.dims()[axis]);
    let (s_step, x_step, o_step) = (sl.strides[axis], xl.strides[axis], ol.strides[axis]);
    let lanes = |l: &Layout| {
        let mut dims = sl.dims().to_vec();
        dims[axis] = 1;
        Layout { shape: dims.into(), strides: l.strides.clone(), offset: l.offset }
    };
    let (sb, xb, ob) = (lanes(sl), lanes(xl), lanes(ol));
    let plan = Plan::new(sb.dims(), [&sb, &xb, &ob]);
    let [ss, sx, so] = plan.inner_strides();
    let bad = BadIndex::new();
    plan.walk(0..plan.numel(), |[os, ox, oo], n| {
        for k in 0..n {
            let (s0, x0, o0) = (os + k * ss, ox + k * sx, oo + k * so);
            for i in 0..len {
                let x = idx[x0 + i * x_step];
                let Some(t) = x.resolve(out_len) else {
                    bad.record(x);
                    continue;
                };
                let at = o0 + t * o_step;
                out[at] = combine(out[at], src[s0 + i * s_step]);
            }
        }
    });
    match bad.get() {
        Some(value) => Err(IndexError::OutOfRange { value, len: out_len }),
        None => Ok(()),
    }
}

/// How `Op::Scatter` combines (target, source) for a float type: in f32, rounded on store.
pub(crate) fn float_combine<T: Elem>(op: ScatterOp) -> fn(T, T) -> T {
    match op {
        ScatterOp::Assign => |_, s| s,
        ScatterOp::Sum => |t, s| T::from_f32(t.to_f32() + s.to_f32()),
        ScatterOp::Prod => |t, s| T::from_f32(t.to_f32() * s.to_f32()),
        ScatterOp::Max => |t, s| T::from_f32(t.to_f32().max(s.to_f32())),
        ScatterOp::Min => |t, s| T::from_f32(t.to_f32().min(s.to_f32())),
    }
}

/// How `Op::Scatter` combines (target, source) for an integer type: exactly, wrapping.
pub(crate) fn int_combine<T: Int>(op: ScatterOp) -> fn(T, T) -> T {
    match op {
        ScatterOp::Assign => |_, s| s,
        ScatterOp::Sum => T::add,
        ScatterOp::Prod => T::mul,
        ScatterOp::Max => Ord::max,
        ScatterOp::Min => Ord::min,
    }
}
