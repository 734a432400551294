//! What the device asks of the machine below it: memory, transfers, kernel launches, GEMMs
//! and waiting. [`crate::driver::CudaEngine`] does it with the CUDA driver and cuBLAS;
//! [`crate::emulator::Emulator`] does it in host memory with the kernels interpreted, so that
//! everything above (validation, lowering, bookkeeping, status words, sticky errors) runs and
//! is tested where there is no GPU.

use crate::error::CuError;
use crate::gemm::GemmCall;
use crate::kernels::Kernel;
use crate::params::McParams;

/// A device address (`CUdeviceptr`).
pub(crate) type Ptr = u64;

/// One kernel launch with its pointers resolved (each the start of an allocation).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LaunchCall<'a> {
    pub kernel: Kernel,
    pub params: &'a McParams,
    pub args: &'a [Ptr],
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

/// One GEMM with its buffers resolved: `ptrs[v]` is the start of the buffer of view `v`
/// (lhs, rhs, out) that `GemmOperand::view` names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmArgs {
    pub call: GemmCall,
    pub ptrs: [Ptr; 3],
    pub tf32: bool,
}

/// Work is ordered as it is called. `upload`, `copy`, `zero`, `launch` and `gemm` may return
/// before the work is done; `download` and `synchronize` wait for everything called before.
/// `free` releases an allocation once the work called before it is done with it.
pub(crate) trait Engine: Send {
    fn alloc(&mut self, bytes: usize) -> Result<Ptr, CuError>;
    fn free(&mut self, ptr: Ptr) -> Result<(), CuError>;
    /// Copies host bytes to `base + offset` (`base` the start of an allocation).
    fn upload(&mut self, base: Ptr, offset: usize, src: &[u8]) -> Result<(), CuError>;
    fn download(&mut self, base: Ptr, offset: usize, dst: &mut [u8]) -> Result<(), CuError>;
    /// Copies `bytes` between non-overlapping ranges of device memory.
    fn copy(&mut self, src: (Ptr, usize), dst: (Ptr, usize), bytes: usize) -> Result<(), CuError>;
    fn zero(&mut self, base: Ptr, offset: usize, bytes: usize) -> Result<(), CuError>;
    fn launch(&mut self, call: &LaunchCall<'_>) -> Result<(), CuError>;
    fn gemm(&mut self, args: &GemmArgs) -> Result<(), CuError>;
    fn synchronize(&mut self) -> Result<(), CuError>;
    /// (free, total) bytes of device memory.
    fn memory(&mut self) -> Result<(u64, u64), CuError>;
    /// Whether `gemm` is available (cuBLAS loaded).
    fn has_blas(&self) -> bool;
    /// Moves host transfers straight from and to pageable memory (else through pinned
    /// staging buffers).
    fn set_pageable(&mut self, _on: bool) {}
    /// Loads what `kernel` needs (its module), so its first launch does not.
    fn prepare(&mut self, _kernel: Kernel) -> Result<(), CuError> {
        Ok(())
    }
    /// The driver engine, for peer copies between two CUDA devices.
    fn as_driver(&mut self) -> Option<&mut crate::driver::CudaEngine> {
        None
    }
}
