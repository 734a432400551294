//! Finding adapters: every Vulkan, Metal and DX12 adapter wgpu enumerates becomes a device.
//! GL adapters are left out (they have not passed the conformance kit).

use manychips_api::{Error, Result};

use crate::device::WgpuDevice;

/// Every adapter wgpu finds, opened as a device, or `Unavailable` (with why) when none.
pub fn discover() -> Result<Vec<WgpuDevice>> {
    let backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let mut devices = Vec::new();
    let mut problems = Vec::new();
    for adapter in adapters {
        let info = adapter.get_info();
        match WgpuDevice::open(adapter, devices.len()) {
            Ok(d) => devices.push(d),
            Err(e) => {
                tracing::warn!(adapter = %info.name, error = %e, "skipping adapter");
                problems.push(format!("{} ({:?}): {e}", info.name, info.backend));
            }
        }
    }
    if devices.is_empty() {
        let reason = if problems.is_empty() {
            "wgpu found no Vulkan, Metal or DX12 adapter".to_string()
        } else {
            format!("no adapter could be opened: {}", problems.join("; "))
        };
        return Err(Error::Unavailable { backend: "wgpu".into(), reason });
    }
    Ok(devices)
}
