//! Data movement that needs no arithmetic: strided copy (transpose, slice, contiguous,
//! broadcast materialisation), concat and fill.
//!
//! Copies move raw elements, so they dispatch on the element *size* only (u8/u16/u32 words),
//! not on the dtype.

use manychips_api::Layout;

use super::plan::{MIN_CHUNK, Plan};

/// A plain old element of some size: what a copy moves.
pub(crate) trait Word: bytemuck::Pod + Send + Sync {}
impl Word for u8 {}
impl Word for u16 {}
impl Word for u64 {}
impl Word for u32 {}

/// Side of the square tiles a transpose is copied in: small enough that a tile's input
/// rows stay in L1 while the output rows are written.
const TILE: usize = 32;

/// `out = input` between layouts of one shape.
pub(crate) fn copy<T: Word>((a, al): (&[T], &Layout), (out, ol): (&mut [T], &Layout)) {
    let plan = Plan::new(ol.dims(), [ol, al]);
    let [so, sa] = plan.inner_strides();
    if so == 1 && sa > 1 && transpose(&plan, a, out) {
        return;
    }
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo, oa], len| {
            if (so, sa) == (1, 1) || len == 1 {
                out[oo..oo + len].copy_from_slice(&a[oa..oa + len]);
            } else if so == 1 && sa == 0 {
                out[oo..oo + len].fill(a[oa]);
            } else {
                for i in 0..len {
                    out[oo + i * so] = a[oa + i * sa];
                }
            }
        },
    );
}

/// A transpose (the output's rows are the input's columns): copied tile by tile, so both
/// sides are read and written in cache-sized pieces instead of one of them with a stride
/// per element. Returns false (nothing done) for other layouts.
fn transpose<T: Word>(plan: &Plan<2>, a: &[T], out: &mut [T]) -> bool {
    let Some((rows, cols, [_, sa])) = plan.rows() else { return false };
    let [ro, ra] = rows.inner_strides();
    if ra != 1 || cols < TILE / 2 || rows.numel() < 2 {
        return false;
    }
    rows.run(
        out,
        (MIN_CHUNK / cols).max(1),
        || (),
        |_, out, [oo, oa], n| {
            for r0 in (0..n).step_by(TILE) {
                let r1 = (r0 + TILE).min(n);
                for c0 in (0..cols).step_by(TILE) {
                    let c1 = (c0 + TILE).min(cols);
                    for r in r0..r1 {
                        let dst = &mut out[oo + r * ro + c0..oo + r * ro + c1];
                        for (c, d) in (c0..c1).zip(dst) {
                            *d = a[oa + r + c * sa];
                        }
                    }
                }
            }
        },
    );
    true
}

/// Sets every element of `out` to `value`.
pub(crate) fn fill<T: Word>((out, ol): (&mut [T], &Layout), value: T) {
    let plan = Plan::new(ol.dims(), [ol]);
    let [so] = plan.inner_strides();
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo], len| {
            if so == 1 || len == 1 {
                out[oo..oo + len].fill(value);
            } else {
                for i in 0..len {
                    out[oo + i * so] = value;
                }
            }
        },
    );
}

/// Concatenation along `axis`: each input is a copy into its slice of `out`.
pub(crate) fn concat<T: Word>(
    inputs: &[(&[T], &Layout)],
    (out, ol): (&mut [T], &Layout),
    axis: usize,
) {
    let mut start = 0;
    for &(a, al) in inputs {
        let len = al.dims()[axis];
        if len > 0 && al.numel() > 0 {
            copy((a, al), (out, &ol.narrowed(axis, start, len)));
        }
        start += len;
    }
}
