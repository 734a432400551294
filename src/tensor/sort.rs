//! Sorting along an axis (`sort`, `argsort`, `topk`), built from ops every backend has: a
//! bitonic sorting network (Batcher's) of compare-exchange steps on views, ⌈log₂ n⌉·(⌈log₂ n⌉
//! + 1)/2 of them, each a few elementwise ops over the whole tensor.
//!
//! Every element gets a key whose integer order is the sort order, and the pairs (key,
//! position) are sorted, so the sort is stable and exact whatever the dtype: integers are
//! their own keys; a float's key is its bits rearranged so that unsigned order is numeric
//! order, with every NaN after +∞ (numpy's and PyTorch's order; descending puts them first,
//! as PyTorch does). The axis is padded to a power of two with keys that sort last.
//!
//! A native kernel would do the same work in one pass; these ops are the meaning it would
//! have to match.

use super::Tensor;
use super::axis::Axis;
use crate::{DType, Result};

impl Tensor {
    /// The elements along `axis` in ascending order (descending where `descending`), and
    /// where each came from (`u32`). Stable: equal elements keep their order. NaNs sort after
    /// +∞, or first when descending.
    pub fn sort(&self, axis: impl Axis, descending: bool) -> Result<(Tensor, Tensor)> {
        let axis = self.axis(axis, "sort")?;
        let order = self.argsort(axis, descending)?;
        Ok((self.gather(axis, &order)?, order))
    }

    /// The positions (`u32`) that sort `axis`, as [`sort`](Self::sort) orders it.
    pub fn argsort(&self, axis: impl Axis, descending: bool) -> Result<Tensor> {
        let axis = self.axis(axis, "argsort")?;
        let last = self.rank() - 1;
        let moved = self.transpose(axis, last)?.contiguous()?;
        let order = sorted_positions(&moved, descending)?;
        order.transpose(axis, last)?.contiguous()
    }

    /// The `k` largest elements along `axis` (the smallest where `!largest`), in order, and
    /// their positions (`u32`); among equal elements the first ones. NaNs count as largest.
    pub fn topk(&self, k: usize, axis: impl Axis, largest: bool) -> Result<(Tensor, Tensor)> {
        let axis = self.axis(axis, "topk")?;
        let n = self.dims()[axis];
        if k > n {
            return Err(crate::Error::InvalidArgument {
                op: "topk".into(),
                device: super::label(self.device()),
                detail: format!("k = {k} of axis {axis} of {}, which has {n}", self.describe()),
            });
        }
        let order = self.argsort(axis, largest)?.narrow(axis, 0, k)?.contiguous()?;
        Ok((self.gather(axis, &order)?, order))
    }
}

/// The sorting positions along the last axis of the contiguous `x`.
fn sorted_positions(x: &Tensor, descending: bool) -> Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(1);
    let rows = x.numel() / n.max(1);
    if n <= 1 || rows == 0 {
        return Tensor::zeros(x.shape().clone(), DType::U32, x.device());
    }
    let m = n.next_power_of_two();
    let keys = sort_keys(&x.reshape([rows, n])?, descending)?;
    // Padding sorts last: the largest key, at positions past every real one.
    let pad = Tensor::full(key_max(keys.dtype()), [rows, m - n], keys.dtype(), x.device())?;
    let mut keys = Tensor::cat(&[&keys, &pad], 1)?;
    let positions = Tensor::arange(m, DType::U32, x.device())?.reshape([1, m])?;
    let mut at = positions.expand([rows, m])?.contiguous()?;
    let mut k = 2;
    while k <= m {
        (keys, at) = flip_merge(&keys, &at, k)?;
        let mut j = k / 4;
        while j >= 1 {
            (keys, at) = half_clean(&keys, &at, j)?;
            j /= 2;
        }
        k *= 2;
    }
    at.narrow(1, 0, n)?.reshape(x.shape().clone())
}

/// Keys whose integer order is the wanted order of `x`'s rows.
fn sort_keys(x: &Tensor, descending: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    let scalar = |v: f64, dt: DType| Tensor::full(v, [1], dt, x.device());
    let keys = if dtype.is_float() {
        // +0.0 turns −0.0 into +0.0, so the two are equal (and keep their order).
        let f = x.cast(DType::F32)?.add(&scalar(0.0, DType::F32)?)?;
        let bits = f.contiguous()?.bitcast(DType::U32)?;
        let sign = scalar(2f64.powi(31), DType::U32)?;
        let max = scalar(key_max(DType::U32), DType::U32)?;
        // Negative floats order backwards by their bits: flip them all; lift the positive.
        let ordered = bits.ge(&sign)?.where_cond(&max.sub(&bits)?, &bits.add(&sign)?)?;
        f.ne(&f)?.where_cond(&max, &ordered)?
    } else {
        x.clone()
    };
    if !descending {
        return Ok(keys);
    }
    // All ones minus the key reverses the order of every integer type (wrapping: for signed
    // ones it is −1 − key, the bitwise complement).
    let ones = if keys.dtype().is_signed_int() { -1.0 } else { key_max(keys.dtype()) };
    scalar(ones, keys.dtype())?.sub(&keys)
}

/// The largest value of an integer key dtype (as `Fill` takes it: 2^63 saturates to
/// `i64::MAX`).
fn key_max(dtype: DType) -> f64 {
    dtype.int_range().map_or(0.0, |(_, hi)| hi as f64)
}

/// The first step of merging sorted runs of `k / 2` into runs of `k`: element `i` of each
/// block of `k` against element `k - 1 - i`.
fn flip_merge(keys: &Tensor, at: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, m) = (keys.dims()[0], keys.dims()[1]);
    let half = k / 2;
    let backwards: Vec<u32> = (0..half as u32).rev().collect();
    let reverse = Tensor::from_slice(&backwards, [half], keys.device())?;
    let blocks = |t: &Tensor| t.reshape([rows, m / k, k]);
    let (kb, ab) = (blocks(keys)?, blocks(at)?);
    let lo = (kb.narrow(2, 0, half)?, ab.narrow(2, 0, half)?);
    let hi = (
        kb.narrow(2, half, half)?.index_select(2, &reverse)?,
        ab.narrow(2, half, half)?.index_select(2, &reverse)?,
    );
    let ((klo, alo), (khi, ahi)) = compare_exchange(lo, hi)?;
    let keys = Tensor::cat(&[&klo, &khi.index_select(2, &reverse)?], 2)?;
    let at = Tensor::cat(&[&alo, &ahi.index_select(2, &reverse)?], 2)?;
    Ok((keys.reshape([rows, m])?, at.reshape([rows, m])?))
}

/// Element `i` of each block of `2j` against element `i + j`.
fn half_clean(keys: &Tensor, at: &Tensor, j: usize) -> Result<(Tensor, Tensor)> {
    let (rows, m) = (keys.dims()[0], keys.dims()[1]);
    let blocks = |t: &Tensor| t.reshape([rows, m / (2 * j), 2 * j]);
    let (kb, ab) = (blocks(keys)?, blocks(at)?);
    let lo = (kb.narrow(2, 0, j)?, ab.narrow(2, 0, j)?);
    let hi = (kb.narrow(2, j, j)?, ab.narrow(2, j, j)?);
    let ((klo, alo), (khi, ahi)) = compare_exchange(lo, hi)?;
    let keys = Tensor::cat(&[&klo, &khi], 2)?;
    let at = Tensor::cat(&[&alo, &ahi], 2)?;
    Ok((keys.reshape([rows, m])?, at.reshape([rows, m])?))
}

type Pairs = (Tensor, Tensor);

/// Puts the smaller (key, position) of each pair of `lo` and `hi` in `lo`. Positions are
/// distinct, so the order is total.
fn compare_exchange((klo, alo): Pairs, (khi, ahi): Pairs) -> Result<(Pairs, Pairs)> {
    let later = klo.eq(&khi)?.mul(&alo.gt(&ahi)?)?;
    let swap = klo.gt(&khi)?.maximum(&later)?;
    let lo = (swap.where_cond(&khi, &klo)?, swap.where_cond(&ahi, &alo)?);
    let hi = (swap.where_cond(&klo, &khi)?, swap.where_cond(&alo, &ahi)?);
    Ok((lo, hi))
}
