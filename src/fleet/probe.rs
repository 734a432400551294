//! Whether an evicted device works again: a small op and its answer, checked on a thread of
//! its own, so that a device that hangs again cannot hang the caller (a probe still running
//! at the deadline is left behind, not waited for).

use std::sync::mpsc;
use std::time::Duration;

use crate::{DType, DeviceRef, Tensor};

/// True when `device` computes a small affine op right within `within`.
pub fn answers(device: &DeviceRef, within: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    let probed = device.clone();
    let label = device.info().label();
    let spawned = std::thread::Builder::new().name(format!("probe {label}")).spawn(move || {
        let _ = tx.send(computes_right(&probed));
    });
    // A probe that panics drops its sender: no answer, as for one that never returns.
    spawned.is_ok() && matches!(rx.recv_timeout(within), Ok(true))
}

fn computes_right(device: &DeviceRef) -> bool {
    let halved = Tensor::full(2.0, [16], DType::F32, device)
        .and_then(|t| t.affine(0.5, 0.0))
        .and_then(|t| t.to_vec::<f32>());
    halved.is_ok_and(|values| values.iter().all(|&v| v == 1.0))
}
