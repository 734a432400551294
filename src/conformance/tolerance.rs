//! How close a device result must be to the f64 reference.
//!
//! An element passes when `|got − ref| ≤ rtol·|ref| + atol·scale + acc·spread + floor`:
//!
//! * `rtol·|ref|` is the rounding of the result to the output dtype (a few half-ulps);
//! * `atol·scale` is the error of computing in the dtype's precision, relative to the
//!   magnitude of what was computed (`scale`, chosen per op by the reference: `|a| + |b|`
//!   for an add, `|x|` for GELU, `√Σ term²` for a sum, ...);
//! * `acc·spread` is the rounding of an f32 accumulator: `spread = √k · Σ|term|` for a sum of
//!   `k` terms (matmul, reductions, softmax, index_add), so the bound follows the size of
//!   the terms rather than the (possibly cancelled) result;
//! * `floor` lets results below the smallest normal number round to subnormals or flush to
//!   zero.
//!
//! Integer results, data movement, comparisons, casts, max/min and the sign ops are exact.

use crate::DType;

use super::values::min_normal;

/// f32 accumulation allowance per `√k · Σ|term|` (about four f32 unit roundoffs): a correct
/// f32 accumulator stays far below it, an f16 one or a dropped term does not.
const ACC_F32: f64 = 2.4e-7;

/// The reference result of one op: values in row-major order of the output's shape, and how
/// exactly the device must match them.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub values: Vec<f64>,
    pub model: ErrorModel,
}

#[derive(Clone, Debug)]
pub(crate) enum ErrorModel {
    /// Bit-exact (as values; NaN must be NaN).
    Exact,
    /// Within tolerance; per element the magnitude of what was computed (`scale`) and of an
    /// accumulation (`spread`), see the module docs.
    Approx { scale: Vec<f64>, spread: Vec<f64> },
}

impl Expected {
    pub fn exact(values: Vec<f64>) -> Self {
        Expected { values, model: ErrorModel::Exact }
    }

    pub fn approx(values: Vec<f64>, scale: Vec<f64>) -> Self {
        let spread = vec![0.0; values.len()];
        Expected { values, model: ErrorModel::Approx { scale, spread } }
    }

    pub fn accumulated(values: Vec<f64>, scale: Vec<f64>, spread: Vec<f64>) -> Self {
        Expected { values, model: ErrorModel::Approx { scale, spread } }
    }
}

/// The per-dtype constants of the bound in the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    pub acc: f64,
    pub floor: f64,
}

impl Tolerance {
    /// f32: ~170 ulps relative (GPU transcendentals are a few ulps off, fast-math more);
    /// f16 / bf16: four half-ulps of the output (2^-11, 2^-8) relative, two to three ulps
    /// of the computed magnitude absolute.
    pub fn of(dtype: DType) -> Tolerance {
        let (rtol, atol) = match dtype {
            DType::F32 => (1e-5, 1e-6),
            DType::F16 => (2e-3, 1e-3),
            DType::BF16 => (1.6e-2, 1e-2),
            DType::U32 | DType::U8 | DType::I32 | DType::I64 => (0.0, 0.0),
        };
        Tolerance { rtol, atol, acc: ACC_F32, floor: min_normal(dtype) }
    }

    pub fn bound(&self, expected: f64, scale: f64, spread: f64) -> f64 {
        self.rtol * expected.abs() + self.atol * scale + self.acc * spread + self.floor
    }
}

/// The first element that failed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Miss {
    /// Row-major position in the output's shape.
    pub flat: usize,
    pub expected: f64,
    pub got: f64,
    pub abs_err: f64,
    /// `abs_err` in units of the element's bound (infinite for an exact mismatch).
    pub ratio: f64,
}

/// The outcome of comparing one output with its reference.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Verdict {
    /// Largest `|err| / bound` (0 when everything is exact).
    pub worst_ratio: f64,
    /// Largest `|err|` over elements that are finite on both sides.
    pub worst_abs: f64,
    /// How many elements failed, and the first of them.
    pub wrong: usize,
    pub first: Option<Miss>,
}

/// Compares `got` (row-major, the output's shape) with the reference under `tol`.
pub(crate) fn compare(expected: &Expected, got: &[f64], tol: &Tolerance) -> Verdict {
    let mut v = Verdict::default();
    for (i, (&want, &have)) in expected.values.iter().zip(got).enumerate() {
        let (abs_err, ratio) = match &expected.model {
            ErrorModel::Exact => {
                let same = want == have || (want.is_nan() && have.is_nan());
                let err = if same { 0.0 } else { (have - want).abs() };
                (err, if same { 0.0 } else { f64::INFINITY })
            }
            ErrorModel::Approx { scale, spread } => {
                if want.is_nan() || want.is_infinite() || !have.is_finite() {
                    let same = want == have || (want.is_nan() && have.is_nan());
                    (if same { 0.0 } else { f64::INFINITY }, if same { 0.0 } else { f64::INFINITY })
                } else {
                    let s = scale.get(i).copied().unwrap_or(0.0);
                    let a = spread.get(i).copied().unwrap_or(0.0);
                    let err = (have - want).abs();
                    let bound = tol.bound(want, s, a);
                    let ratio = if err == 0.0 {
                        0.0
                    } else if bound > 0.0 {
                        err / bound
                    } else {
                        f64::INFINITY
                    };
                    (err, ratio)
                }
            }
        };
        if abs_err.is_finite() {
            v.worst_abs = v.worst_abs.max(abs_err);
        }
        v.worst_ratio = v.worst_ratio.max(ratio);
        if ratio > 1.0 {
            v.wrong += 1;
            if v.first.is_none() {
                v.first = Some(Miss { flat: i, expected: want, got: have, abs_err, ratio });
            }
        }
    }
    if got.len() != expected.values.len() {
        // Cannot happen with the kit's own reads; counted so a short result never passes.
        v.wrong += expected.values.len().abs_diff(got.len());
        v.worst_ratio = f64::INFINITY;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Verdict {
        fn ok(&self) -> bool {
            self.wrong == 0
        }
    }

    #[test]
    fn exact_results_must_match_bit_for_bit() {
        let e = Expected::exact(vec![1.0, f64::NAN, 3.0]);
        let tol = Tolerance::of(DType::U32);
        assert!(compare(&e, &[1.0, f64::NAN, 3.0], &tol).ok());
        let v = compare(&e, &[1.0, f64::NAN, 4.0], &tol);
        assert_eq!(v.wrong, 1);
        assert_eq!(v.first.map(|m| m.flat), Some(2));
    }

    #[test]
    fn approx_results_scale_with_the_terms() {
        let tol = Tolerance::of(DType::F32);
        // A cancelled sum: ref 0 but terms of size 100; an error of 1e-5 is fine.
        let e = Expected::accumulated(vec![0.0], vec![100.0], vec![100.0]);
        assert!(compare(&e, &[1e-5], &tol).ok());
        assert!(!compare(&e, &[1e-2], &tol).ok());
        let e = Expected::approx(vec![2.0], vec![2.0]);
        assert!(compare(&e, &[2.0 * (1.0 + 5e-6)], &tol).ok());
        assert!(!compare(&e, &[2.001], &tol).ok());
        assert!(!compare(&e, &[f64::NAN], &tol).ok());
    }

    #[test]
    fn low_precision_allows_a_few_ulps() {
        let tol = Tolerance::of(DType::F16);
        let e = Expected::approx(vec![1.0], vec![1.0]);
        assert!(compare(&e, &[1.0 + 3.0 * 2f64.powi(-11)], &tol).ok());
        assert!(!compare(&e, &[1.01], &tol).ok());
        let tol = Tolerance::of(DType::BF16);
        assert!(compare(&e, &[1.0 + 2f64.powi(-7)], &tol).ok());
        assert!(!compare(&e, &[1.05], &tol).ok());
    }
}
