//! Case generators, one file per op family. Each walks its ops and dtypes, asks the runner
//! to `begin` the (op, dtype) pair (which filters and records skips), and describes its
//! cases; the runner does the rest.

mod attention;
mod contract;
mod elementwise;
mod fused;
mod fused_reduce;
mod index;
mod matmul;
mod movement;
mod reduce;
mod sort;

use rand_chacha::ChaCha8Rng;

use crate::DType;

use super::case::Place;
use super::reference::{Host, numel};
use super::runner::Runner;
use super::values::{Dist, random};

pub(crate) fn run_all(r: &mut Runner<'_>) {
    contract::run(r);
    elementwise::run(r);
    matmul::run(r);
    reduce::run(r);
    movement::run(r);
    index::run(r);
    sort::run(r);
    fused::run(r);
    fused_reduce::run(r);
    attention::run(r);
}

/// A random tensor of `dims`, values from `dist` rounded to `dtype`.
fn host(rng: &mut ChaCha8Rng, dtype: DType, dist: Dist, dims: &[usize]) -> Host {
    Host::new(dims, random(rng, dtype, dist, numel(dims)))
}

/// How one operand of a case is stored: its own shape (broadcast to the case's shape where
/// smaller) and placement.
#[derive(Clone, Debug)]
struct Arg {
    src: Vec<usize>,
    place: Place,
}

fn arg(src: &[usize], place: Place) -> Arg {
    Arg { src: src.to_vec(), place }
}
