//! Elementwise ops: unary, binary, affine, compare, where; integer arithmetic with its
//! wrapping, floor division and zero divisors (each also on a table of edge values).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::{BinaryOp, CompareOp, DType, Op, UnaryOp};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host, numel};
use super::super::runner::Runner;
use super::super::values::Dist;
use super::{Arg, arg, host};

pub(super) fn run(r: &mut Runner<'_>) {
    unary(r);
    binary(r);
    affine(r);
    compare(r);
    select(r);
}

/// One-input layouts: the logical shape, the input (broadcast to it where smaller) and the
/// output's placement.
struct Form {
    dims: Vec<usize>,
    input: Arg,
    out: Place,
}

fn one(dims: &[usize], place: Place, out: Place) -> Form {
    Form { dims: dims.to_vec(), input: arg(dims, place), out }
}

fn one_bcast(dims: &[usize], src: &[usize], place: Place, out: Place) -> Form {
    Form { dims: dims.to_vec(), input: arg(src, place), out }
}

fn forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        one(&[], Contiguous, Contiguous),
        one(&[1], Contiguous, Contiguous),
        one(&[7], Offset, Contiguous),
        one(&[13], Contiguous, Padded),
        one(&[127], Padded, Contiguous),
        one(&[33], Contiguous, Offset),
        one(&[65], Reversed, Contiguous),
        one(&[100], Contiguous, Contiguous),
        one(&[3, 4, 5], Reversed, Contiguous),
        one(&[2, 3, 4, 5], Padded, Padded),
        one(&[7, 13], SwapLast, Reversed),
        one_bcast(&[4, 5], &[1, 5], Contiguous, Contiguous),
        one_bcast(&[3, 4, 5], &[3, 1, 5], Offset, Contiguous),
        one_bcast(&[100], &[1], Contiguous, Offset),
        one(&[0], Contiguous, Contiguous),
        one(&[3, 0, 2], Padded, Padded),
        one(&[4099], Contiguous, Contiguous),
    ];
    if full {
        v.push(one(&[1, 65537], Contiguous, Contiguous));
        v.push(one(&[256, 257], SwapLast, Contiguous));
    }
    v
}

fn operand(rng: &mut ChaCha8Rng, dtype: DType, dist: Dist, a: &Arg, dims: &[usize]) -> Operand {
    Operand::new(dtype, host(rng, dtype, dist, &a.src)).at(a.place).broadcast(dims)
}

fn unary(r: &mut Runner<'_>) {
    for op in UnaryOp::ALL {
        let name = format!("unary.{}", op.name());
        let dist = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => Dist::Uniform(0.1, 4.0),
            _ => Dist::Uniform(-4.0, 4.0),
        };
        let ints: &[DType] = match op {
            UnaryOp::Neg | UnaryOp::Abs => &[DType::I32, DType::I64],
            _ => &[],
        };
        for &dtype in DType::FLOATS.iter().chain(ints) {
            let Some(mut rng) = r.begin(&name, dtype.name(), &[(dtype, "")]) else { continue };
            let mut cases: Vec<(Form, Host)> = forms(r.full())
                .into_iter()
                .map(|f| {
                    let dist = if dtype.is_int() { Dist::Data } else { dist };
                    let x = host(&mut rng, dtype, dist, &f.input.src);
                    (f, x)
                })
                .collect();
            if dtype.is_int() {
                let edges = int_edges(dtype);
                let n = edges.len();
                cases.push((one(&[n], Contiguous, Contiguous), Host::new([n], edges)));
            }
            for (f, x) in cases {
                let x = Operand::new(dtype, x).at(f.input.place).broadcast(&f.dims);
                let expected = if dtype.is_int() {
                    reference::unary_int(op, dtype, &x.logical())
                } else {
                    reference::unary(op, &x.logical())
                };
                let out = Output::new(dtype, &f.dims).at(f.out);
                let case = Case::new(vec![x], out, expected, move |v, out| Op::Unary {
                    op,
                    input: v[0].clone(),
                    out,
                });
                r.run_case(&name, dtype.name(), case);
            }
        }
    }
}

/// The values where integer arithmetic goes wrong first: zero, ±1, small values of both
/// signs, the ends of the range and their neighbours (rounded to `dtype`, so `i64::MAX` is
/// represented by 2^63, which the kit stores as `i64::MAX`).
fn int_edges(dtype: DType) -> Vec<f64> {
    let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
    let mut v = vec![0.0, 1.0, 2.0, 3.0, 7.0, hi as f64, (hi - 1) as f64];
    if dtype.is_signed_int() {
        v.extend([-1.0, -2.0, -3.0, -7.0, lo as f64, (lo + 1) as f64]);
    } else {
        v.push(hi as f64 / 2.0 + 0.5);
    }
    v.into_iter().map(|x| super::super::values::round_to(dtype, x)).collect()
}

fn affine(r: &mut Runner<'_>) {
    let params = [(1.5, -0.25), (0.1, 3.0), (-2.0, 0.0), (0.0, 1.0), (1.0, 0.0), (-0.75, 100.0)];
    for dtype in DType::FLOATS {
        let Some(mut rng) = r.begin("affine", dtype.name(), &[(dtype, "")]) else { continue };
        for (i, f) in forms(r.full()).into_iter().enumerate() {
            let (mul, add) = params[i % params.len()];
            let x = operand(&mut rng, dtype, Dist::Uniform(-4.0, 4.0), &f.input, &f.dims);
            let expected = reference::affine(&x.logical(), mul, add);
            let out = Output::new(dtype, &f.dims).at(f.out);
            let case = Case::new(vec![x], out, expected, move |v, out| Op::Affine {
                input: v[0].clone(),
                out,
                mul,
                add,
            });
            r.run_case("affine", dtype.name(), case);
        }
    }
}

/// Two-input layouts with numpy broadcasting through stride-0 views.
struct Form2 {
    dims: Vec<usize>,
    lhs: Arg,
    rhs: Arg,
    out: Place,
}

fn two(dims: &[usize], lhs: Arg, rhs: Arg, out: Place) -> Form2 {
    Form2 { dims: dims.to_vec(), lhs, rhs, out }
}

fn forms2(full: bool) -> Vec<Form2> {
    let mut v = vec![
        two(&[], arg(&[], Contiguous), arg(&[], Contiguous), Contiguous),
        two(&[1], arg(&[1], Contiguous), arg(&[1], Offset), Contiguous),
        two(&[7], arg(&[7], Offset), arg(&[7], Padded), Contiguous),
        // tensor ∘ scalar, scalar ∘ tensor, [1] ∘ [N]
        two(&[13], arg(&[13], Contiguous), arg(&[], Contiguous), Contiguous),
        two(&[13], arg(&[], Offset), arg(&[13], Contiguous), Padded),
        two(&[100], arg(&[1], Contiguous), arg(&[100], Contiguous), Contiguous),
        // [3, 1, 5] ∘ [4, 5] -> [3, 4, 5]
        two(&[3, 4, 5], arg(&[3, 1, 5], Contiguous), arg(&[4, 5], Contiguous), Contiguous),
        two(&[127], arg(&[127], Contiguous), arg(&[127], Contiguous), Offset),
        two(&[33, 65], arg(&[33, 65], SwapLast), arg(&[33, 65], Contiguous), Contiguous),
        two(&[2, 3, 4, 5], arg(&[2, 3, 4, 5], Padded), arg(&[1, 3, 1, 5], Reversed), Padded),
        two(&[7, 13], arg(&[7, 13], Reversed), arg(&[7, 1], Contiguous), Reversed),
        two(&[0, 5], arg(&[0, 5], Contiguous), arg(&[1, 5], Contiguous), Contiguous),
        two(&[3, 0], arg(&[3, 0], Contiguous), arg(&[3, 1], Padded), Contiguous),
        two(&[4099], arg(&[4099], Contiguous), arg(&[4099], Offset), Contiguous),
    ];
    if full {
        let c = Contiguous;
        v.push(two(&[1, 65537], arg(&[1, 65537], c), arg(&[1, 65537], c), c));
        v.push(two(&[256, 257], arg(&[256, 257], SwapLast), arg(&[257], c), c));
    }
    v
}

/// The inputs of a binary op: floats in ranges where it is smooth; integers over their whole
/// range (sums and products wrap), divisors small and often zero.
fn binary_dists(op: BinaryOp, dtype: DType) -> (Dist, Dist) {
    let divides = matches!(op, BinaryOp::Div | BinaryOp::Rem);
    match (dtype.is_int(), divides) {
        (true, true) if dtype.is_signed_int() => (Dist::Data, Dist::Int(-9, 9)),
        (true, true) => (Dist::Data, Dist::Int(0, 9)),
        (true, false) => (Dist::Data, Dist::Data),
        (false, true) => (Dist::Uniform(-4.0, 4.0), Dist::AwayFromZero(0.5, 4.0)),
        (false, false) if op == BinaryOp::Pow => {
            (Dist::Uniform(0.1, 4.0), Dist::Uniform(-2.0, 2.0))
        }
        (false, false) => (Dist::Uniform(-4.0, 4.0), Dist::Uniform(-4.0, 4.0)),
    }
}

fn binary(r: &mut Runner<'_>) {
    for op in BinaryOp::ALL {
        let name = format!("binary.{}", op.name());
        for dtype in DType::ALL {
            if dtype.is_int() && op == BinaryOp::Pow {
                continue;
            }
            let (dl, dr) = binary_dists(op, dtype);
            let Some(mut rng) = r.begin(&name, dtype.name(), &[(dtype, "")]) else { continue };
            let mut cases: Vec<(Form2, Host, Host)> = forms2(r.full())
                .into_iter()
                .map(|f| {
                    let a = host(&mut rng, dtype, dl, &f.lhs.src);
                    let b = host(&mut rng, dtype, dr, &f.rhs.src);
                    (f, a, b)
                })
                .collect();
            if dtype.is_int() {
                // Every pair of edge values.
                let edges = int_edges(dtype);
                let n = edges.len() * edges.len();
                let lhs = edges.iter().flat_map(|&x| edges.iter().map(move |_| x)).collect();
                let rhs = edges.iter().flat_map(|_| edges.iter().copied()).collect();
                let c = Contiguous;
                let f = two(&[n], arg(&[n], c), arg(&[n], c), c);
                cases.push((f, Host::new([n], lhs), Host::new([n], rhs)));
            }
            for (f, a, b) in cases {
                let a = Operand::new(dtype, a).at(f.lhs.place).broadcast(&f.dims);
                let b = Operand::new(dtype, b).at(f.rhs.place).broadcast(&f.dims);
                let expected = if dtype.is_int() {
                    reference::binary_int(op, dtype, &a.logical(), &b.logical())
                } else {
                    reference::binary(op, &a.logical(), &b.logical())
                };
                let out = Output::new(dtype, &f.dims).at(f.out);
                let case = Case::new(vec![a, b], out, expected, move |v, out| Op::Binary {
                    op,
                    lhs: v[0].clone(),
                    rhs: v[1].clone(),
                    out,
                });
                r.run_case(&name, dtype.name(), case);
            }
        }
    }
}

/// Makes about a third of `lhs` (when it is not broadcast) equal to `rhs`, so that eq, le
/// and ge meet exact ties.
fn with_ties(rng: &mut ChaCha8Rng, lhs: &mut Operand, rhs: &Operand) {
    if lhs.src.dims != lhs.dims {
        return;
    }
    let rhs = rhs.logical();
    for (l, &r) in lhs.src.data.iter_mut().zip(&rhs.data) {
        if rng.random_bool(1.0 / 3.0) {
            *l = r;
        }
    }
}

fn compare(r: &mut Runner<'_>) {
    for op in CompareOp::ALL {
        let name = format!("compare.{}", op.name());
        for dtype in DType::ALL {
            let Some(mut rng) = r.begin(&name, dtype.name(), &[(dtype, "")]) else { continue };
            for (i, f) in forms2(r.full()).into_iter().enumerate() {
                let mut a = operand(&mut rng, dtype, Dist::Data, &f.lhs, &f.dims);
                let b = operand(&mut rng, dtype, Dist::Data, &f.rhs, &f.dims);
                with_ties(&mut rng, &mut a, &b);
                let expected = reference::compare(op, &a.logical(), &b.logical());
                // Alternately u8 masks and 0/1 in the operands' dtype.
                let out_dtype = if i % 2 == 0 && r.claims(DType::U8) { DType::U8 } else { dtype };
                let out = Output::new(out_dtype, &f.dims).at(f.out);
                let case = Case::new(vec![a, b], out, expected, move |v, out| Op::Compare {
                    op,
                    lhs: v[0].clone(),
                    rhs: v[1].clone(),
                    out,
                });
                r.run_case(&name, dtype.name(), case);
            }
        }
    }
}

/// Three-input layouts for `where`: condition, on_true, on_false.
struct Form3 {
    dims: Vec<usize>,
    cond: Arg,
    on_true: Arg,
    on_false: Arg,
    out: Place,
}

fn three(dims: &[usize], cond: Arg, on_true: Arg, on_false: Arg, out: Place) -> Form3 {
    Form3 { dims: dims.to_vec(), cond, on_true, on_false, out }
}

fn forms3(full: bool) -> Vec<Form3> {
    let c = Contiguous;
    let mut v = vec![
        three(&[], arg(&[], c), arg(&[], c), arg(&[], c), c),
        three(&[7], arg(&[7], c), arg(&[7], Offset), arg(&[7], Padded), c),
        three(&[13], arg(&[13], c), arg(&[], c), arg(&[1], c), Padded),
        three(&[3, 4, 5], arg(&[3, 1, 5], c), arg(&[4, 5], c), arg(&[3, 4, 5], Reversed), c),
        three(
            &[33, 65],
            arg(&[33, 65], SwapLast),
            arg(&[33, 65], Padded),
            arg(&[33, 65], c),
            Padded,
        ),
        three(&[0, 3], arg(&[0, 3], c), arg(&[1, 3], c), arg(&[0, 3], c), c),
        three(&[4099], arg(&[4099], Offset), arg(&[4099], c), arg(&[4099], c), c),
    ];
    if full {
        v.push(three(&[1, 65537], arg(&[1, 65537], c), arg(&[1, 65537], c), arg(&[1], c), c));
    }
    v
}

/// A `u8` condition: half zeros, the rest 1, 2 or 255 (any nonzero byte is true).
fn condition(rng: &mut ChaCha8Rng, dims: &[usize]) -> Host {
    let data = (0..numel(dims))
        .map(|_| if rng.random_bool(0.5) { 0.0 } else { [1.0, 2.0, 255.0][rng.random_range(0..3)] })
        .collect();
    Host::new(dims, data)
}

fn select(r: &mut Runner<'_>) {
    for dtype in DType::ALL {
        let needs = [(dtype, ""), (DType::U8, "condition")];
        let Some(mut rng) = r.begin("where", dtype.name(), &needs) else { continue };
        for f in forms3(r.full()) {
            let cond = Operand::new(DType::U8, condition(&mut rng, &f.cond.src))
                .at(f.cond.place)
                .broadcast(&f.dims);
            let t = operand(&mut rng, dtype, Dist::Data, &f.on_true, &f.dims);
            let e = operand(&mut rng, dtype, Dist::Data, &f.on_false, &f.dims);
            let expected = reference::select(&cond.logical(), &t.logical(), &e.logical());
            let out = Output::new(dtype, &f.dims).at(f.out);
            let case = Case::new(vec![cond, t, e], out, expected, |v, out| Op::Where {
                cond: v[0].clone(),
                on_true: v[1].clone(),
                on_false: v[2].clone(),
                out,
            });
            r.run_case("where", dtype.name(), case);
        }
    }
}
