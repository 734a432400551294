//! Faults raised by wgpu outside any call (uncaptured errors, device loss), kept until the
//! next call that can report them.

use std::sync::{Mutex, PoisonError};

use manychips_api::Error;

#[derive(Debug, Default)]
pub(crate) struct Faults {
    first: Mutex<Option<Error>>,
    lost: Mutex<Option<String>>,
}

impl Faults {
    /// Remembers the first uncaptured error (later ones are usually its consequences).
    pub fn record(&self, label: &str, e: wgpu::Error) {
        let err = convert(label, "gpu", e);
        tracing::warn!(device = label, error = %err, "wgpu error");
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(err);
        }
    }

    pub fn set_lost(&self, reason: String) {
        *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The first fault since the last call, cleared.
    pub fn take(&self) -> Option<Error> {
        self.first.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A wgpu error as the contract's error for `op`.
pub(crate) fn convert(label: &str, op: &str, e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            op: op.into(),
            device: label.into(),
            detail: "wgpu reported out of memory".into(),
        },
        wgpu::Error::Validation { description, .. } => Error::Fault {
            op: op.into(),
            device: label.into(),
            detail: format!("wgpu validation error: {description}"),
        },
        wgpu::Error::Internal { description, .. } => Error::Fault {
            op: op.into(),
            device: label.into(),
            detail: format!("wgpu internal error: {description}"),
        },
    }
}
