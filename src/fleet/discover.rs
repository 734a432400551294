//! Finding the devices this build can reach.

use std::sync::Arc;

use crate::{CpuDevice, Device, DeviceRef, Error, Result};

/// What [`discover`] found: every device, and for each backend that found none, why.
#[derive(Debug, Default)]
pub struct Discovery {
    pub devices: Vec<DeviceRef>,
    /// One `Error::Unavailable` (or the error that stopped the search) per backend that
    /// contributed no device: no driver, no library, no adapter.
    pub unavailable: Vec<Error>,
}

/// Every device of every backend compiled in: the CPU first, then CUDA, then Vulkan, then
/// wgpu.
///
/// One physical card may appear through several backends (an NVIDIA card is `cuda:0`,
/// `vulkan:0` and `wgpu:0`; lavapipe is both `vulkan:0` and `wgpu:0`): this lists every view,
/// and [`Fleet::discover`](super::Fleet::discover) keeps one per chip, preferring CUDA. A backend without a driver contributes no device and an entry in
/// [`Discovery::unavailable`]; nothing panics.
pub fn discover() -> Discovery {
    discover_where(|_| true)
}

/// [`discover`] over the backends `open` accepts (by name); the others are not touched.
pub(crate) fn discover_where(open: impl Fn(&str) -> bool) -> Discovery {
    let mut found = Discovery::default();
    if open("cpu") {
        found.collect(CpuDevice::new().map(|cpu| vec![cpu]));
    }
    #[cfg(feature = "cuda")]
    if open("cuda") {
        found.collect(manychips_cuda::discover());
    }
    #[cfg(feature = "vulkan")]
    if open("vulkan") {
        found.collect(manychips_vulkan::discover());
    }
    #[cfg(feature = "wgpu")]
    if open("wgpu") {
        found.collect(manychips_wgpu::discover());
    }
    found
}

/// The devices of [`discover`]; an `Err` only when not even the CPU device starts.
pub fn devices() -> Result<Vec<DeviceRef>> {
    let found = discover();
    match found.unavailable.into_iter().next() {
        Some(err) if found.devices.is_empty() => Err(err),
        _ => Ok(found.devices),
    }
}

impl Discovery {
    fn collect<D: Device + 'static>(&mut self, result: Result<Vec<D>>) {
        match result {
            Ok(devices) => {
                self.devices.extend(devices.into_iter().map(|d| Arc::new(d) as DeviceRef))
            }
            Err(err) => {
                tracing::info!(%err, "a backend contributed no device");
                self.unavailable.push(err);
            }
        }
    }
}
