//! The manychips CPU backend: the reference device, always built.
//!
//! [`CpuDevice`] implements [`manychips_api::Device`] on host memory. Its shape:
//!
//! - **Queue.** `run`, `write`, `copy` and `free` validate at once and enqueue; a single
//!   worker thread executes the queue in order (`worker.rs`). `read` and `synchronize` wait,
//!   and return the first error the queued work raised (an index out of range, a failed
//!   allocation).
//! - **Memory.** The worker owns every buffer (`storage.rs`); freed buffers are pooled by
//!   size and reused, since fresh pages cost more than most ops.
//! - **Kernels.** Every op of the contract on every dtype it allows (`kernels/`): gemm for
//!   matmul, strided iteration with contiguous fast paths for elementwise ops, SIMD loops
//!   compiled for baseline x86-64 and AVX2 and picked at run time, all running on the
//!   device's own rayon pool.
//!
//! Float arithmetic happens in f32 (f16 and bf16 round to nearest-even on store); sums and
//! softmax normalisers accumulate in f64 across blocks.

mod device;
mod element;
mod kernels;
mod storage;
mod sysinfo;
mod worker;

pub use device::CpuDevice;
