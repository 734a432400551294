//! Rewriting an op's buffers from the simulated device's ids to the inner device's.

use manychips_api::{Op, Result, View};

/// `op` with every view's buffer replaced by `map(buffer)`; the first `Err` of `map` wins.
pub(crate) fn remap(
    op: &Op,
    mut map: impl FnMut(manychips_api::BufferId) -> Result<manychips_api::BufferId>,
) -> Result<Op> {
    let mut op = op.clone();
    let mut first_err = None;
    for_each_view(&mut op, &mut |view: &mut View| {
        if first_err.is_some() {
            return;
        }
        match map(view.buffer) {
            Ok(buffer) => view.buffer = buffer,
            Err(err) => first_err = Some(err),
        }
    });
    match first_err {
        Some(err) => Err(err),
        None => Ok(op),
    }
}

/// Visits every view of `op`, inputs first, output last.
fn for_each_view(op: &mut Op, f: &mut impl FnMut(&mut View)) {
    match op {
        Op::Matmul { lhs, rhs, out }
        | Op::Binary { lhs, rhs, out, .. }
        | Op::Compare { lhs, rhs, out, .. } => {
            f(lhs);
            f(rhs);
            f(out);
        }
        Op::Unary { input, out, .. }
        | Op::Affine { input, out, .. }
        | Op::Reduce { input, out, .. }
        | Op::Softmax { input, out, .. }
        | Op::Cast { input, out }
        | Op::Copy { input, out } => {
            f(input);
            f(out);
        }
        Op::Concat { inputs, out, .. } => {
            inputs.iter_mut().for_each(&mut *f);
            f(out);
        }
        Op::IndexSelect { input, indices, out, .. } | Op::Gather { input, indices, out, .. } => {
            f(input);
            f(indices);
            f(out);
        }
        Op::IndexAdd { src, indices, out, .. } | Op::ScatterAdd { src, indices, out, .. } => {
            f(src);
            f(indices);
            f(out);
        }
        Op::Where { cond, on_true, on_false, out } => {
            f(cond);
            f(on_true);
            f(on_false);
            f(out);
        }
        Op::Fill { out, .. } => f(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId, Error, Layout};

    #[test]
    fn maps_every_view_and_stops_at_the_first_error() {
        let (from, to) = (DeviceId::fresh(), DeviceId::fresh());
        let view = |index| {
            View::new(BufferId { device: from, index }, Layout::contiguous([2]), DType::F32)
        };
        let op = Op::Concat { inputs: vec![view(0), view(1)], out: view(2), axis: 0 };
        let mapped = remap(&op, |b| Ok(BufferId { device: to, index: b.index + 10 })).unwrap();
        let bufs: Vec<_> =
            mapped.inputs().iter().map(|v| v.buffer).chain([mapped.output().buffer]).collect();
        assert!(bufs.iter().all(|b| b.device == to));
        assert_eq!(bufs.iter().map(|b| b.index).collect::<Vec<_>>(), [10, 11, 12]);

        let mut calls = 0;
        let err = remap(&op, |_| {
            calls += 1;
            Err(Error::DeviceMismatch { op: "run".into(), detail: "x".into() })
        });
        assert!(err.is_err());
        assert_eq!(calls, 1);
    }
}
