//! The manychips Vulkan backend.
//!
//! [`discover`] loads libvulkan at run time (so this crate builds and links everywhere) and
//! returns one [`VulkanDevice`] per physical device with a compute queue. Each device runs
//! the shared WGSL kernels of `manychips-wgsl`, compiled to SPIR-V by naga once per kernel
//! key; memory comes from gpu-allocator. The host never needs to know what an op means: it
//! binds the buffers each [`manychips_wgsl::Dispatch`] names and dispatches in order.

mod device;
mod discover;
mod dispatch;
mod error;
mod memory;
mod pipeline;
mod queue;
mod status;

pub use device::VulkanDevice;
pub use discover::discover;
/// The kernel-library types a device's configuration is expressed in.
pub use manychips_wgsl::{Features, MatmulKernel};

use manychips_api::DType;

/// The dtypes a Vulkan device computes: those the kernels support.
///
/// The shared kernels convert 16-bit and 8-bit values with integer bit operations (no
/// optional shader feature; bf16 is computed in f32), so every dtype lowers on every device
/// whatever its `shader_f16`; the conformance kit passes for all of them on lavapipe.
pub(crate) fn dtypes() -> Vec<DType> {
    // All but I64: WGSL (and so every kernel) has no 64-bit integers.
    manychips_wgsl::DTYPES.to_vec()
}

/// Set (to anything) to make devices move every byte through staging buffers, as on a
/// discrete GPU, even where device memory is host-visible (for testing those paths).
pub const STAGING_ENV: &str = "MANYCHIPS_VULKAN_STAGING";
