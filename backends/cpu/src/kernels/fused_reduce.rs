//! Fused reductions (`Op::FusedReduce`): the program's values are computed a block of whole
//! rows at a time into f32 scratch that stays in cache, and each row is reduced there, so the
//! inputs are read once and nothing of their size is written. A variance, or the row dot
//! product of a softmax backward, costs one pass over its inputs.
//!
//! Rows sum in f32 blocks added in f64, and max/min fold as `Op::Reduce` folds a contiguous
//! row, so a last-axis reduction equals its decomposition (the program into a temporary,
//! then `Op::Reduce`) exactly.

use manychips_api::{Instr, Layout, ReduceOp};
use rayon::prelude::*;

use super::elementwise::{BLOCK, Map, map};
use super::fused::{self, Src};
use super::simd;
use crate::element::Elem;

/// Values computed per block (whole rows, at least one): 512 KiB of f32, within L2.
const BLOCK_VALUES: usize = 128 * 1024;

thread_local! {
    /// Each pool thread's block of values, kept from op to op: a fresh one per block would
    /// be zeroed (and, at this size, page-faulted in) every time.
    static BLOCK_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out = op(program(inputs))` along `axis`; validated: the inputs share the iteration
/// shape, `out` has it with `axis` set to 1, `op` is not arg-max.
pub(crate) fn run<D: Elem>(
    program: &[Instr],
    op: ReduceOp,
    axis: usize,
    inputs: &[(Src<'_>, &Layout)],
    (out, ol): (&mut [D], &Layout),
) {
    let rank = inputs[0].1.rank();
    // The reduced axis last; the others, in their order, enumerate the rows.
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
    perm.push(axis);
    let layouts: Vec<Layout> = inputs.iter().map(|(_, l)| l.permuted(&perm)).collect();
    let dims = layouts[0].dims().to_vec();
    let len = dims[rank - 1];
    let rows: usize = dims[..rank - 1].iter().product();
    if rows == 0 {
        return;
    }
    let mut results = vec![0f32; rows];
    if len == 0 {
        // Max and min over nothing are refused by validation; a mean of nothing is NaN.
        results.fill(if op == ReduceOp::Mean { f32::NAN } else { 0.0 });
    } else {
        // Blocks are cut along the outermost row dim: `per_outer` rows for each index of it.
        let outer = if rank >= 2 { dims[0] } else { 1 };
        let per_outer = rows / outer;
        // Up to BLOCK_VALUES each, and about four per thread so that none waits long on the
        // last one (two blocks of 21 and 11 left one thread a third of the work).
        let tasks = 4 * rayon::current_num_threads();
        let per_block = (BLOCK_VALUES / (per_outer * len)).clamp(1, outer.div_ceil(tasks).max(1));
        results.par_chunks_mut(per_block * per_outer).enumerate().for_each(|(b, res)| {
            let count = res.len() / per_outer;
            let mut block_dims = dims.clone();
            let block: Vec<(Src<'_>, Layout)> = if rank >= 2 {
                block_dims[0] = count;
                let start = b * per_block;
                let narrow = |l: &Layout| l.narrowed(0, start, count);
                inputs.iter().zip(&layouts).map(|((s, _), l)| (*s, narrow(l))).collect()
            } else {
                inputs.iter().zip(&layouts).map(|((s, _), l)| (*s, l.clone())).collect()
            };
            let refs: Vec<(Src<'_>, &Layout)> = block.iter().map(|(s, l)| (*s, l)).collect();
            BLOCK_SCRATCH.with_borrow_mut(|scratch| {
                let n = res.len() * len;
                if scratch.len() < n {
                    scratch.resize(n, 0.0);
                }
                let values = &mut scratch[..n];
                fused::run_here::<f32>(program, &refs, (values, &Layout::contiguous(block_dims)));
                for (r, row) in res.iter_mut().zip(values.chunks_exact(len)) {
                    *r = fold(op, row);
                }
            });
        });
    }
    // The output permuted the same way ends in the reduced dim, of size 1.
    let ol = ol.permuted(&perm);
    map::<f32, D>(Map::Identity, (&results, &Layout::contiguous(ol.shape.clone())), (out, &ol));
}

/// One row's reduction, as `Op::Reduce` folds a contiguous row.
fn fold(op: ReduceOp, row: &[f32]) -> f32 {
    let sum = || row.chunks(BLOCK).map(|c| simd::sum(c) as f64).sum::<f64>();
    match op {
        ReduceOp::Sum => sum() as f32,
        ReduceOp::Mean => (sum() / row.len() as f64) as f32,
        ReduceOp::Max => simd::max(row),
        ReduceOp::Min => simd::min(row),
        // Refused by validation; never asked for.
        ReduceOp::ArgMax | ReduceOp::ArgMin => f32::NAN,
    }
}
