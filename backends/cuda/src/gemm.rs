//! A batched row-major matmul as one `cublasGemmStridedBatchedEx` (or a few): which operand
//! is cuBLAS's A, which transposes, which leading dimensions and batch strides. Pure, so every
//! layout is checked here without a GPU.
//!
//! cuBLAS is column-major. A row-major `C = A·B` is the column-major `Cᵀ = Bᵀ·Aᵀ`, and a
//! transposed view is just the other storage order, so both orientations are tried: the
//! output must be one column-major matrix (unit stride along one of its dims), each input may
//! be transposed (`CUBLAS_OP_T`) without a copy. Batch dims collapse to one stride per operand
//! (stride 0 broadcasts an input); layouts that need more (arbitrary strides inside a matrix,
//! an overlapping leading dimension, batch dims that do not merge into a few calls, sizes
//! past `i32`) are left to the tiled kernel.

use manychips_api::{DType, View};

use crate::params::{Strided, coalesce};

/// At most this many cuBLAS calls for one matmul whose batch dims do not merge into one.
pub(crate) const MAX_CALLS: usize = 64;

/// One operand of a GEMM call: where it starts (in elements, from its buffer start) and how
/// cuBLAS reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmOperand {
    /// Index into `[lhs, rhs, out]` of the view whose buffer this is.
    pub view: usize,
    /// Element offset from the buffer start.
    pub offset: usize,
    pub ld: usize,
    /// Elements between consecutive batch matrices (0 broadcasts).
    pub stride: usize,
}

/// The arguments of one `cublasGemmStridedBatchedEx` call (column-major):
/// `C = op(A)·op(B)` with `C` m×n, `op(A)` m×k, `op(B)` k×n, for `batch` matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmCall {
    pub dtype: DType,
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: GemmOperand,
    pub b: GemmOperand,
    pub c: GemmOperand,
    pub batch: usize,
}

/// A logical matrix `M[r, c]` at `r·rs + c·cs` elements.
#[derive(Clone, Copy, Debug)]
struct Mat {
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// How cuBLAS reads `m`: `Some((transposed, ld))` when `op(X) = m` for a column-major `X`
/// with leading dimension `ld` (at least its row count, as cuBLAS requires).
fn operand(m: Mat, allow_transpose: bool) -> Option<(bool, usize)> {
    // op N: X = M, column-major: M[r, c] at r + c·ld.
    if m.rs == 1 || m.rows == 1 {
        let ld = if m.cols > 1 { m.cs } else { m.rows.max(1) };
        if ld >= m.rows.max(1) {
            return Some((false, ld));
        }
    }
    // op T: X = Mᵀ (cols × rows), column-major: M[r, c] at c + r·ld.
    if allow_transpose && (m.cs == 1 || m.cols == 1) {
        let ld = if m.rows > 1 { m.rs } else { m.cols.max(1) };
        if ld >= m.cols.max(1) {
            return Some((true, ld));
        }
    }
    None
}

fn fits_i32(v: usize) -> bool {
    i32::try_from(v).is_ok()
}

/// The cuBLAS calls computing `out = lhs · rhs` (shapes validated, k > 0, out non-empty), or
/// `None` when cuBLAS cannot take the layout.
pub(crate) fn plan(lhs: &View, rhs: &View, out: &View) -> Option<Vec<GemmCall>> {
    let rank = out.dims().len();
    let b = rank.checked_sub(2)?;
    let (m, k, n) = (lhs.dims()[b], lhs.dims()[b + 1], rhs.dims()[b + 1]);
    let s = |v: &View, d: usize| v.layout.strides[d];
    let a_mat = Mat { rows: m, cols: k, rs: s(lhs, b), cs: s(lhs, b + 1) };
    let b_mat = Mat { rows: k, cols: n, rs: s(rhs, b), cs: s(rhs, b + 1) };
    let c_mat = Mat { rows: m, cols: n, rs: s(out, b), cs: s(out, b + 1) };
    let tr = |x: Mat| Mat { rows: x.cols, cols: x.rows, rs: x.cs, cs: x.rs };
    // (cuBLAS A, its view, cuBLAS B, its view, C) in the two orientations: Cᵀ = Bᵀ·Aᵀ (a
    // row-major output), then C = A·B (a column-major output).
    let orientations = [(tr(b_mat), 1, tr(a_mat), 0, tr(c_mat)), (a_mat, 0, b_mat, 1, c_mat)];
    let (pa, va, pb, vb, pc, (ta, lda), (tb, ldb), ldc) =
        orientations.into_iter().find_map(|(pa, va, pb, vb, pc)| {
            let a = operand(pa, true)?;
            let bb = operand(pb, true)?;
            let (_, ldc) = operand(pc, false)?;
            Some((pa, va, pb, vb, pc, a, bb, ldc))
        })?;
    debug_assert_eq!(pa.cols, pb.rows);
    let (cm, cn) = (pc.rows, pc.cols);
    if ![cm, cn, k, lda, ldb, ldc].into_iter().all(fits_i32) {
        return None;
    }
    // Batch dims: one stride per operand after merging; a few outer dims become separate
    // calls.
    let views = [lhs, rhs, out];
    let ops: Vec<Strided> = views
        .iter()
        .map(|v| Strided::new(v.layout.offset, v.layout.strides[..b].to_vec()))
        .collect();
    let (dims, ops) = coalesce(&out.dims()[..b], &ops);
    let (outer, inner) = match dims.split_last() {
        Some((&last, rest)) => (rest.to_vec(), last),
        None => (Vec::new(), 1),
    };
    let inner_stride = |i: usize| ops[i].strides.last().copied().unwrap_or(0);
    if !fits_i32(inner) {
        return None;
    }
    let calls: usize = outer.iter().product();
    if calls > MAX_CALLS {
        return None;
    }
    let mut out_calls = Vec::with_capacity(calls);
    for c in 0..calls {
        // The outer multi-index of call `c`, row-major.
        let mut rem = c;
        let mut offsets = [ops[0].offset, ops[1].offset, ops[2].offset];
        for d in (0..outer.len()).rev() {
            let i = rem % outer[d];
            rem /= outer[d];
            for (v, off) in offsets.iter_mut().enumerate() {
                *off += i * ops[v].strides[d];
            }
        }
        let at = |view: usize, ld: usize| GemmOperand {
            view,
            offset: offsets[view],
            ld,
            stride: if inner > 1 { inner_stride(view) } else { 0 },
        };
        out_calls.push(GemmCall {
            dtype: out.dtype,
            trans_a: ta,
            trans_b: tb,
            m: cm,
            n: cn,
            k,
            a: at(va, lda),
            b: at(vb, ldb),
            c: at(2, ldc),
            batch: inner,
        });
    }
    Some(out_calls)
}

/// The element `[batch, i, j]` of `C` (row `i` < m, column `j` < n) as an offset, and of
/// `op(A)[batch, i, p]`, `op(B)[batch, p, j]`: how cuBLAS addresses them. Used by the
/// emulator and the tests.
pub(crate) fn addresses(call: &GemmCall, batch: usize, i: usize, j: usize, p: usize) -> [usize; 3] {
    let at = |o: &GemmOperand, trans: bool, r: usize, c: usize| {
        let (r, c) = if trans { (c, r) } else { (r, c) };
        o.offset
            .wrapping_add(batch.wrapping_mul(o.stride))
            .wrapping_add(r)
            .wrapping_add(c.wrapping_mul(o.ld))
    };
    [at(&call.a, call.trans_a, i, p), at(&call.b, call.trans_b, p, j), at(&call.c, false, i, j)]
}

#[cfg(test)]
mod tests {
    use manychips_api::{BufferId, DeviceId, Layout, Shape};

    use super::*;

    fn view(dims: &[usize], strides: &[usize], offset: usize, index: u64) -> View {
        let layout = Layout { shape: Shape::from(dims), strides: strides.to_vec(), offset };
        View::new(BufferId { device: DeviceId::fresh(), index }, layout, DType::F32)
    }

    fn contiguous(dims: &[usize], index: u64) -> View {
        let l = Layout::contiguous(dims);
        view(dims, &l.strides, 0, index)
    }

    /// Checks that the calls address exactly `lhs[.., i, p]`, `rhs[.., p, j]`, `out[.., i, j]`
    /// for every batch and index (up to which operand is cuBLAS's A).
    fn check(lhs: &View, rhs: &View, out: &View, calls: &[GemmCall]) {
        let rank = out.dims().len();
        let b = rank - 2;
        let (m, k, n) = (lhs.dims()[b], lhs.dims()[b + 1], rhs.dims()[b + 1]);
        let batch_dims = &out.dims()[..b];
        let batches: usize = batch_dims.iter().product();
        let views = [lhs, rhs, out];
        let mut seen = std::collections::HashSet::new();
        for (ci, call) in calls.iter().enumerate() {
            // cuBLAS's (m, n) is the output's (m, n) or (n, m).
            let swapped = call.a.view == 1;
            for bi in 0..call.batch {
                for i in 0..call.m {
                    for j in 0..call.n {
                        for p in 0..call.k {
                            let got = addresses(call, bi, i, j, p);
                            let (row, col) = if swapped { (j, i) } else { (i, j) };
                            let batch_index = ci * call.batch + bi;
                            // Row-major multi-index of the batch.
                            let mut rem = batch_index;
                            let mut idx = vec![0; b];
                            for d in (0..b).rev() {
                                idx[d] = rem % batch_dims[d];
                                rem /= batch_dims[d];
                            }
                            let mut want_l = idx.clone();
                            want_l.extend([row, p]);
                            let mut want_r = idx.clone();
                            want_r.extend([p, col]);
                            let mut want_o = idx.clone();
                            want_o.extend([row, col]);
                            let want = [
                                views[0].layout.index_of(&want_l),
                                views[1].layout.index_of(&want_r),
                                views[2].layout.index_of(&want_o),
                            ];
                            let a_view = call.a.view;
                            let b_view = call.b.view;
                            assert_eq!(got[0], want[a_view], "A of call {ci} {call:?}");
                            assert_eq!(got[1], want[b_view], "B of call {ci} {call:?}");
                            assert_eq!(got[2], want[2], "C of call {ci} {call:?}");
                            seen.insert(want[2]);
                        }
                    }
                }
            }
        }
        assert_eq!(seen.len(), batches * m * n, "every output element written once");
        for call in calls {
            assert_eq!(call.k, k);
            let rows_a = if call.trans_a { call.k } else { call.m };
            let rows_b = if call.trans_b { call.n } else { call.k };
            assert!(call.a.ld >= rows_a.max(1) && call.b.ld >= rows_b.max(1));
            assert!(call.c.ld >= call.m.max(1));
        }
    }

    #[test]
    fn contiguous_matmul_is_one_call_with_swapped_operands() {
        let (a, b, c) = (contiguous(&[3, 5], 0), contiguous(&[5, 4], 1), contiguous(&[3, 4], 2));
        let calls = plan(&a, &b, &c).unwrap();
        assert_eq!(calls.len(), 1);
        let call = calls[0];
        assert_eq!((call.m, call.n, call.k, call.batch), (4, 3, 5, 1));
        assert_eq!((call.trans_a, call.trans_b), (false, false));
        assert_eq!((call.a.view, call.b.view), (1, 0));
        assert_eq!((call.a.ld, call.b.ld, call.c.ld), (4, 5, 4));
        check(&a, &b, &c, &calls);
    }

    #[test]
    fn transposed_views_become_op_t_without_a_copy() {
        // lhs is the transpose of a stored [5, 3]; rhs the transpose of a stored [4, 5].
        let a = view(&[3, 5], &[1, 3], 0, 0);
        let b = view(&[5, 4], &[1, 5], 0, 1);
        let c = contiguous(&[3, 4], 2);
        let calls = plan(&a, &b, &c).unwrap();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].trans_a && calls[0].trans_b);
        check(&a, &b, &c, &calls);
        // A column-major output takes the other orientation.
        let ct = view(&[3, 4], &[1, 3], 0, 2);
        let calls = plan(&contiguous(&[3, 5], 0), &contiguous(&[5, 4], 1), &ct).unwrap();
        assert_eq!(calls[0].a.view, 0);
        check(&contiguous(&[3, 5], 0), &contiguous(&[5, 4], 1), &ct, &calls);
    }

    #[test]
    fn batches_broadcast_and_offsets_carry_through() {
        // lhs broadcast over the batch (stride 0), rhs a slice at an offset with padded rows.
        let a = view(&[6, 3, 5], &[0, 5, 1], 2, 0);
        let b = view(&[6, 5, 4], &[40, 8, 1], 3, 1);
        let c = contiguous(&[6, 3, 4], 2);
        let calls = plan(&a, &b, &c).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].batch, 6);
        assert_eq!((calls[0].a.ld, calls[0].b.offset, calls[0].b.stride), (8, 2, 0));
        check(&a, &b, &c, &calls);
    }

    #[test]
    fn batch_dims_that_do_not_merge_become_a_few_calls() {
        // Batch dims [2, 3] walked in a permuted order by the output.
        let a = contiguous(&[2, 3, 4, 5], 0);
        let b = contiguous(&[2, 3, 5, 6], 1);
        let c = view(&[2, 3, 4, 6], &[24, 48, 6, 1], 0, 2);
        let calls = plan(&a, &b, &c).unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c.batch == 3));
        check(&a, &b, &c, &calls);
        // Size-1 dims take any stride.
        let a = view(&[1, 1, 5], &[99, 77, 1], 0, 0);
        let b = view(&[1, 5, 1], &[0, 1, 13], 0, 1);
        let c = view(&[1, 1, 1], &[5, 5, 5], 4, 2);
        let calls = plan(&a, &b, &c).unwrap();
        check(&a, &b, &c, &calls);
    }

    #[test]
    fn layouts_cublas_cannot_take_are_refused() {
        // lhs strided along both dims (every other element of a bigger matrix).
        let a = view(&[3, 5], &[20, 2], 0, 0);
        assert!(plan(&a, &contiguous(&[5, 4], 1), &contiguous(&[3, 4], 2)).is_none());
        // rhs broadcast along its rows (stride 0 inside a matrix).
        let b = view(&[5, 4], &[0, 1], 0, 1);
        assert!(plan(&contiguous(&[3, 5], 0), &b, &contiguous(&[3, 4], 2)).is_none());
        // An output strided along both dims.
        let c = view(&[3, 4], &[10, 2], 0, 2);
        assert!(plan(&contiguous(&[3, 5], 0), &contiguous(&[5, 4], 1), &c).is_none());
        // Too many unmergeable batch calls.
        let a = contiguous(&[100, 2, 3, 4], 0);
        let b = contiguous(&[100, 2, 4, 5], 1);
        let c = view(&[100, 2, 3, 5], &[15, 1500, 5, 1], 0, 2);
        assert!(plan(&a, &b, &c).is_none());
    }
}
