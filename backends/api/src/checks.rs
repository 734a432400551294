//! The checks every backend makes before it touches a buffer, written once so that every
//! device refuses the same mistakes with the same words.

use crate::{BufferId, DType, DeviceId, Error, Op, Result};

/// `buffer` was allocated by the device `owner` (labelled `label`, e.g. `vulkan:0`).
pub fn check_owner(op: &str, label: &str, owner: DeviceId, buffer: BufferId) -> Result<()> {
    if buffer.device == owner {
        return Ok(());
    }
    Err(Error::DeviceMismatch {
        op: op.into(),
        detail: format!(
            "buffer {} belongs to device #{}, not to {label} (device #{})",
            buffer.index,
            buffer.device.as_u64(),
            owner.as_u64()
        ),
    })
}

/// The error for a buffer of this device that does not exist (any more).
pub fn unknown_buffer(op: &str, label: &str, buffer: BufferId) -> Error {
    Error::InvalidArgument {
        op: op.into(),
        device: label.into(),
        detail: format!("buffer {} does not exist (never allocated here, or freed)", buffer.index),
    }
}

/// Bytes `offset..offset + len` lie inside `buffer`, which holds `size` bytes.
pub fn check_byte_range(
    op: &str,
    label: &str,
    buffer: BufferId,
    size: usize,
    offset: usize,
    len: usize,
) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::InvalidArgument {
            op: op.into(),
            device: label.into(),
            detail: format!(
                "bytes {offset}..{offset}+{len} are outside buffer {} of {size} bytes",
                buffer.index
            ),
        }),
    }
}

/// Every view of `op` has a dtype among `dtypes` and lies inside its buffer; `size_of` looks
/// a buffer up (checking that it is this device's) and returns its size in bytes. Call
/// [`Op::validate`] first.
pub fn check_op_views(
    op: &Op,
    label: &str,
    dtypes: &[DType],
    mut size_of: impl FnMut(BufferId) -> Result<usize>,
) -> Result<()> {
    for v in op.inputs().into_iter().chain([op.output()]) {
        if !dtypes.contains(&v.dtype) {
            return Err(Error::UnsupportedDType {
                op: op.name(),
                device: label.into(),
                dtype: v.dtype,
                detail: format!("; {}", op.describe()),
            });
        }
        let size = size_of(v.buffer)?;
        if v.byte_end().is_none_or(|end| end > size) {
            return Err(Error::InvalidArgument {
                op: op.name(),
                device: label.into(),
                detail: format!(
                    "view {v:?} reaches past the end of buffer {} ({size} bytes); {}",
                    v.buffer.index,
                    op.describe()
                ),
            });
        }
    }
    Ok(())
}
