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
use crate::element::Elem;

/// Query rows per block: 64 rows of scores over a 4096-token context are 1 MiB of f32.
const ROWS: usize = 64;

/// An operand: its elements and its `[.., time, head_dim]` layout.
pub(crate) type Operand<'a, T> = (&'a [T], &'a Layout);

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
fn matrix<T: Elem>((data, layout): Operand<'_, T>, lead: usize, s: &Shape) -> Vec<f32> {
    let mut m = vec![0f32; s.time * s.head];
    for (row, dst) in m.chunks_exact_mut(s.head.max(1)).enumerate() {
        let (at, stride) = row_at(layout, lead, row);
        load(data, at, stride, dst);
    }
    m
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`, each addressed by (row, column) strides; `dst` is
/// row-major with `n` columns. Every element the strides reach is checked to lie in its
/// slice before gemm sees the pointers.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    add: bool,
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
            1.0f32,
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
#[allow(clippy::too_many_arguments)]
fn weights(
    p: &mut [f32],
    q: &[f32],
    k: &[f32],
    rows: std::ops::Range<usize>,
    seen: usize,
    s: &Shape,
    scale: f32,
    causal: bool,
) {
    let d = s.head;
    let count = rows.len();
    product((count, seen, d), p, false, (&q[rows.start * d..], d, 1), (k, 1, d));
    for (r, row) in p[..count * seen].chunks_exact_mut(seen).enumerate() {
        let visible = if causal { (rows.start + r + 1).min(seen) } else { seen };
        let (kept, hidden) = row.split_at_mut(visible);
        let top = kept.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
        let mut total = 0.0f32;
        for x in kept.iter_mut() {
            *x = (*x * scale - top).exp();
            total += *x;
        }
        let inv = 1.0 / total;
        kept.iter_mut().for_each(|x| *x *= inv);
        hidden.fill(0.0);
    }
}

/// Keys query rows `rows` see: those up to the block's last row where `causal`.
fn seen(rows: &std::ops::Range<usize>, s: &Shape, causal: bool) -> usize {
    if causal { rows.end } else { s.time }
}

/// Stores `values` (`[lead, time, head]`, contiguous f32) into `out` through its layout.
fn store_all<T: Elem>(values: &[f32], (out, layout): (&mut [T], &Layout), s: &Shape) {
    let rows = values.chunks_exact(s.head.max(1));
    for (i, row) in rows.enumerate().take(s.lead * s.time) {
        let (at, stride) = row_at(layout, i / s.time, i % s.time);
        store(row, out, at, stride);
    }
}

/// `out = softmax(scale · q · kᵀ) · v` per leading index.
pub(crate) fn forward<T: Elem>(
    [q, k, v]: [Operand<'_, T>; 3],
    out: (&mut [T], &Layout),
    scale: f32,
    causal: bool,
) {
    let s = Shape::of(q.1);
    if s.head == 0 || s.time == 0 {
        return;
    }
    // Each leading index's operands, converted once; then every (index, block) at once.
    let operands: Vec<[Vec<f32>; 3]> = (0..s.lead)
        .into_par_iter()
        .map(|lead| [matrix(q, lead, &s), matrix(k, lead, &s), matrix(v, lead, &s)])
        .collect();
    let mut values = vec![0f32; s.lead * s.time * s.head];
    let per_lead = s.time * s.head;
    values.par_chunks_mut(per_lead).zip(&operands).for_each(|(dst, [q, k, v])| {
        dst.par_chunks_mut(ROWS * s.head).enumerate().for_each_init(
            || vec![0f32; ROWS * s.time],
            |p, (block, out_rows)| {
                let rows = block * ROWS..((block + 1) * ROWS).min(s.time);
                let seen = seen(&rows, &s, causal);
                weights(p, q, k, rows.clone(), seen, &s, scale, causal);
                let count = rows.len();
                product((count, s.head, seen), out_rows, false, (p, seen, 1), (v, s.head, 1));
            },
        );
    });
    store_all(&values, out, &s);
}

/// `out = [dq, dk, dv]` from `d_out`, per leading index; the weights recomputed block by
/// block.
pub(crate) fn backward<T: Elem>(
    [q, k, v, d_out]: [Operand<'_, T>; 4],
    (out, layout): (&mut [T], &Layout),
    scale: f32,
    causal: bool,
) {
    let s = Shape::of(q.1);
    if s.head == 0 || s.time == 0 {
        return;
    }
    let per_lead = s.time * s.head;
    // [lead][dq | dk | dv], each [time, head].
    let mut grads = vec![0f32; s.lead * 3 * per_lead];
    grads.par_chunks_mut(3 * per_lead).enumerate().for_each(|(lead, dst)| {
        let (q, k, v, d_out) = (
            matrix(q, lead, &s),
            matrix(k, lead, &s),
            matrix(v, lead, &s),
            matrix(d_out, lead, &s),
        );
        let (dq, rest) = dst.split_at_mut(per_lead);
        let (dk, dv) = rest.split_at_mut(per_lead);
        let (mut p, mut dp) = (vec![0f32; ROWS * s.time], vec![0f32; ROWS * s.time]);
        let d = s.head;
        for start in (0..s.time).step_by(ROWS) {
            let rows = start..(start + ROWS).min(s.time);
            let (count, seen) = (rows.len(), seen(&rows, &s, causal));
            weights(&mut p, &q, &k, rows.clone(), seen, &s, scale, causal);
            let d_rows = &d_out[start * d..];
            // dv += pᵀ · d_out; dp = d_out · vᵀ.
            product((seen, d, count), dv, true, (&p, 1, seen), (d_rows, d, 1));
            product((count, seen, d), &mut dp, false, (d_rows, d, 1), (&v, 1, d));
            // The softmax's gradient, scaled: ds = scale · p ∘ (dp − Σ p ∘ dp).
            for (pr, dr) in p[..count * seen].chunks_exact(seen).zip(dp.chunks_exact_mut(seen)) {
                let total: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                for (g, &w) in dr.iter_mut().zip(pr) {
                    *g = scale * w * (*g - total);
                }
            }
            // dq = ds · k; dk += dsᵀ · q.
            product((count, d, seen), &mut dq[start * d..], false, (&dp, seen, 1), (&k, d, 1));
            product((seen, d, count), dk, true, (&dp, 1, seen), (&q[start * d..], d, 1));
        }
    });
    // Entry `i` of `out`'s first axis is dq, dk or dv.
    for (which, part) in [0, 1, 2].into_iter().map(|i| (i, layout.narrowed(0, i, 1))) {
        let inner = Layout {
            shape: manychips_api::Shape::new(part.dims()[1..].to_vec()),
            strides: part.strides[1..].to_vec(),
            offset: part.offset,
        };
        let values: Vec<f32> = grads
            .chunks_exact(3 * per_lead)
            .flat_map(|g| g[which * per_lead..(which + 1) * per_lead].iter().copied())
            .collect();
        store_all(&values, (&mut *out, &inner), &s);
    }
}
