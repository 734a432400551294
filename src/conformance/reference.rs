//! The f64 reference of every op, following the semantics in the `Op` docs, computed on the
//! host from the dtype-rounded inputs.
//!
//! Each function returns the expected output in row-major order together with the error
//! model the comparison uses (see `tolerance`): exact, or approximate with the magnitude of
//! what was computed per element.

use std::f64::consts::{FRAC_2_SQRT_PI, PI, SQRT_2};

use crate::{BinaryOp, CompareOp, DType, ReduceOp, ScatterOp, UnaryOp};

use super::tolerance::Expected;
use super::values::round_to;

/// A dense row-major tensor of f64 values on the host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Host {
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

impl Host {
    pub fn new(dims: impl Into<Vec<usize>>, data: Vec<f64>) -> Host {
        Host { dims: dims.into(), data }
    }

    pub fn numel(&self) -> usize {
        numel(&self.dims)
    }

    /// This tensor stretched to `dims` by numpy rules (the caller checked compatibility;
    /// missing source elements read as NaN rather than panicking).
    pub fn broadcast_to(&self, dims: &[usize]) -> Host {
        if dims == self.dims.as_slice() {
            return self.clone();
        }
        let lead = dims.len().saturating_sub(self.dims.len());
        let src_strides = strides(&self.dims);
        let mut data = Vec::with_capacity(numel(dims));
        for_each_index(dims, |idx| {
            let mut flat = 0;
            for (d, &i) in idx.iter().enumerate().skip(lead) {
                let s = d - lead;
                if self.dims[s] != 1 {
                    flat += i * src_strides[s];
                }
            }
            data.push(self.data.get(flat).copied().unwrap_or(f64::NAN));
        });
        Host { dims: dims.to_vec(), data }
    }
}

pub(crate) fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Row-major strides of `dims` in elements.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![0; dims.len()];
    let mut acc = 1;
    for (st, &d) in s.iter_mut().zip(dims).rev() {
        *st = acc;
        acc *= d.max(1);
    }
    s
}

/// Calls `f` with every multi-index of `dims` in row-major order (once for a scalar, never
/// when a dim is 0).
pub(crate) fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize])) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0; dims.len()];
    loop {
        f(&idx);
        let mut d = dims.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// The multi-index of row-major position `flat` in `dims`.
pub(crate) fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (i, &d) in idx.iter_mut().zip(dims).rev() {
        if d > 0 {
            *i = flat % d;
            flat /= d;
        }
    }
    idx
}

/// The row-major positions of every lane along `axis`, lanes ordered like the elements of
/// the keepdim result (the shape with `dims[axis]` set to 1).
pub(crate) fn lanes(dims: &[usize], axis: usize) -> Vec<Vec<usize>> {
    let outer: usize = dims[..axis].iter().product();
    let len = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            out.push((0..len).map(|j| (o * len + j) * inner + i).collect());
        }
    }
    out
}

fn flat_of(idx: &[usize], st: &[usize]) -> usize {
    idx.iter().zip(st).map(|(i, s)| i * s).sum()
}

// ---------------------------------------------------------------------------------------
// Special functions

/// The error function, to about 1e-15 relative: its Maclaurin series below 2, and
/// `1 − erfc` from erfc's continued fraction above.
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x.abs() < 2.0 {
        erf_series(x)
    } else {
        x.signum() * (1.0 - erfc_fraction(x.abs()))
    }
}

/// The complementary error function `1 − erf(x)`, accurate relative to itself also where it
/// is tiny (large positive x).
pub(crate) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        f64::NAN
    } else if x >= 2.0 {
        erfc_fraction(x)
    } else if x > -2.0 {
        1.0 - erf_series(x)
    } else {
        2.0 - erfc_fraction(-x)
    }
}

/// erf(x) = 2/√π · Σ (−1)ⁿ x²ⁿ⁺¹ / (n! (2n+1)); for |x| < 2 the largest term is below 4, so
/// cancellation costs at most a few ulps.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x; // (−1)ⁿ x²ⁿ⁺¹ / n!
    let mut sum = x;
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    FRAC_2_SQRT_PI * sum
}

/// erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))) for x ≥ 2, evaluated
/// from the tail (120 levels reach full precision at x = 2).
fn erfc_fraction(x: f64) -> f64 {
    if x.is_infinite() {
        return 0.0;
    }
    let mut t = x;
    for n in (1..=120).rev() {
        t = x + (n as f64 / 2.0) / t;
    }
    (-x * x).exp() / PI.sqrt() / t
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// 0.5·x·(1 + erf(x/√2)); through erfc for negative x, where 1 + erf cancels.
fn gelu_erf(x: f64) -> f64 {
    if x >= 0.0 { 0.5 * x * (1.0 + erf(x / SQRT_2)) } else { 0.5 * x * erfc(-x / SQRT_2) }
}

// ---------------------------------------------------------------------------------------
// Elementwise

pub(crate) fn unary(op: UnaryOp, x: &Host) -> Expected {
    let exact = matches!(op, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu);
    let mut values = Vec::with_capacity(x.data.len());
    let mut scale = Vec::with_capacity(x.data.len());
    for &v in &x.data {
        let (r, s) = match op {
            UnaryOp::Neg => (-v, 0.0),
            UnaryOp::Abs => (v.abs(), 0.0),
            UnaryOp::Relu => (v.max(0.0), 0.0),
            UnaryOp::Exp => (v.exp(), v.exp()),
            UnaryOp::Log => (v.ln(), 1.0),
            UnaryOp::Sqrt => (v.sqrt(), v.sqrt()),
            UnaryOp::Rsqrt => (1.0 / v.sqrt(), 1.0 / v.sqrt()),
            UnaryOp::Tanh => (v.tanh(), 1.0),
            UnaryOp::Sigmoid => (sigmoid(v), 1.0),
            UnaryOp::GeluTanh => (gelu_tanh(v), v.abs()),
            UnaryOp::GeluErf => (gelu_erf(v), v.abs()),
            UnaryOp::Silu => (v * sigmoid(v), v.abs()),
            UnaryOp::Sin => (v.sin(), v.abs().max(1.0)),
            UnaryOp::Cos => (v.cos(), v.abs().max(1.0)),
        };
        values.push(r);
        scale.push(s);
    }
    if exact { Expected::exact(values) } else { Expected::approx(values, scale) }
}

pub(crate) fn binary(op: BinaryOp, a: &Host, b: &Host) -> Expected {
    let exact = matches!(op, BinaryOp::Max | BinaryOp::Min);
    let mut values = Vec::with_capacity(a.data.len());
    let mut scale = Vec::with_capacity(a.data.len());
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let (r, s) = match op {
            BinaryOp::Add => (x + y, x.abs() + y.abs()),
            BinaryOp::Sub => (x - y, x.abs() + y.abs()),
            BinaryOp::Mul => (x * y, (x * y).abs()),
            BinaryOp::Div => (x / y, (x / y).abs()),
            BinaryOp::Max => (x.max(y), 0.0),
            BinaryOp::Min => (x.min(y), 0.0),
            BinaryOp::Pow => {
                let r = x.powf(y);
                (r, r.abs() * (1.0 + (y * x.ln()).abs()))
            }
            BinaryOp::Rem => (rem_floor(x, y), y.abs()),
        };
        values.push(r);
        scale.push(s);
    }
    if exact { Expected::exact(values) } else { Expected::approx(values, scale) }
}

/// The remainder with the divisor's sign: `fmod` (exact), moved by one divisor where the
/// signs differ.
fn rem_floor(x: f64, y: f64) -> f64 {
    let r = x % y;
    if r != 0.0 && ((r < 0.0) != (y < 0.0)) { r + y } else { r }
}

/// An integer element's value: `v` saturated to `dtype` (as the kit stored it).
fn int_value(dtype: DType, v: f64) -> i128 {
    let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
    (v as i128).clamp(lo, hi)
}

/// `v` wrapped into `dtype` (two's complement), as f64 (rounded past ±2^53, as the device's
/// `i64` result is when the kit reads it).
fn wrapped(dtype: DType, v: i128) -> f64 {
    let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
    let m = hi - lo + 1;
    ((v - lo).rem_euclid(m) + lo) as f64
}

/// Integer `lhs ∘ rhs` by the contract: wrapping, floor division and the divisor-signed
/// remainder, a zero divisor giving 0. Exact.
pub(crate) fn binary_int(op: BinaryOp, dtype: DType, a: &Host, b: &Host) -> Expected {
    let values = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            let (x, y) = (int_value(dtype, x), int_value(dtype, y));
            let r = match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div | BinaryOp::Rem if y == 0 => 0,
                BinaryOp::Div => floor_div(x, y),
                BinaryOp::Rem => x - floor_div(x, y) * y,
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
                BinaryOp::Pow => 0,
            };
            wrapped(dtype, r)
        })
        .collect();
    Expected::exact(values)
}

/// `x / y` rounded towards −∞ (`y != 0`).
fn floor_div(x: i128, y: i128) -> i128 {
    let q = x / y;
    if x % y != 0 && ((x < 0) != (y < 0)) { q - 1 } else { q }
}

/// Integer `neg` or `abs` (wrapping: `MIN` stays `MIN`). Exact.
pub(crate) fn unary_int(op: UnaryOp, dtype: DType, x: &Host) -> Expected {
    let values = x
        .data
        .iter()
        .map(|&v| {
            let v = int_value(dtype, v);
            wrapped(dtype, if op == UnaryOp::Abs { v.abs() } else { -v })
        })
        .collect();
    Expected::exact(values)
}

/// Integer sum along `axis`, wrapped to `dtype`. Exact.
pub(crate) fn sum_int(dtype: DType, x: &Host, axis: usize) -> Expected {
    let values = lanes(&x.dims, axis)
        .iter()
        .map(|lane| wrapped(dtype, lane.iter().map(|&p| int_value(dtype, x.data[p])).sum()))
        .collect();
    Expected::exact(values)
}

pub(crate) fn compare(op: CompareOp, a: &Host, b: &Host) -> Expected {
    let values = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            let r = match op {
                CompareOp::Eq => x == y,
                CompareOp::Ne => x != y,
                CompareOp::Lt => x < y,
                CompareOp::Le => x <= y,
                CompareOp::Gt => x > y,
                CompareOp::Ge => x >= y,
            };
            if r { 1.0 } else { 0.0 }
        })
        .collect();
    Expected::exact(values)
}

/// `x · mul + add`.
pub(crate) fn affine(x: &Host, mul: f64, add: f64) -> Expected {
    let values = x.data.iter().map(|&v| v * mul + add).collect();
    let scale = x.data.iter().map(|&v| (v * mul).abs() + add.abs()).collect();
    Expected::approx(values, scale)
}

/// `cond != 0 ? on_true : on_false`.
pub(crate) fn select(cond: &Host, on_true: &Host, on_false: &Host) -> Expected {
    let values = cond
        .data
        .iter()
        .zip(on_true.data.iter().zip(&on_false.data))
        .map(|(&c, (&t, &f))| if c != 0.0 { t } else { f })
        .collect();
    Expected::exact(values)
}

/// Conversion to `to`: round to nearest even, saturating truncation to integers, NaN to 0.
pub(crate) fn cast(x: &Host, to: DType) -> Expected {
    Expected::exact(x.data.iter().map(|&v| round_to(to, v)).collect())
}

pub(crate) fn fill(numel: usize, dtype: DType, value: f64) -> Expected {
    Expected::exact(vec![round_to(dtype, value); numel])
}

// ---------------------------------------------------------------------------------------
// Matmul and reductions

/// Batched `[.., m, k] × [.., k, n]`, both already stretched to the output's batch dims.
pub(crate) fn matmul(a: &Host, b: &Host) -> Expected {
    let r = a.dims.len();
    let (m, k, n) = (a.dims[r - 2], a.dims[r - 1], b.dims[r - 1]);
    let batch: usize = a.dims[..r - 2].iter().product();
    let mut values = Vec::with_capacity(batch * m * n);
    let mut scale = Vec::with_capacity(batch * m * n);
    let mut spread = Vec::with_capacity(batch * m * n);
    for bi in 0..batch {
        let (ao, bo) = (bi * m * k, bi * k * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut sq, mut abs) = (0.0, 0.0, 0.0);
                for p in 0..k {
                    let t = a.data[ao + i * k + p] * b.data[bo + p * n + j];
                    sum += t;
                    sq += t * t;
                    abs += t.abs();
                }
                values.push(sum);
                scale.push(sq.sqrt());
                spread.push((k as f64).sqrt() * abs);
            }
        }
    }
    Expected::accumulated(values, scale, spread)
}

/// Reduction of `axis`, keeping it as a dim of 1. Sum over an empty axis is 0, mean NaN.
pub(crate) fn reduce(op: ReduceOp, x: &Host, axis: usize) -> Expected {
    let lanes = lanes(&x.dims, axis);
    let k = x.dims[axis];
    let mut values = Vec::with_capacity(lanes.len());
    let mut scale = Vec::with_capacity(lanes.len());
    let mut spread = Vec::with_capacity(lanes.len());
    for lane in &lanes {
        let vals = lane.iter().map(|&p| x.data[p]);
        let r = match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                let div = if op == ReduceOp::Mean { k as f64 } else { 1.0 };
                let sum: f64 = vals.clone().sum();
                let sq: f64 = vals.clone().map(|v| v * v).sum();
                let abs: f64 = vals.map(f64::abs).sum();
                scale.push(sq.sqrt() / div);
                spread.push((k as f64).sqrt() * abs / div);
                sum / div
            }
            ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
            ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
            ReduceOp::ArgMax | ReduceOp::ArgMin => {
                let max = op == ReduceOp::ArgMax;
                let mut best = (0, if max { f64::NEG_INFINITY } else { f64::INFINITY });
                for (j, v) in vals.enumerate() {
                    if (max && v > best.1) || (!max && v < best.1) {
                        best = (j, v);
                    }
                }
                best.0 as f64
            }
        };
        values.push(r);
    }
    match op {
        ReduceOp::Sum | ReduceOp::Mean => Expected::accumulated(values, scale, spread),
        _ => Expected::exact(values),
    }
}

/// Softmax `e^(x−max) / Σ e^(x−max)` or log-softmax `x − max − ln Σ e^(x−max)` along `axis`.
pub(crate) fn softmax(x: &Host, axis: usize, log: bool) -> Expected {
    let n = x.data.len();
    let (mut values, mut scale, mut spread) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let k = (x.dims[axis] as f64).sqrt();
    for lane in lanes(&x.dims, axis) {
        let max = lane.iter().map(|&p| x.data[p]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = lane.iter().map(|&p| (x.data[p] - max).exp()).sum();
        for &p in &lane {
            let d = x.data[p] - max;
            if log {
                values[p] = d - sum.ln();
                scale[p] = d.abs() + sum.ln() + 1.0;
                spread[p] = k;
            } else {
                let y = d.exp() / sum;
                values[p] = y;
                scale[p] = y * d.abs().max(1.0);
                spread[p] = y * k;
            }
        }
    }
    Expected::accumulated(values, scale, spread)
}

// ---------------------------------------------------------------------------------------
// Data movement and indexing

pub(crate) fn concat(inputs: &[Host], axis: usize) -> Expected {
    let Some(first) = inputs.first() else { return Expected::exact(Vec::new()) };
    let mut dims = first.dims.clone();
    dims[axis] = inputs.iter().map(|h| h.dims[axis]).sum();
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let mut values = Vec::with_capacity(numel(&dims));
    for o in 0..outer {
        for h in inputs {
            let chunk = h.dims[axis] * inner;
            values.extend_from_slice(&h.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Expected::exact(values)
}

/// `out` = `x` with entries along `axis` picked by `indices`.
pub(crate) fn index_select(x: &Host, indices: &[usize], axis: usize) -> Expected {
    let mut dims = x.dims.clone();
    dims[axis] = indices.len();
    let st = strides(&x.dims);
    let mut values = Vec::with_capacity(numel(&dims));
    for_each_index(&dims, |idx| {
        let mut src = idx.to_vec();
        src[axis] = indices[idx[axis]];
        values.push(x.data[flat_of(&src, &st)]);
    });
    Expected::exact(values)
}

/// `out[p] = x[p with axis → indices[p]]`; `indices` has the output's shape.
pub(crate) fn gather(x: &Host, indices: &Host, axis: usize) -> Expected {
    let st = strides(&x.dims);
    let mut values = Vec::with_capacity(indices.numel());
    let mut at = 0;
    for_each_index(&indices.dims, |idx| {
        let mut src = idx.to_vec();
        src[axis] = indices.data[at] as usize;
        at += 1;
        values.push(x.data[flat_of(&src, &st)]);
    });
    Expected::exact(values)
}

/// Accumulation into `init`: every output element is `init + Σ added terms`.
struct Accumulator {
    sum: Vec<f64>,
    abs: Vec<f64>,
    count: Vec<usize>,
}

impl Accumulator {
    fn new(init: &Host) -> Self {
        Accumulator {
            sum: init.data.clone(),
            abs: init.data.iter().map(|v| v.abs()).collect(),
            count: vec![1; init.data.len()],
        }
    }

    fn add(&mut self, at: usize, v: f64) {
        self.sum[at] += v;
        self.abs[at] += v.abs();
        self.count[at] += 1;
    }

    /// A device may add the terms in any order, rounding to the output dtype after each
    /// add: the scale grows with the number of terms.
    fn finish(self) -> Expected {
        let n = self.sum.len();
        let mut scale = Vec::with_capacity(n);
        let mut spread = Vec::with_capacity(n);
        for i in 0..n {
            let k = (self.count[i] as f64).sqrt();
            scale.push(k * self.abs[i]);
            spread.push(k * self.abs[i]);
        }
        Expected::accumulated(self.sum, scale, spread)
    }
}

/// `Op::Scatter`: each `src` element combined into the `init` element its (resolved) index
/// names along `axis`, in row-major order of `src` (so in increasing order along `axis`
/// within a lane). Integers wrap at each step; float sums round at each store (the
/// accumulation model), products within `count` roundings; the rest are exact.
pub(crate) fn scatter(
    op: ScatterOp,
    dtype: DType,
    init: &Host,
    src: &Host,
    indices: &Host,
    axis: usize,
) -> Expected {
    if op == ScatterOp::Sum && dtype.is_float() {
        return scatter_add(init, src, indices, axis);
    }
    let mut values = init.data.clone();
    let mut count = vec![1.0f64; values.len()];
    let st = strides(&init.dims);
    let mut flat = 0;
    for_each_index(&src.dims, |idx| {
        let mut dst = idx.to_vec();
        dst[axis] = indices.data[flat] as usize;
        let at = flat_of(&dst, &st);
        let (t, s) = (values[at], src.data[flat]);
        values[at] = if dtype.is_int() {
            let (ti, si) = (int_value(dtype, t), int_value(dtype, s));
            match op {
                ScatterOp::Assign => s,
                ScatterOp::Sum => wrapped(dtype, ti + si),
                ScatterOp::Prod => wrapped(dtype, ti * si),
                ScatterOp::Max => t.max(s),
                ScatterOp::Min => t.min(s),
            }
        } else {
            match op {
                ScatterOp::Assign => s,
                ScatterOp::Sum => t + s,
                ScatterOp::Prod => t * s,
                ScatterOp::Max => t.max(s),
                ScatterOp::Min => t.min(s),
            }
        };
        count[at] += 1.0;
        flat += 1;
    });
    if op == ScatterOp::Prod && dtype.is_float() {
        let scale = values.iter().zip(&count).map(|(v, k)| v.abs() * k).collect();
        return Expected::approx(values, scale);
    }
    Expected::exact(values)
}

/// The positions that sort each lane along `axis`: stable, −0.0 equal to +0.0, NaNs after
/// every number (before, when descending).
pub(crate) fn argsort(x: &Host, axis: usize, descending: bool) -> Expected {
    let mut values = vec![0.0; x.data.len()];
    let order = |a: f64, b: f64| {
        let by_nan = a.is_nan().cmp(&b.is_nan());
        by_nan.then(a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal))
    };
    for lane in lanes(&x.dims, axis) {
        let mut at: Vec<usize> = (0..lane.len()).collect();
        at.sort_by(|&i, &j| {
            let (a, b) = (x.data[lane[i]], x.data[lane[j]]);
            if descending { order(b, a) } else { order(a, b) }
        });
        for (r, &i) in at.iter().enumerate() {
            values[lane[r]] = i as f64;
        }
    }
    Expected::exact(values)
}

/// `out[.., indices[i], ..] += src[.., i, ..]` along `axis`, starting from `init`.
pub(crate) fn index_add(init: &Host, src: &Host, indices: &[usize], axis: usize) -> Expected {
    let mut acc = Accumulator::new(init);
    let st = strides(&init.dims);
    let mut at = 0;
    for_each_index(&src.dims, |idx| {
        let mut dst = idx.to_vec();
        dst[axis] = indices[idx[axis]];
        acc.add(flat_of(&dst, &st), src.data[at]);
        at += 1;
    });
    acc.finish()
}

/// `out[p with axis → indices[p]] += src[p]` for every position `p` of `src`.
pub(crate) fn scatter_add(init: &Host, src: &Host, indices: &Host, axis: usize) -> Expected {
    let mut acc = Accumulator::new(init);
    let st = strides(&init.dims);
    let mut at = 0;
    for_each_index(&src.dims, |idx| {
        let mut dst = idx.to_vec();
        dst[axis] = indices.data[at] as usize;
        acc.add(flat_of(&dst, &st), src.data[at]);
        at += 1;
    });
    acc.finish()
}

// ---------------------------------------------------------------------------------------
// Attention

/// Per leading index of `[.., time, head]` operands: the scaled scores' softmax weights
/// (hidden keys 0) and the scores themselves, `[time][time]` each.
fn attention_weights(
    q: &Host,
    k: &Host,
    lead: usize,
    scale: f64,
    causal: bool,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let r = q.dims.len();
    let (t, d) = (q.dims[r - 2], q.dims[r - 1]);
    let base = lead * t * d;
    let mut weights = vec![vec![0.0; t]; t];
    let mut scores = vec![vec![0.0; t]; t];
    for i in 0..t {
        let seen = if causal { i + 1 } else { t };
        for (j, score) in scores[i][..seen].iter_mut().enumerate() {
            let dot: f64 =
                (0..d).map(|c| q.data[base + i * d + c] * k.data[base + j * d + c]).sum();
            *score = scale * dot;
        }
        let top = scores[i][..seen].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores[i][..seen].iter().map(|s| (s - top).exp()).sum();
        for (w, s) in weights[i].iter_mut().zip(&scores[i][..seen]) {
            *w = (s - top).exp() / total;
        }
    }
    (weights, scores)
}

/// `Op::Attention`. The error allowed follows the weights' sensitivity to their scores:
/// an element's scale is `2 Σ_j p_ij |v_jc| (1 + |s_ij|)` (a backend may round the scores
/// and weights to the dtype on the way, as the decomposition does).
pub(crate) fn attention(q: &Host, k: &Host, v: &Host, scale: f64, causal: bool) -> Expected {
    let r = q.dims.len();
    let (t, d) = (q.dims[r - 2], q.dims[r - 1]);
    let leads = q.data.len().checked_div(t * d).unwrap_or(0);
    let n = q.data.len();
    let (mut values, mut size, mut spread) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for lead in 0..leads {
        let (p, s) = attention_weights(q, k, lead, scale, causal);
        let base = lead * t * d;
        for i in 0..t {
            for c in 0..d {
                let at = base + i * d + c;
                for j in 0..t {
                    let term = p[i][j] * v.data[base + j * d + c];
                    values[at] += term;
                    size[at] += 2.0 * term.abs() * (1.0 + s[i][j].abs());
                    spread[at] += term.abs();
                }
                spread[at] *= (t as f64).sqrt();
            }
        }
    }
    Expected::accumulated(values, size, spread)
}

/// `Op::AttentionBackward`: `[dq, dk, dv]`. With `ds_ij = scale · p_ij (dp_ij − δ_i)`,
/// `dp_ij = d_out_i · v_j` and `δ_i = Σ_j p_ij dp_ij`, each term's size counts
/// `p_ij (|dp_ij| + |δ_i|) (1 + |s_ij|)`, as for the forward pass.
pub(crate) fn attention_backward([q, k, v, g]: [&Host; 4], scale: f64, causal: bool) -> Expected {
    let r = q.dims.len();
    let (t, d) = (q.dims[r - 2], q.dims[r - 1]);
    let n = q.data.len();
    let leads = n.checked_div(t * d).unwrap_or(0);
    let (mut values, mut size, mut spread) = (vec![0.0; 3 * n], vec![0.0; 3 * n], vec![0.0; 3 * n]);
    for lead in 0..leads {
        let (p, s) = attention_weights(q, k, lead, scale, causal);
        let base = lead * t * d;
        fn row_of(h: &Host, at: usize, d: usize) -> &[f64] {
            &h.data[at..at + d]
        }
        let row = |h, i: usize| row_of(h, base + i * d, d);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for i in 0..t {
            let dp: Vec<f64> = (0..t).map(|j| dot(row(g, i), row(v, j))).collect();
            let delta: f64 = (0..t).map(|j| p[i][j] * dp[j]).sum();
            for j in 0..t {
                if p[i][j] == 0.0 {
                    continue;
                }
                let ds = scale * p[i][j] * (dp[j] - delta);
                let weight = 2.0 * (1.0 + s[i][j].abs());
                let ds_size = scale * p[i][j] * (dp[j].abs() + delta.abs()) * weight;
                for c in 0..d {
                    let (qi, kj, gi) = (row(q, i)[c], row(k, j)[c], row(g, i)[c]);
                    let terms = [
                        (base + i * d + c, ds * kj, ds_size * kj.abs()),
                        (n + base + j * d + c, ds * qi, ds_size * qi.abs()),
                        (2 * n + base + j * d + c, p[i][j] * gi, p[i][j] * gi.abs() * weight),
                    ];
                    for (at, term, big) in terms {
                        values[at] += term;
                        size[at] += big;
                        spread[at] += term.abs();
                    }
                }
            }
        }
    }
    let root = (t as f64).sqrt();
    spread.iter_mut().for_each(|s| *s *= root);
    Expected::accumulated(values, size, spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn erf_matches_known_values() {
        // Values from the DLMF / mpmath at 30 digits.
        let known = [
            (0.1, 0.112_462_916_018_284_89),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (1.5, 0.966_105_146_475_310_8),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
        ];
        for (x, want) in known {
            assert!(rel(erf(x), want) < 1e-13, "erf({x}) = {} want {want}", erf(x));
            assert!(rel(erf(-x), -want) < 1e-13);
        }
        let tails = [
            (0.5, 0.479_500_122_186_953_5),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_035e-12),
            (10.0, 2.088_487_583_762_545e-45),
        ];
        for (x, want) in tails {
            assert!(rel(erfc(x), want) < 1e-12, "erfc({x}) = {} want {want}", erfc(x));
        }
        assert!(rel(erfc(-3.0), 1.999_977_909_503_001_4) < 1e-15);
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn gelu_forms_agree_where_they_should() {
        assert!((gelu_erf(1.0) - 0.841_344_746_068_543).abs() < 1e-14);
        assert!((gelu_tanh(1.0) - 0.841_191_990_608_276_8).abs() < 1e-14);
        assert!(gelu_erf(-10.0).abs() < 1e-20);
    }

    #[test]
    fn index_helpers_walk_row_major() {
        let mut seen = Vec::new();
        for_each_index(&[2, 3], |i| seen.push(i.to_vec()));
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[4], vec![1, 1]);
        let mut n = 0;
        for_each_index(&[], |_| n += 1);
        assert_eq!(n, 1);
        for_each_index(&[3, 0], |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(lanes(&[2, 3, 2], 1)[1], vec![1, 3, 5]);
        assert_eq!(lanes(&[3, 0], 1).len(), 3);
        let h = Host::new([3, 1], vec![1.0, 2.0, 3.0]).broadcast_to(&[2, 3, 2]);
        assert_eq!(h.data, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn references_follow_the_op_docs() {
        let x = Host::new([2, 3], vec![1.0, 5.0, 5.0, -1.0, -2.0, -3.0]);
        assert_eq!(reduce(ReduceOp::ArgMax, &x, 1).values, vec![1.0, 0.0]);
        assert_eq!(reduce(ReduceOp::ArgMin, &x, 1).values, vec![0.0, 2.0]);
        let (a, b) = (
            Host::new([4], vec![7.0, -7.0, 7.0, -2147483648.0]),
            Host::new([4], vec![-2.0, 2.0, 0.0, -1.0]),
        );
        assert_eq!(
            binary_int(BinaryOp::Div, DType::I32, &a, &b).values,
            vec![-4.0, -4.0, 0.0, -2147483648.0]
        );
        assert_eq!(binary_int(BinaryOp::Rem, DType::I32, &a, &b).values, vec![-1.0, 1.0, 0.0, 0.0]);
        let (a, b) = (Host::new([2], vec![200.0, 3.0]), Host::new([2], vec![100.0, 5.0]));
        assert_eq!(binary_int(BinaryOp::Add, DType::U8, &a, &b).values, vec![44.0, 8.0]);
        assert_eq!(binary_int(BinaryOp::Sub, DType::U8, &a, &b).values, vec![100.0, 254.0]);
        let m = Host::new([2], vec![-(2f64.powi(63)), 2f64.powi(63)]);
        assert_eq!(
            unary_int(UnaryOp::Neg, DType::I64, &m).values,
            vec![-(2f64.powi(63)), -(i64::MAX as f64)]
        );
        assert_eq!(rem_floor(-1.0, 3.0), 2.0);
        assert_eq!(rem_floor(5.5, -2.0), -0.5);
        assert_eq!(reduce(ReduceOp::Sum, &x, 0).values, vec![0.0, 3.0, 2.0]);
        let empty = Host::new([2, 0], vec![]);
        assert_eq!(reduce(ReduceOp::Sum, &empty, 1).values, vec![0.0, 0.0]);
        assert!(reduce(ReduceOp::Mean, &empty, 1).values[0].is_nan());
        let s = softmax(&Host::new([2], vec![0.0, 0.0]), 0, false);
        assert_eq!(s.values, vec![0.5, 0.5]);
        let l = softmax(&Host::new([2], vec![0.0, 0.0]), 0, true);
        assert!((l.values[0] + 2f64.ln()).abs() < 1e-15);
        let a = Host::new([2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(matmul(&a, &a).values, vec![7.0, 10.0, 15.0, 22.0]);
        let init = Host::new([3], vec![0.0, 10.0, 20.0]);
        let src = Host::new([4], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(index_add(&init, &src, &[2, 0, 2, 1], 0).values, vec![2.0, 14.0, 24.0]);
        let idx = Host::new([4], vec![2.0, 0.0, 2.0, 1.0]);
        assert_eq!(scatter_add(&init, &src, &idx, 0).values, vec![2.0, 14.0, 24.0]);
        assert_eq!(gather(&init, &idx, 0).values, vec![20.0, 0.0, 20.0, 10.0]);
        assert_eq!(index_select(&a, &[1, 1, 0], 0).values, vec![3.0, 4.0, 3.0, 4.0, 1.0, 2.0]);
        let c = concat(&[a.clone(), Host::new([2, 1], vec![9.0, 8.0])], 1);
        assert_eq!(c.values, vec![1.0, 2.0, 9.0, 3.0, 4.0, 8.0]);
        let cast_u8 = cast(&Host::new([4], vec![-1.5, 300.0, f64::NAN, 7.9]), DType::U8);
        assert_eq!(cast_u8.values, vec![0.0, 255.0, 0.0, 7.0]);
    }
}
