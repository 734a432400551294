//! Cutting one op into independent parts along an axis of its output: the planner's only
//! op-specific knowledge. Every part is itself a valid [`Op`] over the same buffers, so any
//! device runs it and the parts together write each output element exactly once.

use manychips_api::{Op, View};

/// The output axes `op` can be cut along, outermost first: every axis of an elementwise op;
/// every axis but the reduced one of a reduction or softmax; batch, rows and columns of a
/// matmul; the leading axes of attention. Axes of length 1 are left out (nothing to share),
/// and so are ops that are not independent per output element (copies, gathers, scatters,
/// concat, fill) and attention's backward pass (independent per leading index too, but its
/// output's first axis is `[dq, dk, dv]`; not cut yet).
pub fn cut_axes(op: &Op) -> Vec<usize> {
    let dims = op.output().dims();
    let reduced = match op {
        Op::Reduce { axis, .. } | Op::Softmax { axis, .. } | Op::FusedReduce { axis, .. } => {
            Some(*axis)
        }
        Op::Matmul { .. }
        | Op::Binary { .. }
        | Op::Compare { .. }
        | Op::Unary { .. }
        | Op::Affine { .. }
        | Op::Cast { .. }
        | Op::Where { .. }
        | Op::Fused { .. } => None,
        Op::Copy { .. }
        | Op::Concat { .. }
        | Op::IndexSelect { .. }
        | Op::Gather { .. }
        | Op::IndexAdd { .. }
        | Op::ScatterAdd { .. }
        | Op::Scatter { .. }
        | Op::ArgSort { .. }
        | Op::Fill { .. }
        | Op::AttentionBackward { .. } => return Vec::new(),
        // Each leading index (a batch row's head) attends on its own; its rows do not.
        Op::Attention { .. } => {
            let lead = dims.len().saturating_sub(2);
            return (0..lead).filter(|&a| dims[a] > 1).collect();
        }
    };
    (0..dims.len()).filter(|&a| Some(a) != reduced && dims[a] > 1).collect()
}

/// The part of `op` that writes output entries `start..start + len` of `axis` (one of
/// [`cut_axes`]). Inputs are narrowed where they follow that axis; a matmul cut by rows keeps
/// all of `rhs`, cut by columns all of `lhs`.
pub fn cut(op: &Op, axis: usize, start: usize, len: usize) -> Op {
    let narrow = |v: &View| View::new(v.buffer, v.layout.narrowed(axis, start, len), v.dtype);
    let mut part = op.clone();
    match &mut part {
        Op::Matmul { lhs, rhs, out } => {
            let rank = out.dims().len();
            if axis != rank - 1 {
                *lhs = narrow(lhs);
            }
            if axis != rank - 2 {
                *rhs = narrow(rhs);
            }
            *out = narrow(out);
        }
        // Every operand of these has the output's shape (broadcasts are stride-0 dims), and a
        // reduction's input differs from its output only along the reduced axis.
        _ => {
            for v in part.views_mut() {
                *v = narrow(v);
            }
        }
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId, Layout, ReduceOp};

    fn view(index: u64, dims: &[usize]) -> View {
        let buffer = BufferId { device: DeviceId::fresh(), index };
        View::new(buffer, Layout::contiguous(dims.to_vec()), DType::F32)
    }

    #[test]
    fn matmul_cuts_keep_the_operand_the_axis_does_not_touch() {
        let op = Op::Matmul {
            lhs: view(0, &[2, 6, 4]),
            rhs: view(1, &[2, 4, 5]),
            out: view(2, &[2, 6, 5]),
        };
        assert_eq!(cut_axes(&op), vec![0, 1, 2]);
        let rows = cut(&op, 1, 2, 3);
        rows.validate("test").unwrap();
        let Op::Matmul { lhs, rhs, out } = &rows else { unreachable!() };
        assert_eq!(
            (lhs.dims(), rhs.dims(), out.dims()),
            (&[2, 3, 4][..], &[2, 4, 5][..], &[2, 3, 5][..])
        );
        assert_eq!((lhs.layout.offset, out.layout.offset), (8, 10));
        let cols = cut(&op, 2, 1, 2);
        cols.validate("test").unwrap();
        let Op::Matmul { lhs, rhs, .. } = &cols else { unreachable!() };
        assert_eq!(
            (lhs.dims(), rhs.dims(), rhs.layout.offset),
            (&[2, 6, 4][..], &[2, 4, 2][..], 1)
        );
        let batch = cut(&op, 0, 1, 1);
        batch.validate("test").unwrap();
        assert_eq!(batch.inputs()[1].layout.offset, 20);
    }

    #[test]
    fn reductions_are_not_cut_along_the_reduced_axis() {
        let op = Op::Reduce {
            op: ReduceOp::Sum,
            input: view(0, &[3, 8, 5]),
            out: view(1, &[3, 1, 5]),
            axis: 1,
        };
        assert_eq!(cut_axes(&op), vec![0, 2]);
        let part = cut(&op, 2, 1, 4);
        part.validate("test").unwrap();
        assert_eq!(part.output().dims(), &[3, 1, 4]);
        assert_eq!(part.inputs()[0].dims(), &[3, 8, 4]);
    }

    #[test]
    fn gathers_and_fills_are_not_cut() {
        assert!(cut_axes(&Op::Fill { out: view(0, &[9, 9]), value: 0.0 }).is_empty());
    }
}
