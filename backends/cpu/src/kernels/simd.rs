//! The hot f32 slice loops, each compiled three times: for the baseline target, with AVX2+FMA
//! and with AVX-512, the best the CPU runs picked at run time. The crate never assumes
//! `-C target-cpu=native`, so a binary built here runs on any x86-64, and still uses 256- or
//! 512-bit vectors where the CPU has them.
//!
//! Loops are plain iterator code over equal-length slices; the reductions keep 8 or 16
//! independent accumulators, which is what lets LLVM vectorise them without fast-math.

use manychips_api::{BinaryOp, CompareOp, UnaryOp};

use super::math;

/// True when the CPU has AVX2 and FMA (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// True when the CPU also has AVX-512F (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| has_avx2_fma() && is_x86_feature_detected!("avx512f"))
}

/// Defines `fn $name` whose body is compiled for the baseline target, for AVX2+FMA and for
/// AVX-512, and calls the best one the CPU runs. Everything the body calls must be `#[inline(always)]`
/// (or small generic std code) to be compiled with the wider features. Inside the body, `M`
/// is how `math` forms `a·b + c` in that build (`math::Fused` with FMA, `math::Separate`
/// without).
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp<M: math::MulAdd>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp::<math::Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp::<math::Fused>($($arg),*)
                }
                if has_avx512() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA, checked at run time.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp::<math::Separate>($($arg),*)
        }
    };
}

#[inline(always)]
fn zip1(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = f(x);
    }
}

#[inline(always)]
fn zip2(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

/// The remainder with the divisor's sign (Python's `%`): Rust's `%` is C's `fmod`, exact,
/// with the dividend's sign, moved over by one divisor where the signs differ.
#[inline(always)]
pub(crate) fn rem_floor(x: f32, y: f32) -> f32 {
    let r = x % y;
    if r != 0.0 && ((r < 0.0) != (y < 0.0)) { r + y } else { r }
}

/// Expands `$body` once per binary op with `$f` bound to a closure of that op, so each arm
/// is its own monomorphic (vectorisable) loop rather than an indirect call per element.
macro_rules! per_binary_op {
    ($op:expr, |$f:ident| $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |x: f32, y: f32| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $f = |x: f32, y: f32| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $f = |x: f32, y: f32| x * y;
                $body
            }
            BinaryOp::Div => {
                let $f = |x: f32, y: f32| x / y;
                $body
            }
            BinaryOp::Max => {
                let $f = |x: f32, y: f32| x.max(y);
                $body
            }
            BinaryOp::Min => {
                let $f = |x: f32, y: f32| x.min(y);
                $body
            }
            BinaryOp::Pow => {
                let $f = |x: f32, y: f32| x.powf(y);
                $body
            }
            BinaryOp::Rem => {
                let $f = rem_floor;
                $body
            }
        }
    };
}

multiversion! {
    /// `dst[i] = a[i] ∘ b[i]`.
    pub(crate) fn binary_vv(op: BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
        per_binary_op!(op, |f| zip2(a, b, dst, f))
    }
}

multiversion! {
    /// `dst[i] = a[i] ∘ b` (right operand broadcast).
    pub(crate) fn binary_vs(op: BinaryOp, a: &[f32], b: f32, dst: &mut [f32]) {
        per_binary_op!(op, |f| zip1(a, dst, |x| f(x, b)))
    }
}

multiversion! {
    /// `dst[i] = a ∘ b[i]` (left operand broadcast).
    pub(crate) fn binary_sv(op: BinaryOp, a: f32, b: &[f32], dst: &mut [f32]) {
        per_binary_op!(op, |f| zip1(b, dst, |y| f(a, y)))
    }
}

/// Expands `$body` once per comparison with `$f` bound to a closure giving 1.0 where it holds
/// and 0.0 elsewhere (IEEE: a comparison with NaN holds only for `Ne`), one vectorisable
/// loop per op.
macro_rules! per_compare_op {
    ($op:expr, |$f:ident| $body:expr) => {
        match $op {
            CompareOp::Eq => {
                let $f = |x: f32, y: f32| if x == y { 1.0 } else { 0.0 };
                $body
            }
            CompareOp::Ne => {
                let $f = |x: f32, y: f32| if x != y { 1.0 } else { 0.0 };
                $body
            }
            CompareOp::Lt => {
                let $f = |x: f32, y: f32| if x < y { 1.0 } else { 0.0 };
                $body
            }
            CompareOp::Le => {
                let $f = |x: f32, y: f32| if x <= y { 1.0 } else { 0.0 };
                $body
            }
            CompareOp::Gt => {
                let $f = |x: f32, y: f32| if x > y { 1.0 } else { 0.0 };
                $body
            }
            CompareOp::Ge => {
                let $f = |x: f32, y: f32| if x >= y { 1.0 } else { 0.0 };
                $body
            }
        }
    };
}

multiversion! {
    /// `dst[i] = (a[i] ∘ b[i]) as 1.0 / 0.0`.
    pub(crate) fn compare_vv(op: CompareOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
        per_compare_op!(op, |f| zip2(a, b, dst, f))
    }
}

multiversion! {
    /// `dst[i] = (a[i] ∘ b) as 1.0 / 0.0` (right operand broadcast).
    pub(crate) fn compare_vs(op: CompareOp, a: &[f32], b: f32, dst: &mut [f32]) {
        per_compare_op!(op, |f| zip1(a, dst, |x| f(x, b)))
    }
}

multiversion! {
    /// `dst[i] = (a ∘ b[i]) as 1.0 / 0.0` (left operand broadcast).
    pub(crate) fn compare_sv(op: CompareOp, a: f32, b: &[f32], dst: &mut [f32]) {
        per_compare_op!(op, |f| zip1(b, dst, |y| f(a, y)))
    }
}

multiversion! {
    /// `dst[i] = f(src[i])`.
    pub(crate) fn unary(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
        match op {
            UnaryOp::Neg => zip1(src, dst, |x| -x),
            UnaryOp::Abs => zip1(src, dst, f32::abs),
            UnaryOp::Exp => zip1(src, dst, math::exp::<M>),
            UnaryOp::Log => zip1(src, dst, f32::ln),
            UnaryOp::Sqrt => zip1(src, dst, f32::sqrt),
            UnaryOp::Rsqrt => zip1(src, dst, |x| 1.0 / x.sqrt()),
            UnaryOp::Tanh => zip1(src, dst, math::tanh::<M>),
            UnaryOp::Sigmoid => zip1(src, dst, math::sigmoid::<M>),
            UnaryOp::Relu => zip1(src, dst, |x| x.max(0.0)),
            UnaryOp::GeluTanh => zip1(src, dst, math::gelu_tanh::<M>),
            UnaryOp::GeluErf => zip1(src, dst, math::gelu_erf::<M>),
            UnaryOp::Silu => zip1(src, dst, math::silu::<M>),
            UnaryOp::Sin => zip1(src, dst, f32::sin),
            UnaryOp::Cos => zip1(src, dst, f32::cos),
        }
    }
}

/// Whether a unary op is expensive enough per element to parallelise smaller tensors.
pub(crate) fn unary_is_heavy(op: UnaryOp) -> bool {
    !matches!(op, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sqrt | UnaryOp::Rsqrt)
}

multiversion! {
    /// `dst[i] = src[i] * mul + add`.
    pub(crate) fn affine(src: &[f32], dst: &mut [f32], mul: f32, add: f32) {
        zip1(src, dst, |x| x * mul + add)
    }
}

multiversion! {
    pub(crate) fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s) << 16);
        }
    }
}

multiversion! {
    pub(crate) fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = crate::element::f32_to_bf16_bits(s);
        }
    }
}

// ---- Reductions -------------------------------------------------------------------------

/// Folds `x` with `L` independent lanes, then the lanes and the tail.
#[inline(always)]
fn fold_lanes<const L: usize>(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut r = init;
    for &v in acc.iter().chain(tail) {
        r = f(r, v);
    }
    r
}

multiversion! {
    /// Σ x in f32 with 16 lanes; callers keep blocks short and add blocks in f64.
    pub(crate) fn sum(x: &[f32]) -> f32 {
        fold_lanes::<16>(x, 0.0, |a, v| a + v)
    }
}

multiversion! {
    pub(crate) fn max(x: &[f32]) -> f32 {
        fold_lanes::<16>(x, f32::NEG_INFINITY, f32::max)
    }
}

multiversion! {
    pub(crate) fn min(x: &[f32]) -> f32 {
        fold_lanes::<16>(x, f32::INFINITY, f32::min)
    }
}

multiversion! {
    /// `acc[i] += row[i]`.
    pub(crate) fn add_assign(acc: &mut [f32], row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

multiversion! {
    pub(crate) fn max_assign(acc: &mut [f32], row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = a.max(v);
        }
    }
}

multiversion! {
    pub(crate) fn min_assign(acc: &mut [f32], row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = a.min(v);
        }
    }
}

multiversion! {
    /// Running arg-max over rows: a strictly greater value replaces, so the first maximum
    /// wins.
    pub(crate) fn argmax_assign(best: &mut [f32], index: &mut [u32], row: &[f32], r: u32) {
        for ((b, i), &v) in best.iter_mut().zip(index.iter_mut()).zip(row) {
            let better = v > *b;
            *i = if better { r } else { *i };
            *b = if better { v } else { *b };
        }
    }
}

multiversion! {
    /// Where `row[i] < best[i]`, records `r` in `index[i]` and the new minimum.
    pub(crate) fn argmin_assign(best: &mut [f32], index: &mut [u32], row: &[f32], r: u32) {
        for ((b, i), &v) in best.iter_mut().zip(index.iter_mut()).zip(row) {
            let better = v < *b;
            *i = if better { r } else { *i };
            *b = if better { v } else { *b };
        }
    }
}

// ---- Softmax pieces ---------------------------------------------------------------------

/// Running sums of the softmax loops: one 512-bit vector of them, so the AVX-512 build
/// computes the exponentials at its full width in the same loop (two 256-bit vectors per
/// step in the AVX2 build).
pub(crate) const SOFTMAX_LANES: usize = 16;

multiversion! {
    /// `dst[i] = e^(src[i] - m)`; returns Σ dst (f32, 16 lanes; callers keep blocks short).
    pub(crate) fn exp_sub_store(src: &[f32], dst: &mut [f32], m: f32) -> f32 {
        const L: usize = SOFTMAX_LANES;
        let mut acc = [0f32; L];
        let mut sc = src.chunks_exact(L);
        let mut dc = dst.chunks_exact_mut(L);
        for (s, d) in (&mut sc).zip(&mut dc) {
            for i in 0..L {
                let e = math::exp::<M>(s[i] - m);
                d[i] = e;
                acc[i] += e;
            }
        }
        let mut total: f32 = acc.iter().sum();
        for (&s, d) in sc.remainder().iter().zip(dc.into_remainder()) {
            *d = math::exp::<M>(s - m);
            total += *d;
        }
        total
    }
}

multiversion! {
    /// `x[i] = e^(x[i] - m)` in place; returns Σ x.
    pub(crate) fn exp_sub_inplace(x: &mut [f32], m: f32) -> f32 {
        const L: usize = SOFTMAX_LANES;
        let mut acc = [0f32; L];
        let mut xc = x.chunks_exact_mut(L);
        for c in &mut xc {
            for i in 0..L {
                let e = math::exp::<M>(c[i] - m);
                c[i] = e;
                acc[i] += e;
            }
        }
        let mut total: f32 = acc.iter().sum();
        for v in xc.into_remainder() {
            *v = math::exp::<M>(*v - m);
            total += *v;
        }
        total
    }
}

multiversion! {
    /// Σ e^(x[i] - m) without storing anything (log-softmax needs only the sum).
    pub(crate) fn exp_sub_sum(x: &[f32], m: f32) -> f32 {
        const L: usize = SOFTMAX_LANES;
        let mut acc = [0f32; L];
        let chunks = x.chunks_exact(L);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                acc[i] += math::exp::<M>(c[i] - m);
            }
        }
        acc.iter().sum::<f32>() + tail.iter().map(|&v| math::exp::<M>(v - m)).sum::<f32>()
    }
}

multiversion! {
    /// Softmax (or log-softmax when `log`) of each `len`-long row of `src` into `dst`, for
    /// rows shorter than [`SOFTMAX_LANES`] (a classifier's ten classes): the arithmetic of
    /// `max`, `exp_sub_sum` / `exp_sub_store`, `sub2` and `scale` on such a row, step for
    /// step, in one call for all the rows instead of four per row.
    pub(crate) fn softmax_short_rows(src: &[f32], dst: &mut [f32], len: usize, log: bool) {
        for (s, d) in src.chunks_exact(len).zip(dst.chunks_exact_mut(len)) {
            let m = s.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            if log {
                let sum: f32 = s.iter().map(|&v| math::exp::<M>(v - m)).sum();
                let c = f64::from(sum).ln() as f32;
                for (d, &v) in d.iter_mut().zip(s) {
                    *d = (v - m) - c;
                }
            } else {
                let mut sum = 0f32;
                for (d, &v) in d.iter_mut().zip(s) {
                    *d = math::exp::<M>(v - m);
                    sum += *d;
                }
                let k = (1.0 / f64::from(sum)) as f32;
                for d in d.iter_mut() {
                    *d *= k;
                }
            }
        }
    }
}

multiversion! {
    pub(crate) fn scale(x: &mut [f32], k: f32) {
        for v in x.iter_mut() {
            *v *= k;
        }
    }
}

multiversion! {
    /// `dst[i] = (src[i] - m) - c`: log-softmax, subtracting the max first so the result
    /// stays accurate when it is near 0.
    pub(crate) fn sub2(src: &[f32], dst: &mut [f32], m: f32, c: f32) {
        zip1(src, dst, |x| (x - m) - c)
    }
}

multiversion! {
    pub(crate) fn sub2_inplace(x: &mut [f32], m: f32, c: f32) {
        for v in x.iter_mut() {
            *v = (*v - m) - c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short rows in one call compute what the per-row steps compute, bit for bit.
    #[test]
    fn short_softmax_rows_match_the_row_steps() {
        let len = 10;
        let src: Vec<f32> = (0..7 * len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
        for log in [false, true] {
            let mut fast = vec![0f32; src.len()];
            softmax_short_rows(&src, &mut fast, len, log);
            for (s, got) in src.chunks(len).zip(fast.chunks(len)) {
                let m = max(s);
                let mut want = vec![0f32; len];
                if log {
                    let c = (exp_sub_sum(s, m) as f64).ln() as f32;
                    sub2(s, &mut want, m, c);
                } else {
                    let sum = exp_sub_store(s, &mut want, m) as f64;
                    scale(&mut want, (1.0 / sum) as f32);
                }
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "log {log}: {got:?} against {want:?}");
            }
        }
    }

    #[test]
    fn comparisons_follow_ieee_in_every_form() {
        let a = [
            1.0,
            f32::NAN,
            -0.0,
            3.0,
            2.0,
            f32::INFINITY,
            0.5,
            -1.0,
            7.0,
            1.0,
            2.0,
            3.0,
            4.0,
            5.0,
            6.0,
            7.0,
            8.0,
            f32::NAN,
        ];
        let b = [
            1.0,
            1.0,
            0.0,
            2.0,
            3.0,
            f32::INFINITY,
            f32::NAN,
            -2.0,
            7.0,
            0.0,
            2.0,
            4.0,
            4.0,
            6.0,
            6.0,
            8.0,
            8.0,
            f32::NAN,
        ];
        for op in CompareOp::ALL {
            let want = |x, y| if super::super::fused::compare(op, x, y) { 1.0 } else { 0.0 };
            let mut d = [9.0f32; 18];
            compare_vv(op, &a, &b, &mut d);
            assert!(d.iter().zip(a.iter().zip(&b)).all(|(d, (&x, &y))| *d == want(x, y)), "{op:?}");
            compare_vs(op, &a, 2.0, &mut d);
            assert!(d.iter().zip(&a).all(|(d, &x)| *d == want(x, 2.0)), "{op:?} vs");
            compare_sv(op, f32::NAN, &b, &mut d);
            assert!(d.iter().zip(&b).all(|(d, &y)| *d == want(f32::NAN, y)), "{op:?} sv");
        }
    }

    #[test]
    fn lanes_and_tails_are_all_counted() {
        for n in [0usize, 1, 7, 15, 16, 17, 33, 100] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 3.0).collect();
            assert!((sum(&x) - x.iter().sum::<f32>()).abs() < 1e-4);
            assert_eq!(max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            assert_eq!(min(&x), x.iter().cloned().fold(f32::INFINITY, f32::min));
            let mut d = vec![0f32; n];
            let s = exp_sub_store(&x, &mut d, 1.0);
            let want: f32 = x.iter().map(|v| (v - 1.0).exp()).sum();
            assert!((s - want).abs() <= 1e-5 * want.max(1.0), "{n}: {s} vs {want}");
            assert!((exp_sub_sum(&x, 1.0) - want).abs() <= 1e-5 * want.max(1.0));
        }
    }
}
