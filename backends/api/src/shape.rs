//! Shapes and strided layouts.

use std::fmt;

/// The extent of each dimension, outermost first. A rank-0 shape is a scalar (one element).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements; 1 for a scalar, 0 when any dimension is 0. Saturates at
    /// `usize::MAX` for shapes too large to exist (which no device can allocate).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// Number of elements, or `None` if it overflows `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        if self.0.contains(&0) {
            return Some(0);
        }
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Row-major (C order) strides, in elements. Saturating for a shape too large to exist,
    /// so its layout's bounds checks refuse it instead of the arithmetic wrapping or
    /// panicking.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc: usize = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc = acc.saturating_mul(d.max(1));
        }
        strides
    }

    /// The numpy broadcast of two shapes (trailing dimensions aligned; 1 stretches), or
    /// `None` when they are incompatible.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut dims = vec![0; rank];
        for (i, d) in dims.iter_mut().enumerate() {
            let a = dim_from_end(&self.0, rank - 1 - i);
            let b = dim_from_end(&other.0, rank - 1 - i);
            *d = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => return None,
            };
        }
        Some(Shape(dims))
    }
}

fn dim_from_end(dims: &[usize], from_end: usize) -> usize {
    if from_end < dims.len() { dims[dims.len() - 1 - from_end] } else { 1 }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(shape: &Shape) -> Self {
        shape.clone()
    }
}

/// Where the elements of a shape live in a buffer: element `[i0, i1, ..]` is at
/// `offset + i0*strides[0] + i1*strides[1] + ..` (all in elements, not bytes).
///
/// A stride of 0 repeats an element (a broadcast); swapped strides are a transpose; a larger
/// offset with a smaller shape is a slice. Strides are never negative.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    pub shape: Shape,
    pub strides: Vec<usize>,
    pub offset: usize,
}

impl Layout {
    /// The row-major layout of `shape` starting at element 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// True when the elements are densely packed in row-major order (size-1 dims may carry any
    /// stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            // Saturating: a shape whose size overflows has no stride that equals it.
            expected = expected.saturating_mul(d);
        }
        true
    }

    /// One past the highest element index this layout touches; 0 for an empty layout;
    /// `None` if that overflows `usize` (no buffer is that large).
    pub fn end(&self) -> Option<usize> {
        if self.shape.dims().contains(&0) {
            return Some(0);
        }
        let mut last = self.offset;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides) {
            last = last.checked_add((d - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }

    /// Element index (relative to the buffer start) of the multi-index `idx`.
    pub fn index_of(&self, idx: &[usize]) -> usize {
        self.offset + idx.iter().zip(&self.strides).map(|(&i, &s)| i * s).sum::<usize>()
    }

    /// Swaps two axes (no data moves). Panics on an axis out of range: callers check ranks.
    pub fn transposed(&self, a: usize, b: usize) -> Layout {
        let mut out = self.clone();
        out.shape.0.swap(a, b);
        out.strides.swap(a, b);
        out
    }

    /// Reorders the axes: new axis `i` is old axis `perm[i]`.
    pub fn permuted(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: Shape(perm.iter().map(|&p| self.shape.0[p]).collect()),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// Keeps `len` entries of `axis` starting at `start`.
    pub fn narrowed(&self, axis: usize, start: usize, len: usize) -> Layout {
        let mut out = self.clone();
        if len > 0 {
            // Saturating: an offset past `usize` fails every bounds check instead of wrapping.
            out.offset = out.offset.saturating_add(start.saturating_mul(self.strides[axis]));
        }
        out.shape.0[axis] = len;
        out
    }

    /// Stretches this layout to `shape` by numpy rules (stride 0 on broadcast dims), or
    /// `None` if the shapes are incompatible.
    pub fn broadcast_to(&self, shape: &Shape) -> Option<Layout> {
        if shape.rank() < self.rank() {
            return None;
        }
        let lead = shape.rank() - self.rank();
        let mut strides = vec![0; shape.rank()];
        for (i, &d) in shape.dims().iter().enumerate() {
            if i < lead {
                continue;
            }
            let own = self.shape.0[i - lead];
            strides[i] = match own {
                _ if own == d => self.strides[i - lead],
                1 => 0,
                _ => return None,
            };
        }
        Some(Layout { shape: shape.clone(), strides, offset: self.offset })
    }
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_contiguous() && self.offset == 0 {
            write!(f, "{}", self.shape)
        } else {
            write!(f, "{} strides {:?} offset {}", self.shape, self.strides, self.offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        let a = Shape::from([3, 1, 5]);
        assert_eq!(a.broadcast(&Shape::from([4, 5])), Some(Shape::from([3, 4, 5])));
        assert_eq!(a.broadcast(&Shape::scalar()), Some(a.clone()));
        assert_eq!(a.broadcast(&Shape::from([2, 5])), Some(Shape::from([3, 2, 5])));
        assert_eq!(a.broadcast(&Shape::from([4, 4])), None);
        assert_eq!(Shape::from([0, 3]).broadcast(&Shape::from([1, 3])), Some(Shape::from([0, 3])));
    }

    #[test]
    fn layouts_describe_views() {
        let l = Layout::contiguous([2, 3, 4]);
        assert!(l.is_contiguous());
        assert_eq!(l.strides, vec![12, 4, 1]);
        assert_eq!(l.end(), Some(24));
        let t = l.transposed(1, 2);
        assert!(!t.is_contiguous());
        assert_eq!(t.index_of(&[1, 3, 2]), 12 + 2 * 4 + 3);
        let n = l.narrowed(2, 1, 2);
        assert_eq!((n.offset, n.end()), (1, Some(1 + 12 + 8 + 1 + 1)));
        let b = Layout::contiguous([3, 1]).broadcast_to(&Shape::from([2, 3, 5])).unwrap();
        assert_eq!(b.strides, vec![0, 1, 0]);
        assert_eq!(Layout::contiguous([0, 5]).end(), Some(0));
        assert_eq!(Layout::contiguous([usize::MAX, 3]).end(), None);
        assert_eq!(Shape::from([usize::MAX, 3]).checked_numel(), None);
        assert_eq!(Shape::from([usize::MAX, 0]).checked_numel(), Some(0));
    }
}
