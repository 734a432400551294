//! `lower`: one module per op family.

mod elementwise;
mod index;
mod matmul;
mod movement;
mod reduce;
mod sort;

use manychips_api::{Error, Op, Result, View};

pub use elementwise::FUSED_INPUTS;

use crate::params::Strided;
use crate::{Features, Lowered};

pub(crate) fn lower(op: &Op, f: &Features) -> Result<Lowered> {
    check_limits(op, f)?;
    check_dtypes(op)?;
    if op.output().numel() == 0 {
        return Ok(Lowered::default());
    }
    let plain = |dispatches| Ok(Lowered { temporaries: Vec::new(), dispatches });
    match op {
        Op::Matmul { .. } => plain(matmul::lower(op, f)?),
        Op::Binary { .. }
        | Op::Compare { .. }
        | Op::Unary { .. }
        | Op::Affine { .. }
        | Op::Cast { .. }
        | Op::Where { .. } => plain(elementwise::lower(op, f)?),
        Op::Copy { .. } | Op::Concat { .. } | Op::Fill { .. } => plain(movement::lower(op, f)?),
        Op::Reduce { .. } | Op::Softmax { .. } => plain(reduce::lower(op, f)?),
        Op::FusedReduce { .. } if fuses(op) => plain(reduce::lower(op, f)?),
        Op::IndexSelect { .. }
        | Op::Gather { .. }
        | Op::IndexAdd { .. }
        | Op::ScatterAdd { .. }
        | Op::Scatter { .. } => index::lower(op, f),
        Op::ArgSort { .. } => sort::lower(op, f),
        Op::Fused { .. } if fuses(op) => plain(elementwise::lower(op, f)?),
        // More inputs than one kernel takes: the devices run its decomposition
        // (`manychips_api::fused::decompose`) before it gets here.
        // No attention kernel yet: the devices run `manychips_api::attention::decompose`.
        Op::Attention { .. } | Op::AttentionBackward { .. } => Err(Error::InvalidArgument {
            op: op.name(),
            device: "wgsl".into(),
            detail: format!("attention has no WGSL kernel; {}", op.describe()),
        }),
        Op::Fused { .. } | Op::FusedReduce { .. } => Err(Error::InvalidArgument {
            op: op.name(),
            device: "wgsl".into(),
            detail: format!(
                "a fused program of more than {} inputs has no WGSL kernel; {}",
                elementwise::FUSED_INPUTS,
                op.describe()
            ),
        }),
    }
}

/// Every view must have a dtype of [`crate::DTYPES`]: WGSL has no 64-bit integers, so an
/// `I64` view is refused here (devices leave it out of their dtypes, so validation against
/// those refuses it first).
fn check_dtypes(op: &Op) -> Result<()> {
    let views = op.inputs().into_iter().chain(std::iter::once(op.output()));
    match views.map(|v| v.dtype).find(|d| !crate::DTYPES.contains(d)) {
        None => Ok(()),
        Some(dtype) => Err(Error::UnsupportedDType {
            op: op.name(),
            device: "wgsl".into(),
            dtype,
            detail: format!(" (WGSL has no 64-bit integers); {}", op.describe()),
        }),
    }
}

/// Whether `op` (an `Op::Fused` or `Op::FusedReduce`) gets a kernel of its own; else the
/// device runs its decomposition into primitive ops.
pub fn fuses(op: &Op) -> bool {
    matches!(op, Op::Fused { inputs, .. } | Op::FusedReduce { inputs, .. }
        if inputs.len() <= elementwise::FUSED_INPUTS)
}

/// Every view must lie inside one storage binding (the kernels index in 32 bits, and a
/// binding cannot exceed the device's limit).
fn check_limits(op: &Op, f: &Features) -> Result<()> {
    let limit = f.max_storage_binding.min(u32::MAX as u64 + 1);
    for v in op.inputs().into_iter().chain(std::iter::once(op.output())) {
        let end = v.byte_end().map(|e| e as u64);
        match end {
            Some(end) if end <= limit => {}
            _ => {
                return Err(Error::InvalidArgument {
                    op: op.name(),
                    device: "wgsl".into(),
                    detail: format!(
                        "view {v:?} spans {} bytes, more than the device binds at once \
                         ({limit} bytes); split the op; {}",
                        end.map_or("too many".to_string(), |e| e.to_string()),
                        op.describe()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Loop iterations one invocation may run in all: llvmpipe (lavapipe) silently ends every
/// loop of an invocation once their iterations add up to 65535, so ops whose per-invocation
/// loops would run longer are refused (a planner splits them) rather than answered wrong.
pub(crate) const MAX_LOOP_ITERATIONS: usize = 60_000;

pub(crate) fn too_long(op: &Op, what: &str, len: usize, limit: usize) -> Error {
    Error::InvalidArgument {
        op: op.name(),
        device: "wgsl".into(),
        detail: format!(
            "{what} of {len} is longer than one dispatch handles ({limit}); split the op; {}",
            op.describe()
        ),
    }
}

/// A view's place in an iteration space of its own dims.
pub(crate) fn strided(v: &View) -> Strided {
    Strided::new(v.layout.offset, v.layout.strides.clone())
}

/// Bits of the value 1 in `dtype` (what a comparison stores for true).
pub(crate) fn one_bits(dtype: manychips_api::DType) -> Result<u32> {
    use manychips_api::DType;
    match dtype {
        DType::F32 => Ok(1.0f32.to_bits()),
        DType::F16 => Ok(0x3c00),
        DType::BF16 => Ok(0x3f80),
        DType::U32 | DType::U8 | DType::I32 => Ok(1),
        DType::I64 => Err(crate::kernel::no_64_bit()),
    }
}

#[cfg(test)]
mod tests;
