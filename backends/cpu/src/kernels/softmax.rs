//! (Log-)softmax along one axis.
//!
//! The hot case (contiguous f32, last axis: attention scores, logits) runs row by row
//! straight from input to output. Anything else is gathered into f32 scratch with the axis
//! moved last, computed in place there, and scattered back into the output layout.

use manychips_api::Layout;
use rayon::prelude::*;

use super::elementwise::{BLOCK, Map, map};
use super::plan::MIN_CHUNK_HEAVY;
use super::simd;
use crate::element::Elem;
use crate::storage::Scratch;

/// Memory ran out for scratch.
#[derive(Debug)]
pub(crate) struct Oom;

pub(crate) fn softmax<T: Elem>(
    (a, al): (&[T], &Layout),
    (out, ol): (&mut [T], &Layout),
    axis: usize,
    log: bool,
    scratch: &mut Scratch,
) -> Result<(), Oom> {
    let numel = al.numel();
    let len = al.dims()[axis];
    if numel == 0 || len == 0 {
        return Ok(());
    }
    let last = al.dims()[axis + 1..].iter().all(|&d| d == 1);
    if let (Some(src), Some(dst)) = (T::as_f32(a), T::as_f32_mut(out))
        && last
        && al.is_contiguous()
        && ol.is_contiguous()
    {
        let src = &src[al.offset..al.offset + numel];
        let dst = &mut dst[ol.offset..ol.offset + numel];
        let rows = (MIN_CHUNK_HEAVY / len).max(1) * len;
        dst.par_chunks_mut(rows).zip(src.par_chunks(rows)).for_each(|(d, s)| {
            if len < simd::SOFTMAX_LANES {
                simd::softmax_short_rows(s, d, len, log);
                return;
            }
            for (d, s) in d.chunks_exact_mut(len).zip(s.chunks_exact(len)) {
                row(s, d, log);
            }
        });
        return Ok(());
    }
    let mut perm: Vec<usize> = (0..al.rank()).filter(|&d| d != axis).collect();
    perm.push(axis);
    let (pa, po) = (al.permuted(&perm), ol.permuted(&perm));
    let contiguous = Layout::contiguous(pa.shape.clone());
    let buf = scratch.f32s(numel).ok_or(Oom)?;
    map::<T, f32>(Map::Identity, (a, &pa), (buf, &contiguous));
    let rows = (MIN_CHUNK_HEAVY / len).max(1) * len;
    buf.par_chunks_mut(rows).for_each(|c| {
        for r in c.chunks_exact_mut(len) {
            row_inplace(r, log);
        }
    });
    map::<f32, T>(Map::Identity, (buf, &contiguous), (out, &po));
    Ok(())
}

/// Softmax of one row. The exponentials are summed per block in f32 and across blocks in
/// f64, so long rows keep their accuracy.
fn row(src: &[f32], dst: &mut [f32], log: bool) {
    let m = simd::max(src);
    if log {
        let s: f64 = src.chunks(BLOCK).map(|c| simd::exp_sub_sum(c, m) as f64).sum();
        simd::sub2(src, dst, m, s.ln() as f32);
    } else {
        let s: f64 = src
            .chunks(BLOCK)
            .zip(dst.chunks_mut(BLOCK))
            .map(|(s, d)| simd::exp_sub_store(s, d, m) as f64)
            .sum();
        simd::scale(dst, (1.0 / s) as f32);
    }
}

fn row_inplace(x: &mut [f32], log: bool) {
    let m = simd::max(x);
    if log {
        let s: f64 = x.chunks(BLOCK).map(|c| simd::exp_sub_sum(c, m) as f64).sum();
        simd::sub2_inplace(x, m, s.ln() as f32);
    } else {
        let s: f64 = x.chunks_mut(BLOCK).map(|c| simd::exp_sub_inplace(c, m) as f64).sum();
        simd::scale(x, (1.0 / s) as f32);
    }
}
