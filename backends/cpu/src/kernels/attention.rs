//! `Op::Attention` and `Op::AttentionBackward` fused: per leading index (a batch row's
//! head), blocks of query rows against the keys they see, through `gemm`, in f32. A block's
//! scores live in a `[rows, time]` scratch that stays in cache; the `[time, time]` matrix
//! is never stored, so the op reads its operands and writes its output once, where the
//! unfused ops write and read the scores three times (FlashAttention's point; on a CPU the
//! rows are long enough that the softmax needs no running maximum).
//!
//! Forward blocks run in parallel. The backward pass adds each block's share of `dk` and
//! `dv` in block order within one leading index, so its sums are the same on every run.

use manychips_api::Layout;
use rayon::prelude::*;

use super::elementwise::{load, store};
use super::simd;
use crate::element::Elem;

/// Query rows per block: 64 rows of scores over a 4096-token context are 1 MiB of f32.
const ROWS: usize = 64;

/// An operand: its elements and its `[.., time, head_dim]` layout.
pub(crate) type Operand<'a, T> = (&'a [T], &'a Layout);

/// The kernel could not allocate its scratch; the device answers `OutOfMemory`.
#[derive(Debug)]
pub(crate) struct Oom;

/// `n` zeroed f32s, or `Oom` where the allocator has no room (never an abort).
fn zeroed(n: usize) -> Result<Vec<f32>, Oom> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Oom)?;
    v.resize(n, 0.0);
    Ok(v)
}

/// Geometry shared by the operands (validation gave them one shape).
struct Shape {
    /// Leading indices (the product of the dims before `time`).
    lead: usize,
    time: usize,
    head: usize,
}

impl Shape {
    fn of(layout: &Layout) -> Shape {
        let dims = layout.dims();
        let (time, head) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        Shape { lead: dims[..dims.len() - 2].iter().product(), time, head }
    }
}

/// Element offset of row `row` of leading index `lead` in `layout`, and its column stride.
fn row_at(layout: &Layout, lead: usize, row: usize) -> (usize, usize) {
    let rank = layout.rank();
    let mut rest = lead;
    let mut at = layout.offset;
    for axis in (0..rank - 2).rev() {
        let dim = layout.dims()[axis];
        at += (rest % dim) * layout.strides[axis];
        rest /= dim;
    }
    (at + row * layout.strides[rank - 2], layout.strides[rank - 1])
}

/// Leading index `lead` of an operand as a contiguous f32 `[time, head]` matrix.
fn matrix<T: Elem>(
    (data, layout): Operand<'_, T>,
    lead: usize,
    s: &Shape,
) -> Result<Vec<f32>, Oom> {
    let mut m = zeroed(s.time * s.head)?;
    for (row, dst) in m.chunks_exact_mut(s.head).enumerate() {
        let (at, stride) = row_at(layout, lead, row);
        load(data, at, stride, dst);
    }
    Ok(m)
}

/// `dst[m×n] (+)= factor · a[m×k] · b[k×n]`, each addressed by (row, column) strides;
/// `dst` is row-major with `n` columns. Every element the strides reach is checked to lie
/// in its slice before gemm sees the pointers.
fn product(
    (m, n, k): (usize, usize, usize),
    (dst, add): (&mut [f32], bool),
    factor: f32,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !add {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        dst.len() >= m * n && a.len() > last(m, k, a_rs, a_cs) && b.len() > last(k, n, b_rs, b_cs),
        "attention: a block product out of its scratch"
    );
    // SAFETY: the assertion above puts every element gemm addresses (row < m, column < n,
    // depth < k along these strides) inside its slice; `dst` is borrowed mutably and is a
    // different allocation from `a` and `b`; every stride fits an isize (the slices do).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            add,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            factor,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Scaled scores of query rows `rows` against keys `0..seen` into `p` (`[rows, seen]`),
/// turned into softmax weights in place: keys after a row's own position weigh nothing
/// where `causal`.
fn weights(
    p: &mut [f32],
    (q, k): (&[f32], &[f32]),
    rows: &std::ops::Range<usize>,
    (seen, head): (usize, usize),
    scale: f32,
    causal: bool,
) {
    let count = rows.len();
    let queries = &q[rows.start * head..];
    product((count, seen, head), (p, false), scale, (queries, head, 1), (k, 1, head));
    for (r, row) in p[..count * seen].chunks_exact_mut(seen).enumerate() {
        let visible = if causal { (rows.start + r + 1).min(seen) } else { seen };
        let (kept, hidden) = row.split_at_mut(visible);
        let top = simd::max(kept);
        let total = simd::exp_sub_inplace(kept, top);
        simd::scale(kept, 1.0 / total);
        hidden.fill(0.0);
    }
}

/// Keys query rows `rows` see: those up to the block's last row where `causal`.
fn seen(rows: &std::ops::Range<usize>, s: &Shape, causal: bool) -> usize {
    if causal { rows.end } else { s.time }
}

/// Stores part `which` of `staged` (per leading index, `parts` contiguous f32 `[time, head]`
/// matrices) into `out` through `layout`.
fn store_part<T: Elem>(
    staged: &[f32],
    (parts, which): (usize, usize),
    (out, layout): (&mut [T], &Layout),
    s: &Shape,
) {
    let per_lead = s.time * s.head;
    for lead in 0..s.lead {
        let base = (lead * parts + which) * per_lead;
        for (row, src) in staged[base..base + per_lead].chunks_exact(s.head).enumerate() {
            let (at, stride) = row_at(layout, lead, row);
            store(src, out, at, stride);
        }
    }
}

/// `out = softmax(scale · q · kᵀ) · v` per leading index.
pub(crate) fn forward<T: Elem>(
    [q, k, v]: [Operand<'_, T>; 3],
    out: (&mut [T], &Layout),
    scale: f32,
    causal: bool,
) -> Result<(), Oom> {
    let s = Shape::of(q.1);
    if s.head == 0 || s.time == 0 || s.lead == 0 {
        return Ok(());
    }
    let per_lead = s.time * s.head;
    let mut values = zeroed(s.lead * per_lead)?;
    // Each leading index's operands converted once, its blocks of rows then in parallel.
    values.par_chunks_mut(per_lead).enumerate().try_for_each(|(lead, dst)| {
        let (q, k, v) = (matrix(q, lead, &s)?, matrix(k, lead, &s)?, matrix(v, lead, &s)?);
        dst.par_chunks_mut(ROWS * s.head).enumerate().try_for_each_init(
            || zeroed(ROWS * s.time),
            |p, (block, out_rows)| {
                let p = p.as_mut().map_err(|_| Oom)?;
                let rows = block * ROWS..((block + 1) * ROWS).min(s.time);
                let seen = seen(&rows, &s, causal);
                weights(p, (&q, &k), &rows, (seen, s.head), scale, causal);
                let count = rows.len();
                product(
                    (count, s.head, seen),
                    (out_rows, false),
                    1.0,
                    (p, seen, 1),
                    (&v, s.head, 1),
                );
                Ok(())
            },
        )
    })?;
    store_part(&values, (1, 0), out, &s);
    Ok(())
}

/// `out = [dq, dk, dv]` from `d_out`, per leading index; the weights recomputed block by
/// block.
pub(crate) fn backward<T: Elem>(
    [q, k, v, d_out]: [Operand<'_, T>; 4],
    (out, layout): (&mut [T], &Layout),
    scale: f32,
    causal: bool,
) -> Result<(), Oom> {
    let s = Shape::of(q.1);
    if s.head == 0 || s.time == 0 || s.lead == 0 {
        return Ok(());
    }
    let per_lead = s.time * s.head;
    // [lead][dq | dk | dv], each [time, head].
    let mut grads = zeroed(s.lead * 3 * per_lead)?;
    grads.par_chunks_mut(3 * per_lead).enumerate().try_for_each(|(lead, dst)| {
        let (q, k) = (matrix(q, lead, &s)?, matrix(k, lead, &s)?);
        let (v, d_out) = (matrix(v, lead, &s)?, matrix(d_out, lead, &s)?);
        let (dq, rest) = dst.split_at_mut(per_lead);
        let (dk, dv) = rest.split_at_mut(per_lead);
        let (mut p, mut dp) = (zeroed(ROWS * s.time)?, zeroed(ROWS * s.time)?);
        let d = s.head;
        for start in (0..s.time).step_by(ROWS) {
            let rows = start..(start + ROWS).min(s.time);
            let (count, seen) = (rows.len(), seen(&rows, &s, causal));
            weights(&mut p, (&q, &k), &rows, (seen, d), scale, causal);
            let d_rows = &d_out[start * d..];
            // dv += pᵀ · d_out; dp = d_out · vᵀ.
            product((seen, d, count), (dv, true), 1.0, (&p, 1, seen), (d_rows, d, 1));
            product((count, seen, d), (&mut dp, false), 1.0, (d_rows, d, 1), (&v, 1, d));
            // The softmax's gradient, scaled: ds = scale · p ∘ (dp − Σ p ∘ dp).
            for (pr, dr) in p[..count * seen].chunks_exact(seen).zip(dp.chunks_exact_mut(seen)) {
                let total: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                for (g, &w) in dr.iter_mut().zip(pr) {
                    *g = scale * w * (*g - total);
                }
            }
            // dq = ds · k; dk += dsᵀ · q.
            let dq_rows = &mut dq[start * d..];
            product((count, d, seen), (dq_rows, false), 1.0, (&dp, seen, 1), (&k, d, 1));
            product((seen, d, count), (dk, true), 1.0, (&dp, 1, seen), (&q[start * d..], d, 1));
        }
        Ok(())
    })?;
    // Entry `i` of `out`'s first axis is dq, dk or dv.
    for which in 0..3 {
        let part = layout.narrowed(0, which, 1);
        let inner = Layout {
            shape: manychips_api::Shape::new(part.dims()[1..].to_vec()),
            strides: part.strides[1..].to_vec(),
            offset: part.offset,
        };
        store_part(&grads, (3, which), (&mut *out, &inner), &s);
    }
    Ok(())
}
