//! Batched matmul: awkward sizes, transposed operands (swapped strides), batches broadcast by
//! stride 0, sliced operands and outputs, empty dims.

use crate::{DType, Op};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference;
use super::super::runner::Runner;
use super::super::values::Dist;
use super::host;

struct Mm {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    lhs: Place,
    rhs: Place,
    /// Store one batch of the operand and broadcast it over the batch dims (stride 0).
    lhs_shared: bool,
    rhs_shared: bool,
    out: Place,
}

fn mm(batch: &[usize], m: usize, k: usize, n: usize) -> Mm {
    Mm {
        batch: batch.to_vec(),
        m,
        k,
        n,
        lhs: Contiguous,
        rhs: Contiguous,
        lhs_shared: false,
        rhs_shared: false,
        out: Contiguous,
    }
}

impl Mm {
    fn places(mut self, lhs: Place, rhs: Place, out: Place) -> Mm {
        (self.lhs, self.rhs, self.out) = (lhs, rhs, out);
        self
    }

    fn shared(mut self, lhs: bool, rhs: bool) -> Mm {
        (self.lhs_shared, self.rhs_shared) = (lhs, rhs);
        self
    }
}

fn forms(full: bool) -> Vec<Mm> {
    let mut v = vec![
        mm(&[], 1, 1, 1),
        mm(&[], 7, 13, 5),
        mm(&[], 13, 1, 7),
        mm(&[], 1, 127, 1),
        mm(&[], 5, 3, 1),
        mm(&[], 64, 64, 64),
        mm(&[], 127, 33, 65),
        // Rows of four (vector loads) with a part tile of k, m and n.
        mm(&[], 36, 20, 44),
        // Transposed lhs, rhs, both.
        mm(&[], 33, 17, 9).places(SwapLast, Contiguous, Contiguous),
        mm(&[], 17, 33, 9).places(Contiguous, SwapLast, Contiguous),
        mm(&[], 7, 13, 5).places(SwapLast, SwapLast, Contiguous),
        // Slices of bigger buffers in and out.
        mm(&[], 20, 30, 10).places(Padded, Offset, Padded),
        mm(&[], 65, 100, 33).places(SwapLast, Padded, Reversed),
        // Batches: plain, a shared (stride-0) rhs or lhs, rank 4.
        mm(&[3], 7, 13, 5),
        mm(&[3], 7, 13, 5).shared(false, true),
        mm(&[3], 7, 13, 5).shared(true, false).places(SwapLast, Contiguous, Contiguous),
        mm(&[2, 3], 5, 4, 6).places(Reversed, Padded, Contiguous),
        mm(&[2, 3], 9, 8, 7).shared(false, true).places(Contiguous, SwapLast, Padded),
        // Empty dims: m = 0, k = 0 (the result is all zeros), n = 0, batch 0.
        mm(&[], 0, 5, 3),
        mm(&[], 5, 0, 3),
        mm(&[], 5, 3, 0),
        mm(&[0], 2, 3, 4),
        // A long inner dim, where summation order matters.
        mm(&[], 2, 4099, 3),
        // Outputs large enough for the 128×128 register blocks: edges of m, n and k with
        // vector loads, then with scalar ones.
        mm(&[], 130, 37, 140),
        mm(&[], 70, 9, 250).places(Contiguous, SwapLast, Padded),
    ];
    if full {
        v.push(mm(&[], 256, 256, 256));
        v.push(mm(&[], 257, 129, 255).places(SwapLast, Contiguous, Contiguous));
        v.push(mm(&[4], 128, 64, 96).shared(false, true));
        v.push(mm(&[], 1, 65537, 1));
        // Whole 128×256 staged tiles (the loads without bounds tests), batched; then a part
        // tile of n behind a padded lhs.
        v.push(mm(&[2], 128, 16, 256).shared(false, true));
        v.push(mm(&[], 136, 24, 264).places(Padded, Contiguous, Contiguous));
    }
    v
}

pub(super) fn run(r: &mut Runner<'_>) {
    for dtype in DType::FLOATS {
        let Some(mut rng) = r.begin("matmul", dtype.name(), &[(dtype, "")]) else { continue };
        for f in forms(r.full()) {
            let dist = Dist::Uniform(-2.0, 2.0);
            let dims = |a: usize, b: usize| [f.batch.clone(), vec![a, b]].concat();
            let stored = |shared: bool, a: usize, b: usize| {
                if shared { [vec![1; f.batch.len()], vec![a, b]].concat() } else { dims(a, b) }
            };
            let (ld, rd, od) = (dims(f.m, f.k), dims(f.k, f.n), dims(f.m, f.n));
            let lhs =
                Operand::new(dtype, host(&mut rng, dtype, dist, &stored(f.lhs_shared, f.m, f.k)))
                    .at(f.lhs)
                    .broadcast(&ld);
            let rhs =
                Operand::new(dtype, host(&mut rng, dtype, dist, &stored(f.rhs_shared, f.k, f.n)))
                    .at(f.rhs)
                    .broadcast(&rd);
            let expected = reference::matmul(&lhs.logical(), &rhs.logical());
            let out = Output::new(dtype, &od).at(f.out);
            let case = Case::new(vec![lhs, rhs], out, expected, |v, out| Op::Matmul {
                lhs: v[0].clone(),
                rhs: v[1].clone(),
                out,
            });
            r.run_case("matmul", dtype.name(), case);
        }
    }
}
