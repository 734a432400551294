//! Vulkan and allocator failures as the contract's [`Error`].
//!
//! `VK_ERROR_DEVICE_LOST` becomes `DeviceLost` (and the device stays lost), the out-of-memory
//! results become `OutOfMemory`, every other failure is a `Fault` naming the call.

use ash::vk;
use gpu_allocator::AllocationError;
use manychips_api::Error;

/// Maps a failed Vulkan call (`what`, e.g. `vkQueueSubmit`) made for `op` on `device`.
pub(crate) fn vk_error(op: &str, device: &str, what: &str, result: vk::Result) -> Error {
    match result {
        vk::Result::ERROR_DEVICE_LOST => Error::DeviceLost {
            device: device.into(),
            detail: format!("{what} returned VK_ERROR_DEVICE_LOST during {op}"),
        },
        vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => {
            Error::OutOfMemory {
                op: op.into(),
                device: device.into(),
                detail: format!("{what} returned {result:?}"),
            }
        }
        other => Error::Fault {
            op: op.into(),
            device: device.into(),
            detail: format!("{what} returned {other:?}"),
        },
    }
}

/// Maps a failed gpu-allocator call.
pub(crate) fn alloc_error(op: &str, device: &str, bytes: u64, e: AllocationError) -> Error {
    match e {
        AllocationError::OutOfMemory => Error::OutOfMemory {
            op: op.into(),
            device: device.into(),
            detail: format!("no device memory for {bytes} bytes"),
        },
        other => Error::Fault {
            op: op.into(),
            device: device.into(),
            detail: format!("allocating {bytes} bytes: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use manychips_api::ErrorKind;

    use super::*;

    #[test]
    fn vulkan_results_map_to_distinct_kinds() {
        let kind = |r| vk_error("run", "vulkan:0", "vkQueueSubmit", r).kind();
        assert_eq!(kind(vk::Result::ERROR_DEVICE_LOST), ErrorKind::DeviceLost);
        assert_eq!(kind(vk::Result::ERROR_OUT_OF_DEVICE_MEMORY), ErrorKind::OutOfMemory);
        assert_eq!(kind(vk::Result::ERROR_OUT_OF_HOST_MEMORY), ErrorKind::OutOfMemory);
        assert_eq!(kind(vk::Result::ERROR_INITIALIZATION_FAILED), ErrorKind::Fault);
        let oom = alloc_error("alloc", "vulkan:0", 8, AllocationError::OutOfMemory);
        assert_eq!(oom.kind(), ErrorKind::OutOfMemory);
        let other =
            alloc_error("alloc", "vulkan:0", 8, AllocationError::NoCompatibleMemoryTypeFound);
        assert_eq!(other.kind(), ErrorKind::Fault);
        assert!(other.to_string().contains("8 bytes"));
    }
}
