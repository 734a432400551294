//! The wgpu backend: every adapter wgpu finds (Vulkan, Metal, DX12) as a manychips
//! [`Device`](manychips_api::Device), running the shared WGSL kernels of `manychips-wgsl`.

mod device;
mod discover;
mod errors;
mod pipelines;
mod spare;

pub use device::WgpuDevice;
pub use discover::discover;
/// The matmul kernel variants a device can be set to ([`WgpuDevice::set_matmul_kernel`]).
pub use manychips_wgsl::MatmulKernel;
