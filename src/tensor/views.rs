//! Shape ops: views that move no data (transpose, narrow, broadcast, reshape of a contiguous
//! tensor) and the data-movement ops (contiguous, cat, index_select, gather, index_add,
//! scatter_add).

use std::sync::Arc;

use super::axis::{Axes, Axis, NewShape, broadcast_shapes, resolve};
use super::{Tensor, label};
use crate::{DType, Error, Layout, Op, Result, ScatterOp, Shape};

impl Tensor {
    /// This tensor with a dense row-major layout (itself when it already has one).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.layout.is_contiguous() {
            return Ok(self.clone());
        }
        let out = self.output("contiguous", self.shape().clone(), self.dtype)?;
        out.enqueue(Op::Copy { input: self.view(), out: out.view() })?;
        Ok(out)
    }

    /// The same elements in row-major order under another shape with as many elements; one
    /// dim of the new shape may be `-1`, inferred from the rest (`reshape([4, -1])`).
    pub fn reshape(&self, shape: impl NewShape) -> Result<Tensor> {
        let shape = self.new_dims(&shape, "reshape")?;
        if shape.numel() != self.numel() {
            return Err(Error::Shape {
                op: "reshape".into(),
                device: label(self.device()),
                detail: format!(
                    "cannot reshape {} ({} elements) to {shape} ({} elements)",
                    self.describe(),
                    self.numel(),
                    shape.numel()
                ),
            });
        }
        if let Some(strides) = view_strides(self.dims(), &self.layout.strides, shape.dims()) {
            let layout = Layout { shape, strides, offset: self.layout.offset };
            return Ok(self.with_layout(layout));
        }
        let dense = self.contiguous()?;
        let offset = dense.layout.offset;
        let mut layout = Layout::contiguous(shape);
        layout.offset = offset;
        Ok(dense.with_layout(layout))
    }

    /// All elements as one dim.
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape([self.numel()])
    }

    /// Swaps two dims (a view).
    pub fn transpose(&self, a: impl Axis, b: impl Axis) -> Result<Tensor> {
        let a = self.axis(a, "transpose")?;
        let b = self.axis(b, "transpose")?;
        Ok(self.with_layout(self.layout.transposed(a, b)))
    }

    /// Swaps the last two dims (a view): the matrix transpose.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::Shape {
                op: "t".into(),
                device: label(self.device()),
                detail: format!("{} has fewer than 2 dims", self.describe()),
            });
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Reorders the dims: new dim `i` is old dim `perm[i]` (a view; `-1` the last).
    pub fn permute(&self, perm: impl Axes) -> Result<Tensor> {
        let perm = self.permutation(&perm)?;
        Ok(self.with_layout(self.layout.permuted(&perm)))
    }

    /// `perm` as positions, if it names every dim exactly once.
    pub(crate) fn permutation(&self, perm: &impl Axes) -> Result<Vec<usize>> {
        let asked = perm.signed();
        let perm: Vec<usize> =
            asked.iter().map(|&a| resolve(a, self.rank()).unwrap_or(usize::MAX)).collect();
        let mut seen = vec![false; self.rank()];
        let valid = perm.len() == self.rank()
            && perm.iter().all(|&p| p < self.rank() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::InvalidArgument {
                op: "permute".into(),
                device: label(self.device()),
                detail: format!(
                    "{asked:?} is not a permutation of the dims of {}",
                    self.describe()
                ),
            });
        }
        Ok(perm)
    }

    /// Entries `start..start + len` of `axis` (a view).
    pub fn narrow(&self, axis: impl Axis, start: usize, len: usize) -> Result<Tensor> {
        let axis = self.axis(axis, "narrow")?;
        let size = self.dims()[axis];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::IndexOutOfRange {
                op: "narrow".into(),
                device: label(self.device()),
                detail: format!(
                    "{start}..{} of axis {axis} (length {size}) of {}",
                    start.saturating_add(len),
                    self.describe()
                ),
            });
        }
        Ok(self.with_layout(self.layout.narrowed(axis, start, len)))
    }

    /// Inserts dims of 1 so that they sit at `axes` of the result (a view; numpy's
    /// `expand_dims`: `unsqueeze(0)`, `unsqueeze(-1)` appends, `unsqueeze([0, 2])`).
    pub fn unsqueeze(&self, axes: impl Axes) -> Result<Tensor> {
        let name = "unsqueeze";
        let asked = axes.signed();
        let rank = self.rank() + asked.len();
        let mut at = Vec::with_capacity(asked.len());
        for a in &asked {
            let p = self.position(*a, rank, name)?;
            if at.contains(&p) {
                return Err(self.axis_twice(name, p, &asked));
            }
            at.push(p);
        }
        at.sort_unstable();
        let mut layout = self.layout.clone();
        let mut dims = layout.shape.dims().to_vec();
        for &p in &at {
            dims.insert(p, 1);
            layout.strides.insert(p, 0);
        }
        layout.shape = Shape::new(dims);
        Ok(self.with_layout(layout))
    }

    /// Removes the dims at `axes`, each of which must be 1 (a view).
    pub fn squeeze(&self, axes: impl Axes) -> Result<Tensor> {
        let name = "squeeze";
        let at = self.axes(&axes, name)?;
        if let Some(&bad) = at.iter().find(|&&a| self.dims()[a] != 1) {
            return Err(Error::Shape {
                op: name.into(),
                device: label(self.device()),
                detail: format!("axis {bad} of {} is not 1", self.describe()),
            });
        }
        Ok(self.without_dims(&at))
    }

    /// Removes every dim of 1 (a view; numpy's `squeeze()`).
    pub fn squeeze_all(&self) -> Result<Tensor> {
        let ones: Vec<usize> = (0..self.rank()).filter(|&a| self.dims()[a] == 1).collect();
        Ok(self.without_dims(&ones))
    }

    /// This view without the dims at `at` (ascending), each of extent 1.
    pub(crate) fn without_dims(&self, at: &[usize]) -> Tensor {
        let mut layout = self.layout.clone();
        let mut dims = layout.shape.dims().to_vec();
        for &a in at.iter().rev() {
            dims.remove(a);
            layout.strides.remove(a);
        }
        layout.shape = Shape::new(dims);
        self.with_layout(layout)
    }

    /// Stretches dims of 1 to `shape` numpy-style (a view with stride 0).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        match self.layout.broadcast_to(&shape) {
            Some(layout) => Ok(self.with_layout(layout)),
            None => Err(Error::Shape {
                op: "broadcast_as".into(),
                device: label(self.device()),
                detail: format!("{} does not broadcast to {shape}", self.describe()),
            }),
        }
    }

    /// Stretches dims of 1 to `shape`, PyTorch's `expand`: a `-1` keeps that dim, and new
    /// leading dims may be added (a view with stride 0).
    pub fn expand(&self, shape: impl NewShape) -> Result<Tensor> {
        let asked = shape.signed();
        let lead = asked.len().checked_sub(self.rank());
        let dims: Option<Vec<usize>> = lead.and_then(|lead| {
            asked
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    -1 if i >= lead => Some(self.dims()[i - lead]),
                    d if d >= 0 => usize::try_from(d).ok(),
                    _ => None,
                })
                .collect()
        });
        let broadcast = dims.and_then(|dims| self.layout.broadcast_to(&Shape::new(dims)));
        match broadcast {
            Some(layout) => Ok(self.with_layout(layout)),
            None => Err(Error::Shape {
                op: "expand".into(),
                device: label(self.device()),
                detail: format!("{} does not expand to {asked:?}", self.describe()),
            }),
        }
    }

    /// Every tensor stretched to their common shape, numpy's broadcasting both ways (views).
    pub fn broadcast_tensors(tensors: &[&Tensor]) -> Result<Vec<Tensor>> {
        let shapes: Vec<&Shape> = tensors.iter().map(|t| t.shape()).collect();
        let common = broadcast_shapes(&shapes).map_err(|e| match tensors.first() {
            Some(t) => e.on_device(&label(t.device())),
            None => e,
        })?;
        tensors.iter().map(|t| t.broadcast_as(common.clone())).collect()
    }

    /// Joins tensors along `axis`; all other dims must agree.
    pub fn cat(tensors: &[&Tensor], axis: impl Axis) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::InvalidArgument {
                op: "cat".into(),
                device: "-".into(),
                detail: "no tensors to concatenate".into(),
            });
        };
        let axis = first.axis(axis, "cat")?;
        let mut dims = first.dims().to_vec();
        dims[axis] = 0;
        for t in tensors {
            first.same_device(t, "cat")?;
            first.same_dtype(t, "cat")?;
            let fits = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(d, (a, b))| d == axis || a == b);
            if !fits {
                return Err(Error::Shape {
                    op: "cat".into(),
                    device: label(first.device()),
                    detail: format!(
                        "{} does not match {} outside axis {axis}",
                        t.describe(),
                        first.describe()
                    ),
                });
            }
            dims[axis] += t.dims()[axis];
        }
        let out = first.output("cat", Shape::new(dims), first.dtype)?;
        out.enqueue(Op::Concat {
            inputs: tensors.iter().map(|t| t.view()).collect(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// Picks entries of `axis` by the `u32` tensor `indices` (embedding lookup; numpy's
    /// `take` along an axis): the result has `indices`' dims in place of `axis`.
    pub fn index_select(&self, axis: impl Axis, indices: &Tensor) -> Result<Tensor> {
        let name = "index_select";
        let axis = self.axis(axis, name)?;
        if indices.rank() != 1 {
            let mut dims = self.dims()[..axis].to_vec();
            dims.extend_from_slice(indices.dims());
            dims.extend_from_slice(&self.dims()[axis + 1..]);
            return self.index_select(axis, &indices.flatten()?)?.reshape(dims);
        }
        self.check_indices(indices, axis, self.dims()[axis], name, true)?;
        let mut dims = self.dims().to_vec();
        dims[axis] = indices.numel();
        let out = self.output(name, Shape::new(dims), self.dtype)?;
        out.enqueue(Op::IndexSelect {
            input: self.view(),
            indices: indices.view(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// `out[.., i, ..] = self[.., indices[.., i, ..], ..]` along `axis` (torch.gather);
    /// the result has the shape of `indices`.
    pub fn gather(&self, axis: impl Axis, indices: &Tensor) -> Result<Tensor> {
        let name = "gather";
        let axis = self.axis(axis, name)?;
        self.check_fits_outside(indices, axis, name)?;
        self.check_indices(indices, axis, self.dims()[axis], name, false)?;
        let out = self.output(name, indices.shape().clone(), self.dtype)?;
        out.enqueue(Op::Gather {
            input: self.view(),
            indices: indices.view(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// A copy of `self` with `src` rows added at `indices` along `axis` (index_add).
    pub fn index_add(&self, axis: impl Axis, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let axis = self.axis(axis, "index_add")?;
        self.clone().index_add_owned(axis, indices, src)
    }

    /// [`index_add`](Self::index_add) into this tensor's own buffer when nothing else holds
    /// it (a fresh gradient): no copy first.
    pub(crate) fn index_add_owned(
        self,
        axis: usize,
        indices: &Tensor,
        src: &Tensor,
    ) -> Result<Tensor> {
        let name = "index_add";
        self.check_axis(axis, name)?;
        self.same_device(src, name)?;
        self.same_dtype(src, name)?;
        self.check_indices(indices, axis, self.dims()[axis], name, true)?;
        let mut want = self.dims().to_vec();
        want[axis] = indices.numel();
        if src.dims() != want {
            return Err(Error::Shape {
                op: name.into(),
                device: label(self.device()),
                detail: format!(
                    "src {} must have shape {want:?} to add into {} with {} indices",
                    src.describe(),
                    self.describe(),
                    indices.numel()
                ),
            });
        }
        let out = self.into_update(name)?;
        out.enqueue(Op::IndexAdd {
            src: src.view(),
            indices: indices.view(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// A copy of `self` with `src[.., i, ..]` added at `indices[.., i, ..]` along `axis`
    /// (scatter_add; the gradient of `gather`).
    pub fn scatter_add(&self, axis: impl Axis, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let axis = self.axis(axis, "scatter_add")?;
        self.clone().scatter_add_owned(axis, indices, src)
    }

    /// A copy of `self` with `src[.., i, ..]` written at `indices[.., i, ..]` along `axis`
    /// (PyTorch's `scatter`). Where several source elements name one target, the last along
    /// `axis` wins, on every backend.
    pub fn scatter(&self, axis: impl Axis, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.scatter_reduce(axis, indices, src, ScatterOp::Assign)
    }

    /// A copy of `self` with each `src[.., i, ..]` combined by `op` into the element that
    /// `indices[.., i, ..]` names along `axis` (PyTorch's `scatter_reduce` with
    /// `include_self`): sums, products, maxima or minima, in order along `axis`.
    pub fn scatter_reduce(
        &self,
        axis: impl Axis,
        indices: &Tensor,
        src: &Tensor,
        op: ScatterOp,
    ) -> Result<Tensor> {
        let name = match op {
            ScatterOp::Assign => "scatter",
            _ => "scatter_reduce",
        };
        let axis = self.axis(axis, name)?;
        self.check_scatter(axis, indices, src, name)?;
        let out = self.clone().into_update(name)?;
        out.enqueue(Op::Scatter {
            op,
            src: src.view(),
            indices: indices.view(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// The rules every scatter shares: `src` on our device in our dtype, `indices` of its
    /// shape, fitting inside `self` outside `axis`, naming positions of `axis`.
    fn check_scatter(&self, axis: usize, indices: &Tensor, src: &Tensor, name: &str) -> Result<()> {
        self.same_device(src, name)?;
        self.same_dtype(src, name)?;
        if indices.dims() != src.dims() {
            return Err(Error::Shape {
                op: name.into(),
                device: label(self.device()),
                detail: format!(
                    "indices {} and src {} must have the same shape",
                    indices.describe(),
                    src.describe()
                ),
            });
        }
        self.check_fits_outside(indices, axis, name)?;
        self.check_indices(indices, axis, self.dims()[axis], name, false)
    }

    /// [`scatter_add`](Self::scatter_add) into this tensor's own buffer when nothing else
    /// holds it (a fresh gradient): no copy first.
    pub(crate) fn scatter_add_owned(
        self,
        axis: usize,
        indices: &Tensor,
        src: &Tensor,
    ) -> Result<Tensor> {
        let name = "scatter_add";
        self.check_axis(axis, name)?;
        self.check_scatter(axis, indices, src, name)?;
        let out = self.into_update(name)?;
        out.enqueue(Op::ScatterAdd {
            src: src.view(),
            indices: indices.view(),
            out: out.view(),
            axis,
        })?;
        Ok(out)
    }

    /// The tensor an accumulating op may write: this one, when it is contiguous and the only
    /// holder of its buffer, else a fresh contiguous copy. (Never one whose host-made values
    /// are on record for index checks: the record would go stale.)
    fn into_update(self, op: &str) -> Result<Tensor> {
        let owned =
            Arc::strong_count(&self.storage) == 1 && self.storage.host_index_range.is_none();
        if owned && self.is_contiguous() {
            return Ok(self);
        }
        let out = self.output(op, self.shape().clone(), self.dtype)?;
        out.enqueue(Op::Copy { input: self.view(), out: out.view() })?;
        Ok(out)
    }

    /// `indices` must have our rank and fit inside us outside `axis` (gather/scatter).
    fn check_fits_outside(&self, indices: &Tensor, axis: usize, op: &str) -> Result<()> {
        let fits = indices.rank() == self.rank()
            && indices
                .dims()
                .iter()
                .zip(self.dims())
                .enumerate()
                .all(|(d, (i, s))| d == axis || i <= s);
        if fits {
            return Ok(());
        }
        Err(Error::Shape {
            op: op.into(),
            device: label(self.device()),
            detail: format!(
                "indices {} must have the rank of {} and fit inside it outside axis {axis}",
                indices.describe(),
                self.describe()
            ),
        })
    }

    /// Index tensors are `u32`, `i32` or `i64`, on our device, and every value is in
    /// `-bound..bound` (a negative one counts from the end; `u32` has none). Indices that
    /// came from the host are checked against the range recorded then; others are read back,
    /// so a bad index is an `Err` here rather than at some later synchronization.
    fn check_indices(
        &self,
        indices: &Tensor,
        axis: usize,
        bound: usize,
        op: &str,
        one_dim: bool,
    ) -> Result<()> {
        self.same_device(indices, op)?;
        if !indices.dtype.is_index() {
            return Err(Error::DType {
                op: op.into(),
                device: label(self.device()),
                detail: format!("indices must be u32, i32 or i64, got {}", indices.describe()),
            });
        }
        if one_dim && indices.rank() != 1 {
            return Err(Error::Shape {
                op: op.into(),
                device: label(self.device()),
                detail: format!("indices must be 1-D, got {}", indices.describe()),
            });
        }
        let bound = i128::try_from(bound).unwrap_or(i128::MAX);
        let fits = |v: i64| -bound <= i128::from(v) && i128::from(v) < bound;
        let known = indices.storage.host_index_range;
        if known.is_some_and(|(dtype, lo, hi)| dtype == indices.dtype && fits(lo) && fits(hi)) {
            return Ok(());
        }
        let values: Vec<i64> = match indices.dtype {
            DType::I64 => indices.to_vec::<i64>()?,
            DType::I32 => indices.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
            _ => indices.to_vec::<u32>()?.into_iter().map(i64::from).collect(),
        };
        if let Some((pos, &bad)) = values.iter().enumerate().find(|(_, v)| !fits(**v)) {
            return Err(Error::IndexOutOfRange {
                op: op.into(),
                device: label(self.device()),
                detail: format!(
                    "index {bad} (at flat position {pos} of {}) is out of range for axis {axis} \
                     of length {bound} in {}",
                    indices.describe(),
                    self.describe()
                ),
            });
        }
        Ok(())
    }
}

/// Strides that show the elements of `dims`/`strides` as `new_dims` in the same order, when
/// there are some (as `torch.view` finds them): each run of old dims that is contiguous
/// with itself must split or merge into whole new dims. A broadcast dim (stride 0) stays
/// one. `None` where a copy is needed.
fn view_strides(dims: &[usize], strides: &[usize], new_dims: &[usize]) -> Option<Vec<usize>> {
    let numel: usize = dims.iter().product();
    if numel == 0 || dims.is_empty() {
        // Nothing to read, or one element: any strides address it.
        return Some(Shape::new(new_dims.to_vec()).contiguous_strides());
    }
    let mut new_strides = vec![0; new_dims.len()];
    let mut view_d = new_dims.len();
    let mut chunk_base = strides[dims.len() - 1];
    let (mut tensor_numel, mut view_numel) = (1, 1);
    for d in (0..dims.len()).rev() {
        tensor_numel *= dims[d];
        let chunk_ends =
            d == 0 || (dims[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base);
        if !chunk_ends {
            continue;
        }
        while view_d > 0 && (view_numel < tensor_numel || new_dims[view_d - 1] == 1) {
            new_strides[view_d - 1] = view_numel * chunk_base;
            view_numel *= new_dims[view_d - 1];
            view_d -= 1;
        }
        if view_numel != tensor_numel {
            return None;
        }
        if d > 0 {
            chunk_base = strides[d - 1];
            tensor_numel = 1;
            view_numel = 1;
        }
    }
    (view_d == 0).then_some(new_strides)
}

#[cfg(test)]
mod tests {
    use super::view_strides;

    #[test]
    fn reshapes_that_need_no_copy_are_views() {
        // Contiguous: any reshape.
        assert_eq!(view_strides(&[2, 3, 4], &[12, 4, 1], &[6, 4]), Some(vec![4, 1]));
        assert_eq!(view_strides(&[6, 4], &[4, 1], &[2, 3, 2, 2]), Some(vec![12, 4, 2, 1]));
        // A broadcast row gains a dim of 1 and stays a broadcast.
        assert_eq!(view_strides(&[64], &[0], &[64, 1]), Some(vec![0, 0]));
        // A transposed matrix splits its outer dim, but cannot be flattened.
        assert_eq!(view_strides(&[4, 6], &[1, 4], &[2, 2, 6]), Some(vec![2, 1, 4]));
        assert_eq!(view_strides(&[4, 6], &[1, 4], &[24]), None);
        // Every other column of 10: the columns split, but rows and columns do not merge;
        // of 8 they do (one stride of 2 walks them all).
        assert_eq!(view_strides(&[3, 4], &[10, 2], &[3, 2, 2]), Some(vec![10, 4, 2]));
        assert_eq!(view_strides(&[3, 4], &[10, 2], &[12]), None);
        assert_eq!(view_strides(&[3, 4], &[8, 2], &[12]), Some(vec![2]));
        // Dims of 1 anywhere.
        assert_eq!(view_strides(&[1, 5, 1], &[5, 1, 1], &[5]), Some(vec![1]));
        assert_eq!(view_strides(&[5], &[1], &[1, 5, 1]), Some(vec![5, 1, 1]));
    }
}
