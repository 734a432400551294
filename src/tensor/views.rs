//! Shape ops: views that move no data (transpose, narrow, broadcast, reshape of a contiguous
//! tensor) and the data-movement ops (contiguous, cat, index_select, gather, index_add,
//! scatter_add).

use std::sync::Arc;

use super::{Tensor, label};
use crate::{DType, Error, Layout, Op, Result, Shape};

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

    /// The same elements in row-major order under another shape with as many elements.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
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
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        self.check_axis(a, "transpose")?;
        self.check_axis(b, "transpose")?;
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

    /// Reorders the dims: new dim `i` is old dim `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        let valid = perm.len() == self.rank()
            && perm.iter().all(|&p| p < self.rank() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::InvalidArgument {
                op: "permute".into(),
                device: label(self.device()),
                detail: format!("{perm:?} is not a permutation of the dims of {}", self.describe()),
            });
        }
        Ok(self.with_layout(self.layout.permuted(perm)))
    }

    /// Entries `start..start + len` of `axis` (a view).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        self.check_axis(axis, "narrow")?;
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

    /// Inserts a dim of 1 before `axis` (a view).
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        if axis > self.rank() {
            return Err(Error::IndexOutOfRange {
                op: "unsqueeze".into(),
                device: label(self.device()),
                detail: format!("axis {axis} of {} (rank {})", self.describe(), self.rank()),
            });
        }
        let mut layout = self.layout.clone();
        let mut dims = layout.shape.dims().to_vec();
        dims.insert(axis, 1);
        layout.shape = Shape::new(dims);
        layout.strides.insert(axis, 0);
        Ok(self.with_layout(layout))
    }

    /// Removes a dim of 1 (a view).
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        self.check_axis(axis, "squeeze")?;
        if self.dims()[axis] != 1 {
            return Err(Error::Shape {
                op: "squeeze".into(),
                device: label(self.device()),
                detail: format!("axis {axis} of {} is not 1", self.describe()),
            });
        }
        let mut layout = self.layout.clone();
        let mut dims = layout.shape.dims().to_vec();
        dims.remove(axis);
        layout.shape = Shape::new(dims);
        layout.strides.remove(axis);
        Ok(self.with_layout(layout))
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

    /// Joins tensors along `axis`; all other dims must agree.
    pub fn cat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::InvalidArgument {
                op: "cat".into(),
                device: "-".into(),
                detail: "no tensors to concatenate".into(),
            });
        };
        first.check_axis(axis, "cat")?;
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

    /// Picks entries of `axis` by the 1-D `u32` tensor `indices` (embedding lookup).
    pub fn index_select(&self, indices: &Tensor, axis: usize) -> Result<Tensor> {
        let name = "index_select";
        self.check_axis(axis, name)?;
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
    pub fn gather(&self, indices: &Tensor, axis: usize) -> Result<Tensor> {
        let name = "gather";
        self.check_axis(axis, name)?;
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
    pub fn index_add(&self, axis: usize, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
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
    pub fn scatter_add(&self, axis: usize, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.clone().scatter_add_owned(axis, indices, src)
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
        self.check_indices(indices, axis, self.dims()[axis], name, false)?;
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
        let owned = Arc::strong_count(&self.storage) == 1 && self.storage.host_max_u32.is_none();
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

    /// Index tensors are `u32`, on our device, and every value is below `bound`. Indices
    /// that came from the host are checked against the maximum recorded then; others are
    /// read back, so a bad index is an `Err` here rather than at some later synchronization.
    fn check_indices(
        &self,
        indices: &Tensor,
        axis: usize,
        bound: usize,
        op: &str,
        one_dim: bool,
    ) -> Result<()> {
        self.same_device(indices, op)?;
        if indices.dtype != DType::U32 {
            return Err(Error::DType {
                op: op.into(),
                device: label(self.device()),
                detail: format!("indices must be u32, got {}", indices.describe()),
            });
        }
        if one_dim && indices.rank() != 1 {
            return Err(Error::Shape {
                op: op.into(),
                device: label(self.device()),
                detail: format!("indices must be 1-D, got {}", indices.describe()),
            });
        }
        if indices.storage.host_max_u32.is_some_and(|max| (max as usize) < bound) {
            return Ok(());
        }
        let values = indices.to_vec::<u32>()?;
        if let Some((pos, &bad)) = values.iter().enumerate().find(|(_, v)| **v as usize >= bound) {
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
