//! Data movement: cast (every pair of dtypes), copy (strided in and out), concat, fill.

use crate::{DType, Op};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host, numel};
use super::super::runner::Runner;
use super::super::tolerance::Expected;
use super::super::values::{Dist, round_to};
use super::{Arg, arg, host};

pub(super) fn run(r: &mut Runner<'_>) {
    cast(r);
    copy(r);
    concat(r);
    fill(r);
}

/// A one-input layout: logical shape, the stored input (broadcast where smaller), output.
struct Form {
    dims: Vec<usize>,
    input: Arg,
    out: Place,
}

fn one(dims: &[usize], input: Arg, out: Place) -> Form {
    Form { dims: dims.to_vec(), input, out }
}

fn cast_forms(full: bool) -> Vec<Form> {
    let c = Contiguous;
    let mut v = vec![
        one(&[], arg(&[], c), c),
        one(&[7], arg(&[7], Offset), c),
        one(&[127], arg(&[127], c), Padded),
        one(&[33, 65], arg(&[33, 65], SwapLast), c),
        one(&[4, 5], arg(&[1, 5], c), c),
        one(&[0], arg(&[0], c), c),
        one(&[4099], arg(&[4099], c), c),
    ];
    if full {
        v.push(one(&[1, 65537], arg(&[1, 65537], c), c));
    }
    v
}

/// Random inputs for a cast from `src` to `dst`: floats over ±300 (fractions, negatives and
/// values past 255 for the integer targets, rounding for the narrower floats), 32-bit
/// integers within 2^24 towards floats (so that the one rounding is the cast's own) and over
/// the whole range towards integers (saturation), any `u8`, `i64`s exact as f64 (their f32
/// rounding is then the cast's own too).
fn cast_dist(src: DType, dst: DType) -> Dist {
    match src {
        DType::F32 | DType::F16 | DType::BF16 => Dist::Uniform(-300.0, 300.0),
        DType::U32 if dst.is_float() => Dist::Int(0, 1 << 24),
        DType::I32 if dst.is_float() => Dist::Int(-(1 << 24), 1 << 24),
        DType::U32 | DType::U8 | DType::I32 | DType::I64 => Dist::Data,
    }
}

/// Edge values of a cast from `src` to `dst`, rounded to `src`: NaN and infinities, ties of
/// the float targets (1 + odd multiples of half their ulp), saturation of the integer ones,
/// overflow of f16.
fn cast_specials(src: DType, dst: DType) -> Vec<f64> {
    let mut v: Vec<f64> = match src {
        DType::F32 | DType::F16 | DType::BF16 => {
            let mut v = vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                -0.5,
                0.5,
                0.999,
                1.0,
                -1.0,
                255.5,
                256.0,
                65504.0,
                70000.0,
                1e5,
                -1e5,
                5e9,
            ];
            for p in [11, 8] {
                let half_ulp = 2f64.powi(-p);
                v.extend([1.0 + half_ulp, 1.0 + 3.0 * half_ulp, -(1.0 + 5.0 * half_ulp)]);
            }
            v
        }
        DType::U32 => {
            let mut v = vec![0.0, 1.0, 255.0, 256.0, 257.0, 259.0, 2049.0, 2051.0, 4097.0];
            v.extend([65504.0, 65535.0, 65536.0, 16_777_215.0, 16_777_216.0]);
            // A bf16 tie above 2^22 and one past it (low bits that a conversion through
            // 20-bit truncation loses).
            v.extend([4_210_688.0, 4_210_689.0]);
            if !matches!(dst, DType::F16 | DType::BF16) {
                v.extend([16_777_217.0, 16_777_219.0, 3_000_000_001.0, 4_294_967_295.0]);
            }
            v
        }
        DType::U8 => (0..=255).map(f64::from).collect(),
        DType::I32 | DType::I64 => {
            let mut v = vec![0.0, 1.0, -1.0, 127.0, 128.0, 255.0, 256.0, -128.0, -129.0];
            v.extend([2049.0, -2051.0, 65504.0, -65520.0, 16_777_216.0, -16_777_215.0]);
            v.extend([4_210_688.0, -4_210_689.0]);
            if !matches!(dst, DType::F16 | DType::BF16) {
                v.extend([16_777_217.0, -16_777_219.0, 2_147_483_647.0, -2_147_483_648.0]);
                v.extend([4_294_967_295.0, 4_294_967_296.0]);
            }
            if src == DType::I64 && !matches!(dst, DType::F16 | DType::BF16) {
                // Past every 32-bit target, i64's own ends, and f32 ties beyond 2^53.
                v.extend([-(2f64.powi(40)), 2f64.powi(62), -(2f64.powi(63)), 2f64.powi(63)]);
                v.extend([2f64.powi(54) + 2f64.powi(30), 2f64.powi(54) + 3.0 * 2f64.powi(30)]);
            }
            v
        }
    };
    for x in &mut v {
        *x = round_to(src, *x);
    }
    v
}

fn cast(r: &mut Runner<'_>) {
    for src in DType::ALL {
        for dst in DType::ALL {
            let label = format!("{src}->{dst}");
            let needs = [(src, "source"), (dst, "target")];
            let Some(mut rng) = r.begin("cast", &label, &needs) else { continue };
            let mut cases: Vec<(Form, Host)> = cast_forms(r.full())
                .into_iter()
                .map(|f| {
                    let x = host(&mut rng, src, cast_dist(src, dst), &f.input.src);
                    (f, x)
                })
                .collect();
            let specials = cast_specials(src, dst);
            let n = specials.len();
            cases.push((one(&[n], arg(&[n], Contiguous), Contiguous), Host::new([n], specials)));
            for (f, x) in cases {
                let x = Operand::new(src, x).at(f.input.place).broadcast(&f.dims);
                let expected = reference::cast(&x.logical(), dst);
                let out = Output::new(dst, &f.dims).at(f.out);
                let case = Case::new(vec![x], out, expected, |v, out| Op::Cast {
                    input: v[0].clone(),
                    out,
                });
                r.run_case("cast", &label, case);
            }
        }
    }
}

fn copy_forms(full: bool) -> Vec<Form> {
    let c = Contiguous;
    let mut v = vec![
        one(&[], arg(&[], c), c),
        one(&[13], arg(&[13], c), c),
        one(&[127], arg(&[127], Offset), Offset),
        // Materialize a transpose, a broadcast; write into a slice of a bigger buffer.
        one(&[33, 65], arg(&[33, 65], SwapLast), c),
        one(&[4, 5], arg(&[1, 5], c), c),
        one(&[3, 4, 5], arg(&[3, 1, 5], Padded), Reversed),
        one(&[7, 13], arg(&[7, 13], c), Padded),
        one(&[3, 4, 5], arg(&[3, 4, 5], Reversed), Padded),
        one(&[2, 3, 4, 5], arg(&[2, 3, 4, 5], Padded), Reversed),
        one(&[0, 5], arg(&[0, 5], c), Padded),
        one(&[4099], arg(&[4099], c), c),
    ];
    if full {
        v.push(one(&[256, 257], arg(&[256, 257], SwapLast), Padded));
        v.push(one(&[1, 65537], arg(&[1, 65537], c), Offset));
    }
    v
}

fn copy(r: &mut Runner<'_>) {
    for dtype in DType::ALL {
        let Some(mut rng) = r.begin("copy", dtype.name(), &[(dtype, "")]) else { continue };
        for f in copy_forms(r.full()) {
            let x = Operand::new(dtype, host(&mut rng, dtype, Dist::Data, &f.input.src))
                .at(f.input.place)
                .broadcast(&f.dims);
            let expected = Expected::exact(x.logical().data);
            let out = Output::new(dtype, &f.dims).at(f.out);
            let case =
                Case::new(vec![x], out, expected, |v, out| Op::Copy { input: v[0].clone(), out });
            r.run_case("copy", dtype.name(), case);
        }
    }
}

/// A concatenation: the parts (logical shape and storage) and the output's placement.
struct Cat {
    parts: Vec<(Vec<usize>, Arg)>,
    axis: usize,
    out: Place,
}

fn part(dims: &[usize], place: Place) -> (Vec<usize>, Arg) {
    (dims.to_vec(), arg(dims, place))
}

fn cat_forms(full: bool) -> Vec<Cat> {
    let c = Contiguous;
    let cat = |parts: Vec<(Vec<usize>, Arg)>, axis, out| Cat { parts, axis, out };
    let mut v = vec![
        cat(vec![part(&[7], c), part(&[13], Offset)], 0, c),
        cat(vec![part(&[6], c)], 0, c),
        cat(vec![part(&[3, 2, 5], c), part(&[3, 0, 5], c), part(&[3, 7, 5], Padded)], 1, c),
        cat(vec![part(&[4, 3], SwapLast), part(&[4, 5], Padded)], 1, c),
        cat(vec![part(&[2, 3], c), part(&[5, 3], c), part(&[1, 3], Offset)], 0, Padded),
        cat(vec![part(&[3, 4, 5], Reversed), part(&[3, 4, 2], c)], 2, Reversed),
        cat(vec![(vec![3, 5], arg(&[1, 5], c)), part(&[2, 5], c)], 0, c),
        cat(vec![part(&[0, 4], c), part(&[0, 4], c)], 0, c),
        cat(vec![part(&[2, 4099], c), part(&[2, 100], Offset)], 1, c),
    ];
    if full {
        v.push(cat(vec![part(&[128, 257], c), part(&[128, 300], SwapLast)], 1, c));
    }
    v
}

fn concat(r: &mut Runner<'_>) {
    for dtype in DType::ALL {
        let Some(mut rng) = r.begin("concat", dtype.name(), &[(dtype, "")]) else { continue };
        for f in cat_forms(r.full()) {
            let inputs: Vec<Operand> = f
                .parts
                .iter()
                .map(|(dims, a)| {
                    Operand::new(dtype, host(&mut rng, dtype, Dist::Data, &a.src))
                        .at(a.place)
                        .broadcast(dims)
                })
                .collect();
            let logical: Vec<Host> = inputs.iter().map(Operand::logical).collect();
            let expected = reference::concat(&logical, f.axis);
            let mut od = f.parts[0].0.clone();
            od[f.axis] = f.parts.iter().map(|(d, _)| d[f.axis]).sum();
            let out = Output::new(dtype, &od).at(f.out);
            let axis = f.axis;
            let case = Case::new(inputs, out, expected, move |v, out| Op::Concat {
                inputs: v.to_vec(),
                out,
                axis,
            });
            r.run_case("concat", dtype.name(), case);
        }
    }
}

fn fill(r: &mut Runner<'_>) {
    let c = Contiguous;
    let mut forms = vec![
        (vec![], c),
        (vec![7], Offset),
        (vec![127], Padded),
        (vec![33, 65], Reversed),
        (vec![2, 3, 4, 5], Padded),
        (vec![0], c),
        (vec![4099], c),
    ];
    if r.full() {
        forms.push((vec![1, 65537], c));
    }
    // Exact in every float dtype, then inexact, fractional, saturating, overflowing.
    let values = [-1.5, 1.0 / 3.0, 7.9, 300.0, 0.0, 1e10, -1e10];
    for dtype in DType::ALL {
        if r.begin("fill", dtype.name(), &[(dtype, "")]).is_none() {
            continue;
        }
        for (i, (dims, place)) in forms.iter().enumerate() {
            for value in [values[i % values.len()], values[(i + 3) % values.len()]] {
                let expected = reference::fill(numel(dims), dtype, value);
                let out = Output::new(dtype, dims).at(*place);
                let case = Case::new(vec![], out, expected, move |_, out| Op::Fill { out, value });
                r.run_case("fill", dtype.name(), case);
            }
        }
    }
}
