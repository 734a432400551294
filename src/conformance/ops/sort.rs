//! `argsort` along an axis, ascending and descending, on every dtype: lanes of awkward
//! lengths (1, primes, around powers of two), strided inputs and outputs, many ties (the
//! order must be stable), and for floats NaNs, infinities and both zeros.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::{DType, Op};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host};
use super::super::runner::Runner;
use super::super::values::{Dist, round_to};
use super::host;

pub(super) fn run(r: &mut Runner<'_>) {
    for descending in [false, true] {
        let name = if descending { "argsort.descending" } else { "argsort.ascending" };
        for dtype in DType::ALL {
            let needs = [(dtype, ""), (DType::U32, "output")];
            let Some(mut rng) = r.begin(name, dtype.name(), &needs) else { continue };
            for (i, f) in forms(r.full()).into_iter().enumerate() {
                let x = values(&mut rng, dtype, &f.dims, i % 2 == 0);
                let x = Operand::new(dtype, x).at(f.input);
                let expected = reference::argsort(&x.logical(), f.axis, descending);
                let out = Output::new(DType::U32, &f.dims).at(f.out);
                let axis = f.axis;
                let case = Case::new(vec![x], out, expected, move |v, out| Op::ArgSort {
                    input: v[0].clone(),
                    out,
                    axis,
                    descending,
                });
                r.run_case(name, dtype.name(), case);
            }
        }
    }
}

struct Form {
    dims: Vec<usize>,
    axis: usize,
    input: Place,
    out: Place,
}

fn form(dims: &[usize], axis: usize, input: Place, out: Place) -> Form {
    Form { dims: dims.to_vec(), axis, input, out }
}

fn forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[1], 0, Contiguous, Contiguous),
        form(&[2], 0, Offset, Contiguous),
        form(&[7], 0, Contiguous, Padded),
        form(&[5, 13], 1, Contiguous, Contiguous),
        form(&[13, 5], 0, Reversed, Contiguous),
        form(&[3, 4, 5], 1, Padded, Reversed),
        form(&[2, 64], 1, Contiguous, Offset),
        form(&[3, 100], 1, SwapLast, Contiguous),
        form(&[4, 1], 1, Contiguous, Contiguous),
        form(&[0, 5], 1, Contiguous, Contiguous),
        form(&[1000], 0, Contiguous, Contiguous),
    ];
    if full {
        v.push(form(&[2, 4099], 1, Contiguous, Contiguous));
    }
    v
}

/// Random values of `dtype`: with `ties`, a handful of distinct ones (a stable sort must
/// keep their order); else spread over the dtype. Floats get NaNs, infinities and both
/// zeros mixed in.
fn values(rng: &mut ChaCha8Rng, dtype: DType, dims: &[usize], ties: bool) -> Host {
    let dist = match (ties, dtype.is_signed_int() || dtype.is_float()) {
        (true, true) => Dist::Int(-3, 3),
        (true, false) => Dist::Int(0, 5),
        (false, _) => Dist::Data,
    };
    let mut x = host(rng, dtype, dist, dims);
    if dtype.is_float() {
        let specials = [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0];
        for v in &mut x.data {
            if rng.random_bool(0.15) {
                *v = round_to(dtype, specials[rng.random_range(0..specials.len())]);
            }
        }
    }
    x
}
