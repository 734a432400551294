//! Finding the devices this build can reach.

use std::sync::Arc;

use crate::{CpuDevice, DeviceRef, Result};

/// Every device of every backend compiled in. The CPU device is always first; GPU backends
/// add theirs as they are built in (each behind its cargo feature).
pub fn devices() -> Result<Vec<DeviceRef>> {
    let cpu: DeviceRef = Arc::new(CpuDevice::new()?);
    Ok(vec![cpu])
}
