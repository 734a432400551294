//! Rewriting an op's buffers from the simulated device's ids to the inner device's.

use manychips_api::{Op, Result};

/// `op` with every view's buffer replaced by `map(buffer)`; the first `Err` of `map` wins.
pub(crate) fn remap(
    op: &Op,
    mut map: impl FnMut(manychips_api::BufferId) -> Result<manychips_api::BufferId>,
) -> Result<Op> {
    let mut op = op.clone();
    for view in op.views_mut() {
        view.buffer = map(view.buffer)?;
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use manychips_api::{BufferId, DType, DeviceId, Error, Layout, View};

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
