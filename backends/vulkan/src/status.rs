//! The status buffer: where kernels flag out-of-range index values ([`Slot::Status`]), so
//! that the host can report `IndexOutOfRange` at the next `read` or `synchronize`.
//!
//! [`Slot::Status`]: manychips_wgsl::Slot::Status

use gpu_allocator::vulkan::Allocator;
use manychips_api::{Error, Result};
use manychips_wgsl::STATUS_BYTES;

use crate::memory::{Buffer, Kind};
use crate::queue::{Ctx, Queue, discard};

/// The status buffer, zeroed.
pub(crate) fn new_status(
    device: &ash::Device,
    allocator: &mut Allocator,
    queue: &mut Queue,
    label: &str,
) -> Result<Buffer> {
    let status = Buffer::new(device, allocator, label, "new", STATUS_BYTES, Kind::Storage)?;
    let mut ctx = Ctx { device, allocator, label, op: "new" };
    let zeroed = queue.frame(&ctx).map(|f| f.zero(device, status.raw, status.size));
    match zeroed.and_then(|()| queue.finish(&mut ctx)) {
        Ok(()) => Ok(status),
        Err(e) => {
            // SAFETY: a live device; afterwards nothing uses the buffer.
            let _ = unsafe { device.device_wait_idle() };
            status.destroy(device, ctx.allocator);
            Err(e)
        }
    }
}

/// Reports (and clears) an out-of-range index value a kernel flagged in the status buffer.
/// The queue must be idle (just finished).
pub(crate) fn check_status(
    ctx: &mut Ctx<'_>,
    queue: &mut Queue,
    status: &mut Option<Buffer>,
    users: &mut Vec<String>,
    direct: bool,
) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let Some(status) = status.as_mut() else { return Ok(()) };
    let copy = |b: &[u8]| {
        let mut words = [0u8; STATUS_BYTES as usize];
        let n = words.len().min(b.len());
        words[..n].copy_from_slice(&b[..n]);
        words
    };
    let words = if let Some(mapped) = status.mapped_mut().filter(|_| direct) {
        let words = copy(mapped);
        mapped.fill(0);
        words
    } else {
        let staging = Buffer::new(
            ctx.device,
            ctx.allocator,
            ctx.label,
            ctx.op,
            STATUS_BYTES,
            Kind::Download,
        )?;
        let recorded = queue.frame(ctx).map(|frame| {
            frame.copy(ctx.device, status.raw, 0, staging.raw, 0, STATUS_BYTES);
            frame.zero(ctx.device, status.raw, status.size);
        });
        let words = recorded
            .and_then(|()| queue.finish(ctx))
            .map(|()| staging.mapped().map(copy).unwrap_or_default());
        match &words {
            Ok(_) => staging.destroy(ctx.device, ctx.allocator),
            Err(_) => discard(ctx, queue, staging),
        }
        words?
    };
    let ops = std::mem::take(users);
    match manychips_wgsl::bad_index(&words) {
        None => Ok(()),
        Some(detail) => {
            Err(Error::IndexOutOfRange { op: ops.join(", "), device: ctx.label.into(), detail })
        }
    }
}
