//! Sorting along an axis: `argsort` is one op (`Op::ArgSort`, stable, NaNs after +∞ as numpy
//! and PyTorch order them, first when descending); `sort` and `topk` gather by its result.

use super::Tensor;
use super::axis::Axis;
use crate::{DType, Op, Result};

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
        let out = self.output("argsort", self.shape().clone(), DType::U32)?;
        out.enqueue(Op::ArgSort { input: self.view(), out: out.view(), axis, descending })?;
        // Positions along the axis by construction: `sort` and `topk` gather by them
        // without reading them back to check.
        let last = self.dims()[axis].saturating_sub(1);
        Ok(out.with_index_range(0, i64::try_from(last).unwrap_or(i64::MAX)))
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
        // Positions along the axis, as argsort's: no read-back to check them in a gather.
        let order = self.argsort(axis, largest)?.narrow(axis, 0, k)?.contiguous()?;
        let last = i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX);
        let order = order.with_index_range(0, last);
        Ok((self.gather(axis, &order)?, order))
    }
}
