//! Batched matrix product through the `gemm` crate.
//!
//! f32 operand strides go to gemm as they are, so transposed operands and stride-0 batch
//! broadcasts cost no copy. f16 and bf16 are staged: converted to f32 scratch, multiplied in
//! f32, rounded once on store. (gemm's own f16 kernel also computes in f32, but rounds the
//! partial sums to f16 between its k-blocks, and measured slower than staging here.)
//! Big matrices use gemm's own threading; many small ones are spread over the batch instead.

use gemm::Parallelism;
use manychips_api::Layout;
use rayon::prelude::*;

use super::elementwise::load;
use crate::element::Elem;

/// Below this many multiply-adds per matrix gemm runs single-threaded, and a batch of
/// them is parallelised over the batch instead.
const SMALL_MATRIX: usize = 64 * 64 * 64;

/// Shapes and strides of one batched product, checked against the buffers.
struct Geometry {
    m: usize,
    n: usize,
    k: usize,
    /// Element offsets of each batch's `[lhs, rhs, out]` matrix.
    batches: Vec<[usize; 3]>,
    /// `(row, column)` strides of lhs, rhs and out, as gemm wants them.
    lhs: (isize, isize),
    rhs: (isize, isize),
    out: (isize, isize),
}

/// Why a matmul cannot run; the caller turns it into an error naming the op.
pub(crate) type GeometryError = &'static str;

impl Geometry {
    fn new(
        (ll, lhs_len): (&Layout, usize),
        (rl, rhs_len): (&Layout, usize),
        (ol, out_len): (&Layout, usize),
    ) -> Result<Self, GeometryError> {
        let rank = ol.rank();
        if rank < 2 || ll.rank() != rank || rl.rank() != rank {
            return Err("operands must have one rank of at least 2");
        }
        // gemm takes raw pointers: make sure every element any view names is in its buffer,
        // whatever the caller validated.
        for (l, len) in [(ll, lhs_len), (rl, rhs_len), (ol, out_len)] {
            match l.end() {
                Some(end) if end <= len => {}
                _ => return Err("a view reaches past the end of its buffer"),
            }
        }
        let b = rank - 2;
        let (m, k, n) = (ll.dims()[b], ll.dims()[b + 1], rl.dims()[b + 1]);
        // The raw-pointer calls below trust these, so they are checked here too.
        let fits = rl.dims()[b] == k
            && ol.dims()[b..] == [m, n]
            && ll.dims()[..b] == ol.dims()[..b]
            && rl.dims()[..b] == ol.dims()[..b];
        if !fits {
            return Err("operand shapes do not fit [m, k] x [k, n] -> [m, n]");
        }
        let mut batches = vec![[ll.offset, rl.offset, ol.offset]];
        for d in 0..b {
            let size = ol.dims()[d];
            let step = [ll.strides[d], rl.strides[d], ol.strides[d]];
            batches = batches
                .iter()
                .flat_map(|base| {
                    (0..size).map(move |i| std::array::from_fn(|j| base[j] + i * step[j]))
                })
                .collect();
        }
        let strides = |l: &Layout, rows: usize, cols: usize| {
            mat_strides(rows, cols, l.strides[b], l.strides[b + 1])
        };
        Ok(Geometry {
            m,
            n,
            k,
            batches,
            lhs: strides(ll, m, k).ok_or("stride too large")?,
            rhs: strides(rl, k, n).ok_or("stride too large")?,
            out: strides(ol, m, n).ok_or("stride too large")?,
        })
    }

    fn work(&self) -> usize {
        self.m.saturating_mul(self.n).saturating_mul(self.k)
    }
}

/// Row and column strides for gemm. A size-1 dim's stride is never used to address anything,
/// so it is replaced by the contiguous one: gemm picks its fast paths by strides.
fn mat_strides(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<(isize, isize)> {
    let (rs, cs) = match (rows == 1, cols == 1) {
        (true, true) => (1, 1),
        (true, false) => (cs.checked_mul(cols)?, cs),
        (false, true) => (rs, rs.checked_mul(rows)?),
        (false, false) => (rs, cs),
    };
    Some((isize::try_from(rs).ok()?, isize::try_from(cs).ok()?))
}

/// A raw pointer that may cross threads. Sound here because batches write disjoint elements
/// (the output layout does not overlap itself) and the inputs are only read.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: see the type's comment; the pointee outlives every task (they are joined before
// the borrow it came from ends).
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. (A method, so closures capture the `Send` wrapper, not the raw field.)
    fn get(self) -> *mut T {
        self.0
    }
}

/// `out = lhs · rhs` in f32, operands handed to gemm in place.
pub(crate) fn native(
    (lhs, ll): (&[f32], &Layout),
    (rhs, rl): (&[f32], &Layout),
    (out, ol): (&mut [f32], &Layout),
) -> Result<(), GeometryError> {
    let g = Geometry::new((ll, lhs.len()), (rl, rhs.len()), (ol, out.len()))?;
    if g.m == 0 || g.n == 0 || g.batches.is_empty() {
        return Ok(());
    }
    if g.k == 0 {
        return zero_out(&g, out);
    }
    let (lp, rp) = (SendPtr(lhs.as_ptr().cast_mut()), SendPtr(rhs.as_ptr().cast_mut()));
    let op = SendPtr(out.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let one = |[lo, ro, oo]: [usize; 3], par: Parallelism| {
        // SAFETY: `Geometry::new` checked that every element of every batch of each view
        // lies inside its slice, so the base pointers and every element gemm addresses (row
        // < m, column < n, depth < k along the given strides) are in bounds. `out` is
        // borrowed mutably for the whole call and never aliases the inputs (distinct
        // buffers), and gemm writes each output element once (non-overlapping layout).
        unsafe {
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                op.get().add(oo),
                g.out.1,
                g.out.0,
                false,
                lp.get().add(lo),
                g.lhs.1,
                g.lhs.0,
                rp.get().add(ro),
                g.rhs.1,
                g.rhs.0,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    };
    if g.work() < SMALL_MATRIX && g.batches.len() > 1 && threads > 1 {
        g.batches.par_iter().with_min_len(batch_grain(&g)).for_each(|&b| one(b, Parallelism::None));
    } else {
        let par = if g.work() < SMALL_MATRIX / 8 || threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        };
        for &b in &g.batches {
            one(b, par);
        }
    }
    Ok(())
}

/// Matrices per parallel task, so each task does at least ~a small matrix of work.
fn batch_grain(g: &Geometry) -> usize {
    (SMALL_MATRIX / g.work().max(1)).clamp(1, 64)
}

/// `out = lhs · rhs` for f16 and bf16: each batch's operands are converted to f32 scratch,
/// multiplied in f32 and rounded once on store.
pub(crate) fn staged<T: Elem>(
    (lhs, ll): (&[T], &Layout),
    (rhs, rl): (&[T], &Layout),
    (out, ol): (&mut [T], &Layout),
    scratch: &mut crate::storage::Scratch,
) -> Result<(), StagedError> {
    let g = Geometry::new((ll, lhs.len()), (rl, rhs.len()), (ol, out.len()))
        .map_err(StagedError::Geometry)?;
    if g.m == 0 || g.n == 0 || g.batches.is_empty() {
        return Ok(());
    }
    if g.k == 0 {
        return zero_out(&g, out).map_err(StagedError::Geometry);
    }
    let (m, n, k) = (g.m, g.n, g.k);
    let per_batch = m * k + k * n + m * n;
    let threads = rayon::current_num_threads();
    let op = SendPtr(out.as_mut_ptr());
    let run_batch = |buf: &mut [f32], [lo, ro, oo]: [usize; 3], par: Parallelism| {
        // Conversions are spread over threads too when gemm is (one matrix, big).
        let wide = matches!(par, Parallelism::Rayon(_));
        let (a, rest) = buf.split_at_mut(m * k);
        let (b, c) = rest.split_at_mut(k * n);
        let c = &mut c[..m * n];
        let (lrs, lcs) = (g.lhs.0 as usize, g.lhs.1 as usize);
        rows_mut(a, k, wide, |i, row| load(lhs, lo + i * lrs, lcs, row));
        let (rrs, rcs) = (g.rhs.0 as usize, g.rhs.1 as usize);
        rows_mut(b, n, wide, |i, row| load(rhs, ro + i * rrs, rcs, row));
        // SAFETY: a, b, c are distinct contiguous scratch slices of exactly m×k, k×n and
        // m×n f32s, addressed with row-major strides.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
        let (ors, ocs) = (g.out.0 as usize, g.out.1 as usize);
        let store_row = |i: usize, row: &[f32]| {
            let first = oo + i * ors;
            if ocs == 1 {
                // SAFETY: `Geometry::new` checked that this batch's output elements lie inside
                // `out`, which stays mutably borrowed until every task is done. Rows of one
                // batch and rows of different batches are disjoint (non-overlapping output
                // layout), so no two of these slices overlap.
                let dst = unsafe { std::slice::from_raw_parts_mut(op.get().add(first), n) };
                T::store_f32(row, dst);
            } else {
                for (j, &v) in row.iter().enumerate() {
                    // SAFETY: as above, element by element.
                    unsafe { op.get().add(first + j * ocs).write(T::from_f32(v)) };
                }
            }
        };
        if wide {
            c.par_chunks_exact(n).enumerate().for_each(|(i, row)| store_row(i, row));
        } else {
            c.chunks_exact(n).enumerate().for_each(|(i, row)| store_row(i, row));
        }
    };
    if g.work() < SMALL_MATRIX && g.batches.len() > 1 && threads > 1 {
        g.batches.par_chunks(batch_grain(&g)).for_each_init(
            || vec![0.0f32; per_batch],
            |buf, group| {
                for &b in group {
                    run_batch(buf, b, Parallelism::None);
                }
            },
        );
    } else {
        let par = if g.work() < SMALL_MATRIX / 8 || threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        };
        let buf = scratch.f32s(per_batch).ok_or(StagedError::Oom)?;
        for &b in &g.batches {
            run_batch(buf, b, par);
        }
    }
    Ok(())
}

/// Calls `f(i, row)` for each `width`-long row of `buf`, on all threads if `wide`.
fn rows_mut(buf: &mut [f32], width: usize, wide: bool, f: impl Fn(usize, &mut [f32]) + Sync) {
    if wide {
        buf.par_chunks_exact_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        buf.chunks_exact_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Why a staged matmul failed.
#[derive(Debug)]
pub(crate) enum StagedError {
    Geometry(GeometryError),
    Oom,
}

/// `k == 0`: every output element is an empty sum.
fn zero_out<T: Elem>(g: &Geometry, out: &mut [T]) -> Result<(), GeometryError> {
    let (rs, cs) = (g.out.0 as usize, g.out.1 as usize);
    for &[_, _, oo] in &g.batches {
        for i in 0..g.m {
            for j in 0..g.n {
                let idx = oo + i * rs + j * cs;
                *out.get_mut(idx).ok_or("output out of bounds")? = T::ZERO;
            }
        }
    }
    Ok(())
}
