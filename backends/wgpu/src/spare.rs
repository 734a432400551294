//! Freed buffers kept for reuse. A fresh wgpu buffer costs an allocation, the page faults
//! of its first touch and wgpu's zero fill before a kernel first writes it (it tracks which
//! bytes were ever initialised): on lavapipe a 4M-element add paid more for its new output
//! than for the add. A kept buffer of the same size costs none of these, and ops of a
//! training step ask for the same sizes every step.
//!
//! Reuse needs no waiting: every use of a buffer is recorded into the one queue in call
//! order (host writes submit what is recorded first), so a new owner's work runs after the
//! old owner's, and wgpu puts the barriers between them.

use std::collections::HashMap;

/// The most bytes kept: beyond it freed buffers go back to the driver.
const LIMIT: u64 = 512 << 20;

#[derive(Default)]
pub(crate) struct Spare {
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl Spare {
    /// A kept buffer of exactly `size` bytes, if any.
    pub(crate) fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let buffer = self.by_size.get_mut(&size)?.pop()?;
        self.bytes -= size;
        Some(buffer)
    }

    /// Keeps `buffer` for a later `take`, or drops it when the limit would be passed.
    pub(crate) fn keep(&mut self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        if self.bytes + size <= LIMIT {
            self.bytes += size;
            self.by_size.entry(size).or_default().push(buffer);
        }
    }

    /// Bytes kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives every kept buffer back to the driver (before an allocation that found no room).
    pub(crate) fn clear(&mut self) {
        self.by_size.clear();
        self.bytes = 0;
    }
}
