//! `McParams`, the parameter block every kernel takes by value (kernels/cuda/common.cuh), and
//! the strided iteration spaces it describes.

use manychips_api::{Error, Op, Result};
pub(crate) use manychips_api::{Strided, coalesce};

/// Dims of an iteration space after [`coalesce`].
pub(crate) const MAX_RANK: usize = 8;
/// Operands one parameter block describes.
pub(crate) const MAX_OPERANDS: usize = 4;
/// Per-family words (`ext`).
pub(crate) const EXT: usize = 12;

/// One operand's place in the iteration space: element offset and a stride per dim.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct McOperand {
    pub offset: u64,
    pub strides: [u64; MAX_RANK],
}

/// The Rust mirror of `McParams` in common.cuh: 472 bytes, 8-aligned, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct McParams {
    /// Work items; the product of `dims[..rank]`.
    pub count: u64,
    pub rank: u32,
    /// Fill: the value's bit pattern, zero-extended.
    pub bits: u32,
    /// Affine: `mul as f32`.
    pub mul: f32,
    /// Affine: `add as f32`.
    pub add: f32,
    pub dims: [u64; MAX_RANK],
    pub ops: [McOperand; MAX_OPERANDS],
    pub ext: [u64; EXT],
}

/// Size of `McParams` as the kernels declare it (`static_assert` in common.cuh).
pub(crate) const PARAMS_BYTES: usize = 472;

// The kernels `static_assert` the same size; a mismatch is a build error here too.
const _: () = assert!(std::mem::size_of::<McParams>() == PARAMS_BYTES);
const _: () = assert!(std::mem::align_of::<McParams>() == 8);

impl McParams {
    /// The block's bytes, as the kernel receives them.
    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `McParams` is `repr(C)` with only u64/u32/f32 fields laid out without
        // padding (the tests pin every offset and the size), so all its bytes are initialised.
        unsafe { std::slice::from_raw_parts((self as *const McParams).cast::<u8>(), PARAMS_BYTES) }
    }

    /// The element offsets of the first `n` operands at work item `g` (`mc_offsets`).
    pub fn offsets(&self, g: u64, n: usize) -> [u64; MAX_OPERANDS] {
        let mut o = [0u64; MAX_OPERANDS];
        for (k, slot) in o.iter_mut().enumerate().take(n) {
            *slot = self.ops[k].offset;
        }
        let mut rem = g;
        for d in (0..self.rank as usize).rev() {
            let n_d = self.dims[d];
            let i = rem % n_d;
            rem /= n_d;
            for (k, slot) in o.iter_mut().enumerate().take(n) {
                *slot = slot.wrapping_add(i.wrapping_mul(self.ops[k].strides[d]));
            }
        }
        o
    }
}

/// Builds the block for an iteration over `dims` (count = their product) of `ops`.
pub(crate) fn strided(op: &Op, dims: &[usize], ops: &[Strided]) -> Result<McParams> {
    let count: usize = dims.iter().product();
    let (dims, ops) = coalesce(dims, ops);
    if dims.len() > MAX_RANK || ops.len() > MAX_OPERANDS {
        return Err(Error::InvalidArgument {
            op: op.name(),
            device: "cuda".into(),
            detail: format!(
                "{} strided dims remain after merging what could be merged (the kernels take \
                 {MAX_RANK}); make an operand contiguous first; {}",
                dims.len(),
                op.describe()
            ),
        });
    }
    let mut p = McParams { count: count as u64, rank: dims.len() as u32, ..McParams::default() };
    for (d, &n) in dims.iter().enumerate() {
        p.dims[d] = n as u64;
    }
    for (k, s) in ops.iter().enumerate() {
        p.ops[k].offset = s.offset as u64;
        for (d, &st) in s.strides.iter().enumerate() {
            p.ops[k].strides[d] = st as u64;
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use super::*;

    /// The offsets kernels/cuda/README.md and common.cuh document.
    #[test]
    fn params_layout_matches_common_cuh() {
        assert_eq!(size_of::<McOperand>(), 72);
        assert_eq!(offset_of!(McOperand, offset), 0);
        assert_eq!(offset_of!(McOperand, strides), 8);
        assert_eq!(size_of::<McParams>(), PARAMS_BYTES);
        assert_eq!(align_of::<McParams>(), 8);
        assert_eq!(offset_of!(McParams, count), 0);
        assert_eq!(offset_of!(McParams, rank), 8);
        assert_eq!(offset_of!(McParams, bits), 12);
        assert_eq!(offset_of!(McParams, mul), 16);
        assert_eq!(offset_of!(McParams, add), 20);
        assert_eq!(offset_of!(McParams, dims), 24);
        assert_eq!(offset_of!(McParams, ops), 88);
        assert_eq!(offset_of!(McParams, ext), 376);
        assert_eq!(offset_of!(McParams, ext) + EXT * 8, PARAMS_BYTES);
    }

    #[test]
    fn bytes_are_the_fields_in_order() {
        let mut p =
            McParams { count: 0x0102_0304_0506_0708, rank: 3, bits: 0xabcd, ..Default::default() };
        p.mul = 2.0;
        p.dims[1] = 7;
        p.ops[2].offset = 9;
        p.ops[2].strides[7] = 11;
        p.ext[11] = 13;
        let b = p.as_bytes();
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), 0x0102_0304_0506_0708);
        assert_eq!(half(8), 3);
        assert_eq!(half(12), 0xabcd);
        assert_eq!(half(16), 2.0f32.to_bits());
        assert_eq!(word(24 + 8), 7);
        assert_eq!(word(88 + 72 * 2), 9);
        assert_eq!(word(88 + 72 * 2 + 8 + 7 * 8), 11);
        assert_eq!(word(376 + 11 * 8), 13);
    }

    #[test]
    fn coalesces_contiguous_and_drops_unit_dims() {
        let a = Strided::new(0, vec![12, 4, 1]);
        let b = Strided::new(3, vec![0, 0, 1]);
        let (dims, ops) = coalesce(&[2, 3, 4], std::slice::from_ref(&a));
        assert_eq!((dims, ops[0].strides.clone()), (vec![24], vec![1]));
        let (dims, ops) = coalesce(&[2, 3, 4], &[a, b]);
        assert_eq!(dims, vec![6, 4]);
        assert_eq!(ops[1], Strided::new(3, vec![0, 1]));
        let (dims, _) = coalesce(&[1, 1], &[Strided::new(0, vec![1, 1])]);
        assert!(dims.is_empty());
    }

    #[test]
    fn offsets_walk_row_major() {
        let op = Op::Fill {
            out: manychips_api::View::new(
                manychips_api::BufferId { device: manychips_api::DeviceId::fresh(), index: 0 },
                manychips_api::Layout::contiguous([1]),
                manychips_api::DType::F32,
            ),
            value: 0.0,
        };
        // A transposed 3x4 view read into a contiguous 3x4 output.
        let p = strided(&op, &[3, 4], &[Strided::new(5, vec![1, 3]), Strided::new(0, vec![4, 1])])
            .unwrap();
        assert_eq!((p.count, p.rank), (12, 2));
        for g in 0..12u64 {
            let (i, j) = (g / 4, g % 4);
            let o = p.offsets(g, 2);
            assert_eq!(o[0], 5 + i + 3 * j);
            assert_eq!(o[1], g);
        }
        // Rank 0: every work item sees the bare offsets.
        let p = strided(&op, &[], &[Strided::new(7, vec![])]).unwrap();
        assert_eq!((p.count, p.rank, p.offsets(0, 1)[0]), (1, 0, 7));
    }
}
