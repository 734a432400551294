//! The GPU kernel library shared by the Vulkan (ash) and wgpu backends.
//!
//! One WGSL source per op family lives in `kernels/wgsl/`; this crate specialises it per
//! dtype and shape class and lowers an [`Op`] into [`Dispatch`]es. A host backend only has to
//! own buffers, compile a pipeline per [`Dispatch::key`], bind, and dispatch in order — it
//! never needs to know what an op means.
//!
//! Conventions every host follows:
//! - Storage buffers are allocated rounded up to a multiple of 16 bytes (some kernels bind
//!   f32 data as `array<vec4<u32>>`); 16-bit and 8-bit dtypes are stored packed in `u32`
//!   words, so hosts move bytes only.
//! - `@group(0) @binding(i)` for `i < bindings.len()` are the storage buffers of
//!   [`Dispatch::bindings`] (whole buffers, or temporaries), in order; if [`Dispatch::params`]
//!   is not empty it is a uniform buffer at `@binding(bindings.len())`. A buffer larger than
//!   [`Features::max_storage_binding`] may be bound as its first that many bytes: `lower`
//!   refuses views that end past it.
//! - Dispatches of one lowered op run in order, each seeing the writes of the previous ones
//!   (hosts insert the barriers: wgpu does so itself between dispatches, Vulkan needs a
//!   compute→compute memory barrier).
//! - [`Slot::Status`] is one small per-device buffer of [`STATUS_BYTES`], zeroed at creation:
//!   kernels that read index values flag a value out of range there (see [`bad_index`] for
//!   the words) instead of touching memory outside the view. Hosts check it at
//!   `synchronize`/`read`, report `Error::IndexOutOfRange` with [`bad_index`]'s description,
//!   and zero it again.
//! - Kernels keep every invocation's loops under 65535 iterations in all (llvmpipe silently
//!   ends loops beyond that): long scatter axes become several dispatches, and a matmul
//!   inner dimension or a reduction row too long for that is an `Err` asking to split the op.
//! - The WGSL uses no optional feature (16-bit and 8-bit types are converted with integer
//!   bit operations), so every dtype lowers on every adapter.

mod calibrate;
mod kernel;
mod lower;
mod params;
mod template;

use std::sync::Arc;

use manychips_api::{BufferId, DType, Op, Result};

pub use calibrate::pick_matmul_kernel;
pub use lower::{FUSED_INPUTS, fuses};
pub use params::{MAX_RANK, WORDS as PARAM_WORDS};

/// Size in bytes of the status buffer ([`Slot::Status`]).
pub const STATUS_BYTES: u64 = 16;

/// The dtypes the kernels compute: every one but `I64`, since WGSL has no 64-bit integers
/// (`lower` refuses an op with an `I64` view). A host's `DeviceInfo::dtypes`.
pub const DTYPES: [DType; 6] =
    [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8, DType::I32];

/// What the status buffer's words (little-endian, [`STATUS_BYTES`] of them) say, or `None`
/// when no index was out of range. Word 0 has bit 0 set when an unsigned (u32) index value
/// was out of range and bit 1 when a signed (i32) one was; word 1 holds the largest such
/// unsigned value, word 2 the largest such signed value plus 2^31 (so that the kernels'
/// unsigned `atomicMax` orders signed values), word 3 the length of the longest axis a bad
/// value was checked against.
pub fn bad_index(status: &[u8]) -> Option<String> {
    let word = |i: usize| {
        let bytes = status.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    let flags = word(0).unwrap_or(0);
    if flags == 0 {
        return None;
    }
    let mut values = Vec::new();
    if flags & 1 != 0 {
        values.push(word(1).unwrap_or(0).to_string());
    }
    if flags & 2 != 0 {
        values.push(((word(2).unwrap_or(0) ^ 0x8000_0000) as i32).to_string());
    }
    let value = match values.as_slice() {
        [one] => format!("index value {one} (the largest bad one)"),
        both => format!("index values {} (the largest bad u32 and i32 ones)", both.join(" and ")),
    };
    Some(format!(
        "{value} out of range for an axis of length {} (negative values count from the \
         end; with several ops, the longest axis); elements with bad indices were skipped",
        word(3).unwrap_or(0)
    ))
}

/// What the device offers that changes how ops are lowered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// WGSL `enable f16;` works (Vulkan shaderFloat16 + 16-bit storage).
    pub shader_f16: bool,
    /// Largest storage-buffer binding in bytes (lavapipe: 128 MiB).
    pub max_storage_binding: u64,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Which matmul kernel to use (picked per device, e.g. by calibration).
    pub matmul: MatmulKernel,
    /// The driver runs invocations on CPU cores (lavapipe). A workgroup barrier costs far
    /// more there than on a GPU, so reductions and softmax give rows of moderate length one
    /// invocation each instead of a workgroup (softmax over 4096×1024 on lavapipe: 16 ms
    /// against 194 ms).
    pub cpu_backed: bool,
}

/// The matmul kernel variants; all pass the conformance kit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulKernel {
    /// One output per invocation; kept as the bench baseline.
    Naive,
    /// Several outputs per invocation held in registers (16×16 on outputs of at least
    /// 128×128, 4×4 on smaller ones), vector loads, no barriers: best on CPU-like drivers
    /// (lavapipe).
    RegisterBlocked,
    /// Workgroup shared-memory tiles with barriers (128×256 outputs per workgroup of 256
    /// invocations, 8×16 each): best on real GPUs.
    SharedTiles,
}

/// A storage buffer a dispatch binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A buffer of the op's views (bound whole; element offsets travel in the params).
    Buffer(BufferId),
    /// Temporary `i` of [`Lowered::temporaries`], alive for the whole lowered op.
    Temporary(usize),
    /// The device's status buffer (see the crate docs), always bound writable.
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    pub slot: Slot,
    /// Whether the kernel writes it (read-only bindings may be bound as such).
    pub writable: bool,
}

/// One compute dispatch.
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// Equal keys mean equal `source` and `entry`: the host's pipeline cache key.
    pub key: Arc<str>,
    /// The specialised WGSL source (shared, cheap to clone).
    pub source: Arc<str>,
    pub entry: &'static str,
    pub bindings: Vec<Binding>,
    /// The uniform block, as 32-bit words (floats bit-cast); empty for none.
    pub params: Vec<u32>,
    pub workgroups: [u32; 3],
}

/// An op lowered to dispatches, with the scratch buffers they share.
#[derive(Clone, Debug, Default)]
pub struct Lowered {
    /// Sizes in bytes of temporary storage buffers the host allocates for this op.
    pub temporaries: Vec<u64>,
    pub dispatches: Vec<Dispatch>,
}

/// Lowers one validated op (see `Op::validate`) for a device with `features`. An op the
/// kernels cannot express on this device (e.g. a buffer past `max_storage_binding`) is an
/// `Err` naming the op, never a silent wrong answer.
///
/// The uniform block ([`Dispatch::params`]) is always [`PARAM_WORDS`] words (256 bytes).
pub fn lower(op: &Op, features: &Features) -> Result<Lowered> {
    lower::lower(op, features)
}
