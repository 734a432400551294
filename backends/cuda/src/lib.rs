//! The manychips CUDA backend.
//!
//! [`discover`] finds the CUDA devices through the driver API (cudarc, with libcuda, NVRTC
//! and cuBLAS loaded at run time, so this crate builds and links everywhere and reports zero
//! devices, with the reason, where there is no driver). Each [`CudaDevice`] runs every op of
//! the contract with the kernels of `kernels/cuda`, compiled by NVRTC for its compute
//! capability (cached in memory and on disk), and sends matmul to cuBLAS
//! (`cublasGemmStridedBatchedEx`, f32 accumulation) where the layout allows it.
//!
//! [`CudaDevice::emulated`] is the same backend over host memory with the kernels
//! interpreted: the whole host side runs, and is tested, where there is no GPU.

mod device;
mod discover;
mod driver;
mod emulator;
mod engine;
mod error;
mod fused;
mod gemm;
mod kernels;
mod libs;
mod locate;
mod lower;
mod nvrtc;
mod params;

pub use device::{CudaDevice, Staging};
pub use discover::discover;
pub use libs::libraries;
pub use locate::LIB_PATH_ENV;
pub use lower::{MatmulPath, ScatterKernel};

use manychips_api::DType;

/// The env var that overrides the cache directory (shared with the planner's calibration
/// cache); compiled kernels go into its `cuda-kernels` subdirectory.
pub const CACHE_DIR_ENV: &str = "MANYCHIPS_CACHE_DIR";

/// Set to `1` to run f32 GEMMs in TF32 on tensor cores (much faster, about 10 bits of
/// mantissa); off by default. Per device: [`CudaDevice::set_tf32`].
pub const TF32_ENV: &str = "MANYCHIPS_CUDA_TF32";

/// Set to `1` to move host transfers straight from pageable memory instead of through pinned
/// staging buffers. Per device: [`CudaDevice::set_staging`].
pub const PAGEABLE_ENV: &str = "MANYCHIPS_CUDA_PAGEABLE";

/// The dtypes a CUDA device computes: every one (f16 and bf16 natively stored, computed in
/// f32; integers, i64 included, computed exactly).
pub(crate) fn dtypes() -> Vec<DType> {
    DType::ALL.to_vec()
}
