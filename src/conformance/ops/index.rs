//! Index ops: index_select, gather (any dtype), index_add, scatter_add (floats, accumulating
//! into random data, duplicate indices included), with `u32` indices; every form again with
//! `i32` and `i64` indices, negative ones counting from the end; and, per op and index
//! dtype, an out-of-range index value that must give `IndexOutOfRange` (possibly deferred)
//! while the device keeps working.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::{DType, ErrorKind, Op, ScatterOp};

use super::super::case::{Case, Operand, Output, Place, Place::*};
use super::super::reference::{self, Host, numel};
use super::super::runner::Runner;
use super::super::values::{Dist, random};
use super::{Arg, arg, host};

pub(super) fn run(r: &mut Runner<'_>) {
    index_select(r);
    gather(r);
    index_add(r);
    scatter_add(r);
    scatter(r);
}

/// The signed index dtypes, each run on every form with one data dtype.
const SIGNED: [DType; 2] = [DType::I32, DType::I64];

/// Random indices of dtype `ix` naming positions of an axis of `len` (duplicates included):
/// `0..len` for `u32`, `-len..len` for the signed dtypes.
fn indices(rng: &mut ChaCha8Rng, ix: DType, len: usize, n: usize) -> Vec<f64> {
    let hi = i64::try_from(len).unwrap_or(i64::MAX) - 1;
    let lo = if ix.is_signed_int() { -hi - 1 } else { 0 };
    random(rng, ix, Dist::Int(lo, hi.max(lo)), n)
}

/// The positions `idx` names on an axis of `len` (negative ones counted from the end).
fn resolved(idx: &Host, len: usize) -> Host {
    let data = idx.data.iter().map(|&v| if v < 0.0 { v + len as f64 } else { v }).collect();
    Host::new(idx.dims.clone(), data)
}

/// The label of a case run with `ix` indices.
fn label(dtype: DType, ix: DType) -> String {
    if ix == DType::U32 { dtype.name().into() } else { format!("{dtype}, {ix} indices") }
}

/// An index past either end of an axis of `len`, in `ix`.
fn out_of_range(ix: DType, len: usize) -> f64 {
    if ix.is_signed_int() { -(len as f64) - 1.0 } else { len as f64 }
}

const C: Place = Contiguous;

/// The dims of `dims` with `dims[axis]` replaced by `len`.
fn with_axis(dims: &[usize], axis: usize, len: usize) -> Vec<usize> {
    let mut d = dims.to_vec();
    d[axis] = len;
    d
}

/// An index operand of dtype `ix` and logical shape `dims` stored as `a` (broadcast where
/// smaller), naming positions of an axis of `len`.
fn index_operand(rng: &mut ChaCha8Rng, ix: DType, a: &Arg, dims: &[usize], len: usize) -> Operand {
    let src = Host::new(a.src.clone(), indices(rng, ix, len, numel(&a.src)));
    Operand::new(ix, src).at(a.place).broadcast(dims)
}

/// Puts `bad` at a random stored position of the index operand.
fn spoil(rng: &mut ChaCha8Rng, idx: &mut Operand, bad: f64) {
    let n = idx.src.data.len();
    if n > 0 {
        idx.src.data[rng.random_range(0..n)] = bad;
    }
}

/// The data dtype the out-of-range checks use: f32 when claimed, else the first claimed
/// dtype that `allowed` accepts.
fn probe_dtype(r: &Runner<'_>, allowed: &[DType]) -> Option<DType> {
    allowed
        .iter()
        .copied()
        .find(|&d| d == DType::F32 && r.claims(d))
        .or_else(|| allowed.iter().copied().find(|&d| r.claims(d)))
}

/// A layout: the data's shape and storage, the axis, the indices (logical shape and
/// storage), the output's placement.
struct Form {
    data: Vec<usize>,
    data_place: Place,
    axis: usize,
    idx: Vec<usize>,
    idx_arg: Arg,
    out: Place,
}

fn form(data: &[usize], data_place: Place, axis: usize, idx: &[usize], out: Place) -> Form {
    Form { data: data.to_vec(), data_place, axis, idx: idx.to_vec(), idx_arg: arg(idx, C), out }
}

impl Form {
    fn idx_at(mut self, a: Arg) -> Form {
        self.idx_arg = a;
        self
    }
}

// ---------------------------------------------------------------------------------------
// index_select: `data` is the input, `idx` the 1-D indices.

fn select_forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[13], C, 0, &[20], C),
        form(&[13, 7], C, 0, &[20], C),
        form(&[13, 7], C, 1, &[5], C).idx_at(arg(&[5], Offset)),
        form(&[3, 4, 5], Reversed, 1, &[9], Padded),
        form(&[5, 6], C, 0, &[0], C),
        form(&[1, 7], C, 0, &[4], C),
        form(&[33, 65], SwapLast, 1, &[40], Padded).idx_at(arg(&[40], Padded)),
        // Stride-0 indices: one index repeated.
        form(&[6, 5], C, 0, &[4], C).idx_at(arg(&[1], C)),
        form(&[4099, 3], C, 0, &[100], C),
    ];
    if full {
        v.push(form(&[257, 256], C, 0, &[300], Offset));
    }
    v
}

fn select_case(
    rng: &mut ChaCha8Rng,
    (dtype, ix): (DType, DType),
    f: &Form,
    bad: Option<f64>,
) -> Case {
    let x = Operand::new(dtype, host(rng, dtype, Dist::Data, &f.data)).at(f.data_place);
    let len = f.data[f.axis];
    let mut idx = index_operand(rng, ix, &f.idx_arg, &f.idx, len);
    let picks: Vec<usize> =
        resolved(&idx.logical(), len).data.iter().map(|&v| v as usize).collect();
    let expected = reference::index_select(&x.logical(), &picks, f.axis);
    if let Some(bad) = bad {
        spoil(rng, &mut idx, bad);
    }
    let out = Output::new(dtype, &with_axis(&f.data, f.axis, f.idx[0])).at(f.out);
    let axis = f.axis;
    Case::new(vec![x, idx], out, expected, move |v, out| Op::IndexSelect {
        input: v[0].clone(),
        indices: v[1].clone(),
        out,
        axis,
    })
}

fn index_select(r: &mut Runner<'_>) {
    for dtype in DType::ALL {
        let needs = [(dtype, ""), (DType::U32, "indices")];
        let Some(mut rng) = r.begin("index_select", dtype.name(), &needs) else { continue };
        for f in select_forms(r.full()) {
            let case = select_case(&mut rng, (dtype, DType::U32), &f, None);
            r.run_case("index_select", dtype.name(), case);
        }
    }
    let Some(dtype) = probe_dtype(r, &DType::ALL) else { return };
    for ix in SIGNED {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("index_select", &name, &[(ix, "indices")]) else { continue };
        for f in select_forms(r.full()) {
            let case = select_case(&mut rng, (dtype, ix), &f, None);
            r.run_case("index_select", &name, case);
        }
    }
    for ix in [DType::U32, DType::I32, DType::I64] {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("index_select", &name, &[(ix, "indices")]) else { continue };
        let f = form(&[13, 7], C, 0, &[20], C);
        let bad = select_case(&mut rng, (dtype, ix), &f, Some(out_of_range(ix, 13)));
        r.run_failing("index_select", &name, bad, ErrorKind::IndexOutOfRange, true);
        let good = select_case(&mut rng, (dtype, ix), &f, None);
        r.run_case("index_select", &name, good);
    }
}

// ---------------------------------------------------------------------------------------
// gather: `data` is the input, `idx` the indices with the output's shape.

fn gather_forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[13], C, 0, &[20], C),
        form(&[13, 7], C, 0, &[20, 7], C),
        form(&[13, 7], C, 1, &[13, 10], C).idx_at(arg(&[13, 10], Offset)),
        form(&[13, 7], C, 0, &[5, 4], Padded),
        form(&[3, 4, 5], C, 2, &[2, 3, 9], C),
        form(&[3, 4, 5], Reversed, 1, &[3, 6, 5], Padded).idx_at(arg(&[3, 6, 5], Padded)),
        form(&[33, 65], SwapLast, 1, &[33, 65], Reversed).idx_at(arg(&[33, 1], C)),
        form(&[5, 6], C, 1, &[5, 0], C),
        form(&[4099], C, 0, &[5000], C),
    ];
    if full {
        v.push(form(&[256, 257], C, 0, &[300, 257], C));
    }
    v
}

fn gather_case(
    rng: &mut ChaCha8Rng,
    (dtype, ix): (DType, DType),
    f: &Form,
    bad: Option<f64>,
) -> Case {
    let x = Operand::new(dtype, host(rng, dtype, Dist::Data, &f.data)).at(f.data_place);
    let len = f.data[f.axis];
    let mut idx = index_operand(rng, ix, &f.idx_arg, &f.idx, len);
    let expected = reference::gather(&x.logical(), &resolved(&idx.logical(), len), f.axis);
    if let Some(bad) = bad {
        spoil(rng, &mut idx, bad);
    }
    let out = Output::new(dtype, &f.idx).at(f.out);
    let axis = f.axis;
    Case::new(vec![x, idx], out, expected, move |v, out| Op::Gather {
        input: v[0].clone(),
        indices: v[1].clone(),
        out,
        axis,
    })
}

fn gather(r: &mut Runner<'_>) {
    for dtype in DType::ALL {
        let needs = [(dtype, ""), (DType::U32, "indices")];
        let Some(mut rng) = r.begin("gather", dtype.name(), &needs) else { continue };
        for f in gather_forms(r.full()) {
            let case = gather_case(&mut rng, (dtype, DType::U32), &f, None);
            r.run_case("gather", dtype.name(), case);
        }
    }
    let Some(dtype) = probe_dtype(r, &DType::ALL) else { return };
    for ix in SIGNED {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("gather", &name, &[(ix, "indices")]) else { continue };
        for f in gather_forms(r.full()) {
            let case = gather_case(&mut rng, (dtype, ix), &f, None);
            r.run_case("gather", &name, case);
        }
    }
    // The largest values of each index dtype: far past the axis.
    let extremes = [(DType::U32, f64::from(u32::MAX)), (DType::I32, f64::from(i32::MIN))];
    for (ix, far) in extremes.into_iter().chain([(DType::I64, -(2f64.powi(62)))]) {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("gather", &name, &[(ix, "indices")]) else { continue };
        let f = form(&[13, 7], C, 0, &[20, 7], C);
        let bad = gather_case(&mut rng, (dtype, ix), &f, Some(far));
        r.run_failing("gather", &name, bad, ErrorKind::IndexOutOfRange, true);
        let good = gather_case(&mut rng, (dtype, ix), &f, None);
        r.run_case("gather", &name, good);
    }
}

// ---------------------------------------------------------------------------------------
// index_add: `data` is the output (random initial values), `idx` the 1-D indices, the
// source has the output's shape with `idx.len()` along the axis.

fn index_add_forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[13], C, 0, &[20], C),
        form(&[13, 7], C, 0, &[20], C),
        form(&[13, 7], SwapLast, 1, &[30], C),
        form(&[3, 4, 5], Reversed, 1, &[9], Padded).idx_at(arg(&[9], Offset)),
        form(&[5, 6], C, 0, &[0], C),
        // Stride-0 indices: every source row lands on the same output row.
        form(&[3, 6], C, 1, &[7], C).idx_at(arg(&[1], C)),
        form(&[1000, 4], C, 0, &[4099], C),
    ];
    if full {
        v.push(form(&[256, 64], C, 0, &[4099], Padded));
    }
    v
}

fn index_add_case(
    rng: &mut ChaCha8Rng,
    (dtype, ix): (DType, DType),
    f: &Form,
    bad: Option<f64>,
) -> Case {
    let dist = Dist::Uniform(-4.0, 4.0);
    let init = host(rng, dtype, dist, &f.data);
    let src_dims = with_axis(&f.data, f.axis, f.idx[0]);
    let src = Operand::new(dtype, host(rng, dtype, dist, &src_dims)).at(f.data_place);
    let len = f.data[f.axis];
    let mut idx = index_operand(rng, ix, &f.idx_arg, &f.idx, len);
    let picks: Vec<usize> =
        resolved(&idx.logical(), len).data.iter().map(|&v| v as usize).collect();
    let expected = reference::index_add(&init, &src.logical(), &picks, f.axis);
    if let Some(bad) = bad {
        spoil(rng, &mut idx, bad);
    }
    let out = Output::new(dtype, &f.data).at(f.out).init(init.data);
    let axis = f.axis;
    Case::new(vec![src, idx], out, expected, move |v, out| Op::IndexAdd {
        src: v[0].clone(),
        indices: v[1].clone(),
        out,
        axis,
    })
}

fn index_add(r: &mut Runner<'_>) {
    for dtype in DType::FLOATS {
        let needs = [(dtype, ""), (DType::U32, "indices")];
        let Some(mut rng) = r.begin("index_add", dtype.name(), &needs) else { continue };
        for f in index_add_forms(r.full()) {
            let case = index_add_case(&mut rng, (dtype, DType::U32), &f, None);
            r.run_case("index_add", dtype.name(), case);
        }
    }
    let Some(dtype) = probe_dtype(r, &DType::FLOATS) else { return };
    for ix in SIGNED {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("index_add", &name, &[(ix, "indices")]) else { continue };
        for f in index_add_forms(r.full()) {
            let case = index_add_case(&mut rng, (dtype, ix), &f, None);
            r.run_case("index_add", &name, case);
        }
    }
    for ix in [DType::U32, DType::I32, DType::I64] {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("index_add", &name, &[(ix, "indices")]) else { continue };
        let f = form(&[13, 7], C, 0, &[20], C);
        let bad = index_add_case(&mut rng, (dtype, ix), &f, Some(out_of_range(ix, 13)));
        r.run_failing("index_add", &name, bad, ErrorKind::IndexOutOfRange, true);
        let good = index_add_case(&mut rng, (dtype, ix), &f, None);
        r.run_case("index_add", &name, good);
    }
}

// ---------------------------------------------------------------------------------------
// scatter_add: `data` is the output (random initial values), `idx` the source's shape
// (indices have it too).

fn scatter_add_forms(full: bool) -> Vec<Form> {
    let mut v = vec![
        form(&[13], C, 0, &[20], C),
        form(&[13, 7], C, 0, &[20, 7], C),
        form(&[13, 7], SwapLast, 1, &[13, 30], C),
        form(&[13, 7], C, 0, &[5, 4], Padded),
        form(&[3, 4, 5], Reversed, 1, &[2, 9, 5], Padded).idx_at(arg(&[2, 9, 5], Padded)),
        form(&[5, 6], C, 0, &[0, 6], C),
        form(&[100, 3], C, 0, &[4099, 3], C),
    ];
    if full {
        v.push(form(&[256, 257], C, 0, &[1024, 257], Offset));
    }
    v
}

fn scatter_add_case(
    rng: &mut ChaCha8Rng,
    (dtype, ix): (DType, DType),
    f: &Form,
    bad: Option<f64>,
) -> Case {
    let dist = Dist::Uniform(-4.0, 4.0);
    let init = host(rng, dtype, dist, &f.data);
    let src = Operand::new(dtype, host(rng, dtype, dist, &f.idx)).at(f.data_place);
    let len = f.data[f.axis];
    let mut idx = index_operand(rng, ix, &f.idx_arg, &f.idx, len);
    let picks = resolved(&idx.logical(), len);
    let expected = reference::scatter_add(&init, &src.logical(), &picks, f.axis);
    if let Some(bad) = bad {
        spoil(rng, &mut idx, bad);
    }
    let out = Output::new(dtype, &f.data).at(f.out).init(init.data);
    let axis = f.axis;
    Case::new(vec![src, idx], out, expected, move |v, out| Op::ScatterAdd {
        src: v[0].clone(),
        indices: v[1].clone(),
        out,
        axis,
    })
}

fn scatter_add(r: &mut Runner<'_>) {
    for dtype in DType::FLOATS {
        let needs = [(dtype, ""), (DType::U32, "indices")];
        let Some(mut rng) = r.begin("scatter_add", dtype.name(), &needs) else { continue };
        for f in scatter_add_forms(r.full()) {
            let case = scatter_add_case(&mut rng, (dtype, DType::U32), &f, None);
            r.run_case("scatter_add", dtype.name(), case);
        }
    }
    let Some(dtype) = probe_dtype(r, &DType::FLOATS) else { return };
    for ix in SIGNED {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("scatter_add", &name, &[(ix, "indices")]) else { continue };
        for f in scatter_add_forms(r.full()) {
            let case = scatter_add_case(&mut rng, (dtype, ix), &f, None);
            r.run_case("scatter_add", &name, case);
        }
    }
    for ix in [DType::U32, DType::I32, DType::I64] {
        let name = label(dtype, ix);
        let Some(mut rng) = r.begin("scatter_add", &name, &[(ix, "indices")]) else { continue };
        let f = form(&[13, 7], C, 0, &[20, 7], C);
        let bad = scatter_add_case(&mut rng, (dtype, ix), &f, Some(out_of_range(ix, 13)));
        r.run_failing("scatter_add", &name, bad, ErrorKind::IndexOutOfRange, true);
        let good = scatter_add_case(&mut rng, (dtype, ix), &f, None);
        r.run_case("scatter_add", &name, good);
    }
}

// ---------------------------------------------------------------------------------------
// scatter: as scatter_add, combining by any `ScatterOp` in order along the axis, any dtype.

/// Values a scatter combines: integers over their whole range (sums and products wrap),
/// float factors near 1 (a product of forty stays inside f16's range), other floats in ±4.
fn scatter_dist(op: ScatterOp, dtype: DType) -> Dist {
    match (dtype.is_int(), op) {
        (true, _) => Dist::Data,
        (false, ScatterOp::Prod) => Dist::Uniform(0.8, 1.25),
        (false, _) => Dist::Uniform(-4.0, 4.0),
    }
}

fn scatter_case(
    rng: &mut ChaCha8Rng,
    op: ScatterOp,
    (dtype, ix): (DType, DType),
    f: &Form,
    bad: Option<f64>,
) -> Case {
    let dist = scatter_dist(op, dtype);
    let init = host(rng, dtype, dist, &f.data);
    let src = Operand::new(dtype, host(rng, dtype, dist, &f.idx)).at(f.data_place);
    let len = f.data[f.axis];
    let mut idx = index_operand(rng, ix, &f.idx_arg, &f.idx, len);
    let picks = resolved(&idx.logical(), len);
    let expected = reference::scatter(op, dtype, &init, &src.logical(), &picks, f.axis);
    if let Some(bad) = bad {
        spoil(rng, &mut idx, bad);
    }
    let out = Output::new(dtype, &f.data).at(f.out).init(init.data);
    let axis = f.axis;
    Case::new(vec![src, idx], out, expected, move |v, out| Op::Scatter {
        op,
        src: v[0].clone(),
        indices: v[1].clone(),
        out,
        axis,
    })
}

fn scatter(r: &mut Runner<'_>) {
    for op in ScatterOp::ALL {
        let name = format!("scatter.{}", op.name());
        for dtype in DType::ALL {
            let needs = [(dtype, ""), (DType::U32, "indices")];
            let Some(mut rng) = r.begin(&name, dtype.name(), &needs) else { continue };
            for f in scatter_add_forms(r.full()) {
                let case = scatter_case(&mut rng, op, (dtype, DType::U32), &f, None);
                r.run_case(&name, dtype.name(), case);
            }
        }
        let Some(dtype) = probe_dtype(r, &DType::ALL) else { continue };
        for ix in SIGNED {
            let label = label(dtype, ix);
            let Some(mut rng) = r.begin(&name, &label, &[(ix, "indices")]) else { continue };
            for f in scatter_add_forms(false) {
                let case = scatter_case(&mut rng, op, (dtype, ix), &f, None);
                r.run_case(&name, &label, case);
            }
            let f = form(&[13, 7], C, 0, &[20, 7], C);
            let bad = scatter_case(&mut rng, op, (dtype, ix), &f, Some(out_of_range(ix, 13)));
            r.run_failing(&name, &label, bad, ErrorKind::IndexOutOfRange, true);
            let good = scatter_case(&mut rng, op, (dtype, ix), &f, None);
            r.run_case(&name, &label, good);
        }
    }
}
