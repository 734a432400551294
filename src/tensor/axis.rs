//! Axes and shapes as numpy and PyTorch users write them: negative axes count from the
//! back (`-1` is the last), several axes at once (`sum([0, 2])`), and one `-1` in a new
//! shape stands for whatever the element count leaves (`reshape([4, -1])`).
//!
//! Methods take `impl Axis` / `impl Axes` / `impl NewShape`, so existing `usize` arguments
//! keep working and a bare literal such as `-1` is an `i32`.

use super::{Tensor, label};
use crate::{Error, Result, Shape};

/// One axis: `0..rank` from the front, `-rank..0` from the back.
pub trait Axis: Copy {
    /// The axis as a signed position (`-1`: the last).
    fn signed(self) -> i128;
}

macro_rules! axis_for {
    ($($t:ty),*) => {$(
        impl Axis for $t {
            fn signed(self) -> i128 {
                self as i128
            }
        }
    )*};
}
axis_for!(usize, u32, u8, isize, i64, i32, i128);

/// Several axes (a single [`Axis`] is one): reductions over all of them at once. The same
/// lists of integers are shapes to [`NewShape`].
pub trait Axes {
    fn signed(&self) -> Vec<i128>;
}

impl<A: Axis> Axes for A {
    fn signed(&self) -> Vec<i128> {
        vec![Axis::signed(*self)]
    }
}

impl<A: Axis, const N: usize> Axes for [A; N] {
    fn signed(&self) -> Vec<i128> {
        self.iter().map(|&a| Axis::signed(a)).collect()
    }
}

impl<A: Axis, const N: usize> Axes for &[A; N] {
    fn signed(&self) -> Vec<i128> {
        self.iter().map(|&a| Axis::signed(a)).collect()
    }
}

impl<A: Axis> Axes for &[A] {
    fn signed(&self) -> Vec<i128> {
        self.iter().map(|&a| Axis::signed(a)).collect()
    }
}

impl<A: Axis> Axes for &Vec<A> {
    fn signed(&self) -> Vec<i128> {
        self.iter().map(|&a| Axis::signed(a)).collect()
    }
}

impl<A: Axis> Axes for Vec<A> {
    fn signed(&self) -> Vec<i128> {
        self.iter().map(|&a| Axis::signed(a)).collect()
    }
}

/// The `i`th of `rank` positions for `axis`, Python's way, or `None` outside `-rank..rank`.
pub fn resolve(axis: impl Axis, rank: usize) -> Option<usize> {
    let a = axis.signed();
    let rank = rank as i128;
    let i = if a < 0 { a + rank } else { a };
    (0..rank).contains(&i).then_some(i as usize)
}

/// A shape asked for by `reshape` or `expand`: a [`Shape`], or dims as a list of integers
/// (or one integer, as numpy's `reshape(-1)`), at most one of them `-1`.
pub trait NewShape {
    fn signed(&self) -> Vec<i128>;
}

impl NewShape for Shape {
    fn signed(&self) -> Vec<i128> {
        self.dims().iter().map(|&d| d as i128).collect()
    }
}

impl NewShape for &Shape {
    fn signed(&self) -> Vec<i128> {
        (*self).signed()
    }
}

impl<T: Axes> NewShape for T {
    fn signed(&self) -> Vec<i128> {
        Axes::signed(self)
    }
}

/// The common shape of `shapes` under numpy's broadcasting, or an `Err` naming them.
pub fn broadcast_shapes(shapes: &[&Shape]) -> Result<Shape> {
    let mut common = Shape::new(Vec::<usize>::new());
    for shape in shapes {
        common = common.broadcast(shape).ok_or_else(|| Error::Shape {
            op: "broadcast_shapes".into(),
            device: "-".into(),
            detail: format!(
                "{} do not broadcast",
                shapes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
            ),
        })?;
    }
    Ok(common)
}

impl Tensor {
    /// `axis` as a position among this tensor's dims, or an `Err` naming `op`.
    pub(crate) fn axis(&self, axis: impl Axis, op: &str) -> Result<usize> {
        self.position(axis, self.rank(), op)
    }

    /// `axis` among `rank` positions (`unsqueeze` has one more than the tensor's dims).
    pub(crate) fn position(&self, axis: impl Axis, rank: usize, op: &str) -> Result<usize> {
        resolve(axis, rank).ok_or_else(|| Error::IndexOutOfRange {
            op: op.into(),
            device: label(self.device()),
            detail: format!(
                "axis {} of {} (rank {}: axes {}..{})",
                axis.signed(),
                self.describe(),
                self.rank(),
                -(rank as i128),
                rank
            ),
        })
    }

    /// `axes` as distinct positions, in ascending order, or an `Err` naming `op`.
    pub(crate) fn axes(&self, axes: &impl Axes, op: &str) -> Result<Vec<usize>> {
        let mut positions = Vec::new();
        for a in axes.signed() {
            let p = self.axis(a, op)?;
            if positions.contains(&p) {
                return Err(self.axis_twice(op, p, &axes.signed()));
            }
            positions.push(p);
        }
        positions.sort_unstable();
        Ok(positions)
    }

    pub(crate) fn axis_twice(&self, op: &str, axis: usize, asked: &[i128]) -> Error {
        Error::InvalidArgument {
            op: op.into(),
            device: label(self.device()),
            detail: format!("axis {axis} named twice in {asked:?} for {}", self.describe()),
        }
    }

    /// The dims `shape` asks for, its one `-1` (if any) filled in from the element count.
    pub(crate) fn new_dims(&self, shape: &impl NewShape, op: &str) -> Result<Shape> {
        let asked = shape.signed();
        let err = |why: String| Error::Shape {
            op: op.into(),
            device: label(self.device()),
            detail: format!("cannot {op} {} to {asked:?}: {why}", self.describe()),
        };
        let holes = asked.iter().filter(|&&d| d == -1).count();
        if holes > 1 {
            return Err(err("more than one -1".into()));
        }
        if let Some(d) = asked.iter().find(|&&d| d < -1 || d > usize::MAX as i128) {
            return Err(err(format!("{d} is not a dim")));
        }
        let known = asked
            .iter()
            .filter(|&&d| d != -1)
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .ok_or_else(|| err("the element count overflows".into()))?;
        let dims: Vec<usize> = if holes == 0 {
            asked.iter().map(|&d| d as usize).collect()
        } else {
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(err(format!(
                    "{} elements do not divide into the other dims ({known})",
                    self.numel()
                )));
            }
            let inferred = self.numel() / known;
            asked.iter().map(|&d| if d == -1 { inferred } else { d as usize }).collect()
        };
        Ok(Shape::new(dims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_count_from_the_back_when_negative() {
        assert_eq!(resolve(-1, 3), Some(2));
        assert_eq!(resolve(-3, 3), Some(0));
        assert_eq!(resolve(-4, 3), None);
        assert_eq!(resolve(2usize, 3), Some(2));
        assert_eq!(resolve(3usize, 3), None);
        assert_eq!(resolve(0, 0), None);
    }

    #[test]
    fn shapes_broadcast_both_ways() {
        let a = Shape::new(vec![3, 1, 5]);
        let b = Shape::new(vec![4, 1]);
        assert_eq!(broadcast_shapes(&[&a, &b]).unwrap().dims(), &[3, 4, 5]);
        assert_eq!(broadcast_shapes(&[]).unwrap().dims(), &[] as &[usize]);
        let c = Shape::new(vec![2]);
        let err = broadcast_shapes(&[&a, &c]).unwrap_err().to_string();
        assert!(err.contains("[3, 1, 5], [2]"), "{err}");
    }
}
