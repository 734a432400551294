//! manychips: one API over a mixed fleet of accelerators.
//!
//! Tensors live on a [`Device`] (CPU, Vulkan, wgpu, CUDA, or a third party's chip behind the
//! same trait); every op is a value of the closed [`Op`] enum that any device runs. The
//! [`conformance`] kit checks a device against an f64 host reference.

pub mod conformance;
mod discover;
mod tensor;

pub use discover::devices;
pub use manychips_api::*;
pub use manychips_cpu::CpuDevice;
pub use tensor::Tensor;

use std::sync::Arc;

/// A shared handle to a device; tensors keep their device alive through one.
pub type DeviceRef = Arc<dyn Device>;
