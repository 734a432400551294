//! A test case as data: operands with their values and where they sit in a buffer, the
//! output, how to build the op from the views, and the expected result.
//!
//! Generators (in `ops/`) only describe cases; the runner uploads, runs and compares.

use crate::{DType, Layout, Op, Shape, View};

use super::reference::{Host, numel};
use super::tolerance::Expected;

/// Where a tensor's elements sit in its buffer. Every buffer also has a few guard elements
/// after the view's end, and all elements outside the view hold junk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Row-major from element 0.
    Contiguous,
    /// Row-major from an odd element offset.
    Offset,
    /// A slice of a bigger buffer: every dim padded on both sides, an offset into it.
    Padded,
    /// Stored with all axes reversed and viewed back through permuted strides (a transpose
    /// for rank 2).
    Reversed,
    /// Stored with the last two axes swapped (a transposed matrix).
    SwapLast,
}

use Place::*;

/// Odd element offset of [`Place::Offset`].
const OFFSET: usize = 5;

impl Place {
    /// The layout of `dims` under this placement and the buffer length (in elements) that it
    /// needs.
    pub fn layout(self, dims: &[usize]) -> (Layout, usize) {
        let rank = dims.len();
        match self {
            Contiguous => (Layout::contiguous(dims.to_vec()), numel(dims)),
            Offset => {
                let mut l = Layout::contiguous(dims.to_vec());
                l.offset = OFFSET;
                (l, OFFSET + numel(dims))
            }
            Padded => {
                if rank == 0 {
                    let mut l = Layout::contiguous(Shape::scalar());
                    l.offset = 1;
                    return (l, 3);
                }
                let big: Vec<usize> = dims.iter().map(|d| d + 2).collect();
                let mut l = Layout::contiguous(big.clone());
                for (axis, &d) in dims.iter().enumerate() {
                    l = l.narrowed(axis, 1, d);
                }
                (l, numel(&big))
            }
            Reversed => {
                let stored: Vec<usize> = dims.iter().rev().copied().collect();
                let perm: Vec<usize> = (0..rank).rev().collect();
                (Layout::contiguous(stored).permuted(&perm), numel(dims))
            }
            SwapLast => {
                if rank < 2 {
                    return Contiguous.layout(dims);
                }
                let mut stored = dims.to_vec();
                stored.swap(rank - 2, rank - 1);
                (Layout::contiguous(stored).transposed(rank - 2, rank - 1), numel(dims))
            }
        }
    }
}

/// One input of a case: values of `src` shape placed in a buffer, viewed (broadcast by
/// stride 0 where `dims` is bigger than `src`) with the logical shape `dims`.
#[derive(Clone, Debug)]
pub(crate) struct Operand {
    pub dtype: DType,
    /// The stored values, already rounded to `dtype`.
    pub src: Host,
    pub place: Place,
    /// The logical shape of the view (numpy-broadcast of `src.dims`).
    pub dims: Vec<usize>,
}

impl Operand {
    pub fn new(dtype: DType, src: Host) -> Operand {
        let dims = src.dims.clone();
        Operand { dtype, src, place: Contiguous, dims }
    }

    pub fn at(mut self, place: Place) -> Operand {
        self.place = place;
        self
    }

    /// Views the stored values as `dims` through stride-0 dims.
    pub fn broadcast(mut self, dims: &[usize]) -> Operand {
        self.dims = dims.to_vec();
        self
    }

    /// The values the view shows, row-major in `dims`: what the reference computes from.
    pub fn logical(&self) -> Host {
        self.src.broadcast_to(&self.dims)
    }

    /// (layout of the stored values, layout of the view, buffer length in elements), or
    /// `None` when `src` does not broadcast to `dims` (a bug of the case).
    pub fn layouts(&self) -> Option<(Layout, Layout, usize)> {
        let (stored, len) = self.place.layout(&self.src.dims);
        let view = stored.broadcast_to(&Shape::new(self.dims.clone()))?;
        Some((stored, view, len))
    }
}

/// The output of a case: its dtype, shape and placement, and what the view holds before the
/// op runs (junk unless the op accumulates into it).
#[derive(Clone, Debug)]
pub(crate) struct Output {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub place: Place,
    /// Initial values of the view (row-major, rounded to `dtype`); `None` means junk.
    pub init: Option<Vec<f64>>,
}

impl Output {
    pub fn new(dtype: DType, dims: &[usize]) -> Output {
        Output { dtype, dims: dims.to_vec(), place: Contiguous, init: None }
    }

    pub fn at(mut self, place: Place) -> Output {
        self.place = place;
        self
    }

    pub fn init(mut self, values: Vec<f64>) -> Output {
        self.init = Some(values);
        self
    }
}

/// Builds the op from the input views (in the order of `Case::inputs`) and the output view.
pub(crate) type Build = Box<dyn Fn(&[View], View) -> Op>;

/// One run of one op, compared with the reference.
pub(crate) struct Case {
    pub inputs: Vec<Operand>,
    pub output: Output,
    pub build: Build,
    pub expected: Expected,
}

impl Case {
    pub fn new(
        inputs: Vec<Operand>,
        output: Output,
        expected: Expected,
        build: impl Fn(&[View], View) -> Op + 'static,
    ) -> Case {
        Case { inputs, output, build: Box::new(build), expected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_keep_the_logical_shape() {
        for place in [Contiguous, Offset, Padded, Reversed, SwapLast] {
            for dims in [vec![], vec![1], vec![7], vec![3, 4], vec![2, 3, 4], vec![3, 0, 2]] {
                let (l, len) = place.layout(&dims);
                assert_eq!(l.dims(), dims.as_slice(), "{place:?}");
                assert!(l.end().is_some_and(|end| end <= len), "{place:?} {dims:?}");
                assert!(crate::non_overlapping(&l));
            }
        }
        let (l, _) = Padded.layout(&[2, 3]);
        assert_eq!((l.strides.clone(), l.offset), (vec![5, 1], 6));
        let (l, _) = SwapLast.layout(&[2, 3]);
        assert_eq!(l.strides, vec![1, 2]);
    }

    #[test]
    fn operands_broadcast_with_stride_zero() {
        let op =
            Operand::new(DType::F32, Host::new([3, 1, 5], vec![0.0; 15])).broadcast(&[3, 4, 5]);
        let (_, view, len) = op.layouts().unwrap_or_else(|| panic!("broadcast failed"));
        assert_eq!(view.strides, vec![5, 0, 1]);
        assert_eq!(len, 15);
        assert_eq!(op.logical().dims, vec![3, 4, 5]);
    }
}
