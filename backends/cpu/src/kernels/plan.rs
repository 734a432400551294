//! Strided iteration over several operands of one shape.
//!
//! A [`Plan`] simplifies the layouts first (size-1 dims dropped, dims ordered by the output's
//! strides, adjacent dims merged where every operand steps through them as one), so a
//! contiguous op becomes a single segment and a broadcast an outer loop around contiguous
//! runs. Kernels then see only *segments*: a start offset per operand, one inner stride per
//! operand and a length, which they handle with a few specialised loops.

use std::ops::Range;

use manychips_api::Layout;
use rayon::prelude::*;

/// Elements per parallel task for cheap elementwise work: below this a thread handoff
/// costs more than it saves.
pub(crate) const MIN_CHUNK: usize = 32 * 1024;
/// The same for work of tens of flops per element (exp, gelu, pow).
pub(crate) const MIN_CHUNK_HEAVY: usize = 4 * 1024;

/// An iteration plan over `N` operands; operand 0 is the one written.
#[derive(Clone, Debug)]
pub(crate) struct Plan<const N: usize> {
    /// Outermost first; empty for a single element.
    dims: Vec<usize>,
    strides: Vec<[usize; N]>,
    offsets: [usize; N],
    numel: usize,
}

impl<const N: usize> Plan<N> {
    /// `layouts` all have the shape `dims` (strides may be 0 for broadcasts).
    pub fn new(dims: &[usize], layouts: [&Layout; N]) -> Self {
        let offsets = layouts.map(|l| l.offset);
        let numel = dims.iter().product();
        let mut merged: Vec<(usize, [usize; N])> = dims
            .iter()
            .enumerate()
            .filter(|&(_, &d)| d != 1)
            .map(|(i, &d)| (d, layouts.map(|l| l.strides[i])))
            .collect();
        if numel == 0 {
            merged.clear();
        }
        // Output order: the written operand walks memory forwards, which both streams well and
        // makes a range of the iteration a contiguous range of the output (see `run`).
        merged.sort_by(|a, b| b.1[0].cmp(&a.1[0]));
        let mut out: Vec<(usize, [usize; N])> = Vec::with_capacity(merged.len());
        for (d, s) in merged {
            match out.last_mut() {
                Some((pd, ps)) if (0..N).all(|k| ps[k] == s[k] * d) => {
                    *pd *= d;
                    *ps = s;
                }
                _ => out.push((d, s)),
            }
        }
        Plan {
            dims: out.iter().map(|&(d, _)| d).collect(),
            strides: out.iter().map(|&(_, s)| s).collect(),
            offsets,
            numel,
        }
    }

    pub fn numel(&self) -> usize {
        self.numel
    }

    /// The stride of each operand along the innermost (segment) dimension.
    pub fn inner_strides(&self) -> [usize; N] {
        self.strides.last().copied().unwrap_or([0; N])
    }

    /// The plan over whole rows: every dim but the innermost, whose length and strides are
    /// returned alongside. `None` for a single element.
    pub fn rows(&self) -> Option<(Plan<N>, usize, [usize; N])> {
        let (&len, dims) = self.dims.split_last()?;
        let (&strides, outer) = self.strides.split_last()?;
        let plan = Plan {
            dims: dims.to_vec(),
            strides: outer.to_vec(),
            offsets: self.offsets,
            numel: self.numel / len.max(1),
        };
        Some((plan, len, strides))
    }

    /// Offsets of the element at flat iteration index `flat`.
    fn offsets_at(&self, mut flat: usize) -> ([usize; N], Vec<usize>) {
        let mut idx = vec![0; self.dims.len()];
        let mut offs = self.offsets;
        for d in (0..self.dims.len()).rev() {
            idx[d] = flat % self.dims[d];
            flat /= self.dims[d];
            for (k, o) in offs.iter_mut().enumerate() {
                *o += idx[d] * self.strides[d][k];
            }
        }
        (offs, idx)
    }

    /// Calls `f(offsets, len)` for each segment of the flat iteration range `range`, in
    /// order. Segments never cross the innermost dimension.
    pub fn walk(&self, range: Range<usize>, mut f: impl FnMut([usize; N], usize)) {
        if range.start >= range.end.min(self.numel) {
            return;
        }
        let mut left = range.end.min(self.numel) - range.start;
        let rank = self.dims.len();
        if rank == 0 {
            f(self.offsets, 1);
            return;
        }
        let (mut offs, mut idx) = self.offsets_at(range.start);
        let last = rank - 1;
        loop {
            let seg = (self.dims[last] - idx[last]).min(left);
            f(offs, seg);
            left -= seg;
            if left == 0 {
                return;
            }
            idx[last] += seg;
            for (k, o) in offs.iter_mut().enumerate() {
                *o += seg * self.strides[last][k];
            }
            let mut d = last;
            while idx[d] == self.dims[d] && d > 0 {
                for (k, o) in offs.iter_mut().enumerate() {
                    *o = *o - self.dims[d] * self.strides[d][k] + self.strides[d - 1][k];
                }
                idx[d] = 0;
                d -= 1;
                idx[d] += 1;
            }
        }
    }

    /// Runs `f(state, out_chunk, offsets, len)` over every segment, in parallel where the op
    /// is big enough. `out` is the whole buffer of operand 0; each task gets a disjoint
    /// sub-slice, offsets of operand 0 relative to it, and its own `init()` state (staging
    /// buffers). Other operands are read through captures.
    ///
    /// Operand 0 must not overlap itself (the contract guarantees this for outputs). Its
    /// dims are sorted by decreasing stride, so its address grows strictly with the flat
    /// index: cutting the flat range anywhere cuts `out` into disjoint, ordered pieces.
    pub fn run<T: Send, S>(
        &self,
        out: &mut [T],
        min_chunk: usize,
        init: impl Fn() -> S + Sync,
        f: impl Fn(&mut S, &mut [T], [usize; N], usize) + Sync,
    ) {
        let n = self.numel;
        let tasks = task_count(n, min_chunk);
        if tasks <= 1 {
            let mut state = init();
            self.walk(0..n, |offs, len| f(&mut state, out, offs, len));
            return;
        }
        let mut pieces = Vec::with_capacity(tasks);
        let mut rest = out;
        let mut base = 0;
        for t in 0..tasks {
            let start = split_point(n, tasks, t);
            let end = split_point(n, tasks, t + 1);
            let cut = if t + 1 == tasks { base + rest.len() } else { self.offsets_at(end).0[0] };
            let Some(len) = cut.checked_sub(base).filter(|&l| l <= rest.len()) else {
                // Not a valid output layout; fall back to one sequential pass over the rest.
                pieces.push((rest, base, start..n));
                break;
            };
            let (head, tail) = rest.split_at_mut(len);
            pieces.push((head, base, start..end));
            rest = tail;
            base = cut;
        }
        pieces.into_par_iter().for_each(|(chunk, base, range)| {
            let mut state = init();
            self.walk(range, |mut offs, len| {
                offs[0] -= base;
                f(&mut state, chunk, offs, len)
            })
        });
    }
}

/// How many tasks to cut `n` elements into: none below two chunks' worth, then up to four
/// per thread (for load balance).
pub(crate) fn task_count(n: usize, min_chunk: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || n < 2 * min_chunk.max(1) {
        1
    } else {
        (n / min_chunk.max(1)).min(threads * 4)
    }
}

/// Start of part `t` of `n` items cut into `parts` near-equal parts.
pub(crate) fn split_point(n: usize, parts: usize, t: usize) -> usize {
    let (q, r) = (n / parts, n % parts);
    t * q + t.min(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dims: &[usize], strides: &[usize], offset: usize) -> Layout {
        Layout { shape: dims.into(), strides: strides.to_vec(), offset }
    }

    #[test]
    fn contiguous_collapses_to_one_segment() {
        let a = Layout::contiguous([2, 3, 4]);
        let p = Plan::new(&[2, 3, 4], [&a, &a]);
        let mut segs = vec![];
        p.walk(0..24, |o, l| segs.push((o, l)));
        assert_eq!(segs, vec![([0, 0], 24)]);
    }

    #[test]
    fn walk_visits_every_element_once_in_output_order() {
        let out = layout(&[3, 2, 5], &[1, 15, 3], 7); // permuted, offset
        let inp = layout(&[3, 2, 5], &[0, 5, 1], 2); // broadcast on dim 0
        let p = Plan::new(&[3, 2, 5], [&out, &inp]);
        for (start, end) in [(0, 30), (4, 17), (29, 30), (13, 13)] {
            let mut got = vec![];
            p.walk(start..end, |o, l| {
                let s = p.inner_strides();
                for i in 0..l {
                    got.push((o[0] + i * s[0], o[1] + i * s[1]));
                }
            });
            let mut want = vec![];
            for i in 0..3 {
                for j in 0..2 {
                    for k in 0..5 {
                        want.push((out.index_of(&[i, j, k]), inp.index_of(&[i, j, k])));
                    }
                }
            }
            want.sort();
            assert_eq!(got, want[start..end].to_vec());
        }
    }

    #[test]
    fn zero_size_and_scalar() {
        let e = Layout::contiguous([3, 0]);
        let p = Plan::new(&[3, 0], [&e]);
        p.walk(0..10, |_, _| panic!("no elements"));
        let s = layout(&[], &[], 5);
        let p = Plan::new(&[], [&s, &s]);
        let mut n = 0;
        p.walk(0..1, |o, l| {
            assert_eq!((o, l), ([5, 5], 1));
            n += 1;
        });
        assert_eq!(n, 1);
    }
}
