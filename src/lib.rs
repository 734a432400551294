//! manychips: one API over a mixed fleet of accelerators.
//!
//! Tensors live on a [`Device`] (CPU, Vulkan, wgpu, CUDA, or a third party's chip behind the
//! same trait); every op is a value of the closed [`Op`] enum that any device runs. The
//! [`conformance`] kit checks a device against an f64 host reference.

pub mod conformance;
mod files;
pub mod fleet;
pub mod plan;
mod tensor;
pub mod train;

pub use fleet::{Discovery, Fleet, devices, discover};
pub use manychips_api::*;
pub use manychips_cpu::CpuDevice;
/// Simulated devices: a real device that behaves like a chip of a given speed, and fails on
/// command.
pub use manychips_sim as sim;
/// Which WGSL matmul kernel a Vulkan or wgpu device runs.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub use manychips_wgsl::{MatmulKernel, pick_matmul_kernel};
pub(crate) use tensor::programs;
pub use tensor::{Axes, Axis, NewShape, Tensor, Ties, broadcast_shapes};

use std::sync::Arc;

/// A shared handle to a device; tensors keep their device alive through one.
pub type DeviceRef = Arc<dyn Device>;
