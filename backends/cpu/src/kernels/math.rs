//! Branch-free f32 transcendental functions that LLVM can vectorise.
//!
//! `f32::exp` and friends are libm calls, one element at a time; these are straight-line
//! arithmetic and selects, so a loop over them compiles to SIMD (see `simd.rs` for the
//! AVX2 build). Every function is `#[inline(always)]` so it is compiled inside the
//! feature-enabled loop that calls it.
//!
//! Each is generic over how a polynomial step `a·b + c` is formed ([`MulAdd`]): one FMA
//! instruction in the AVX2+FMA build, which halves the instructions of every Horner step and
//! rounds once instead of twice; a multiply and an add in the baseline build, where
//! `f32::mul_add` would be a slow libm call. Rust never fuses `a * b + c` by itself.

/// How `a·b + c` is formed: see the module notes.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One fused multiply-add (for code compiled with the `fma` target feature).
pub(crate) struct Fused;

/// A multiply, then an add.
pub(crate) struct Separate;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for every `n` we use (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// ln(f32::MAX): beyond it exp overflows.
const EXP_HI: f32 = 88.722_84;
/// ln(f32::MIN_POSITIVE): below it the result is subnormal; we return 0 there.
const EXP_LO: f32 = -87.336_55;
/// 1.5 · 2^23: adding it rounds to an integer kept in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x with a relative error of about 1 ulp on [-87.3, 88.7]; 0 below, +inf above, NaN kept.
#[inline(always)]
pub fn exp<M: MulAdd>(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    // n = round(x / ln 2) without a libm round (which would not vectorise on baseline x86).
    let t = xc * LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    // Cody–Waite: n·LN2_HI is exact, so fused or not the reduction loses nothing there.
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, xc));
    // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4f32;
    p = M::mul_add(p, r, 1.398_199_9e-3);
    p = M::mul_add(p, r, 8.333_452e-3);
    p = M::mul_add(p, r, 4.166_579_6e-2);
    p = M::mul_add(p, r, 1.666_666_5e-1);
    p = M::mul_add(p, r, 0.5);
    let y = M::mul_add(p * r, r, r) + 1.0;
    // 2^n as two normal factors: n spans [-126, 128], and neither end is one normal float.
    // (Wrapping ops: a NaN input makes `ni` garbage; its result is replaced below.)
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    let v = y * s1 * s2;
    let v = if x > EXP_HI { f32::INFINITY } else { v };
    let v = if x < EXP_LO { 0.0 } else { v };
    if x.is_nan() { x } else { v }
}

/// tanh with a few ulp of error: an odd polynomial near 0 (where `1 - 2/(e^2x + 1)` would
/// cancel), the exp form elsewhere.
#[inline(always)]
pub fn tanh<M: MulAdd>(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    // Cephes tanhf polynomial, |x| < 0.625.
    let mut p = -5.704_988_7e-3f32;
    p = M::mul_add(p, z, 2.063_909e-2);
    p = M::mul_add(p, z, -5.373_971_6e-2);
    p = M::mul_add(p, z, 1.333_144_2e-1);
    p = M::mul_add(p, z, -3.333_328e-1);
    let small = M::mul_add(p * z, x, x);
    let big = (1.0 - 2.0 / (exp::<M>(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 { small } else { big }
}

#[inline(always)]
pub fn sigmoid<M: MulAdd>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<M>(-x))
}

#[inline(always)]
pub fn silu<M: MulAdd>(x: f32) -> f32 {
    x * sigmoid::<M>(x)
}

/// 0.5·x·(1 + tanh(u)) rewritten as x·sigmoid(2u), which is the same function without the
/// cancellation of `1 + tanh(u)` for negative x.
#[inline(always)]
pub fn gelu_tanh<M: MulAdd>(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * M::mul_add(0.044_715 * x * x, x, x);
    x * sigmoid::<M>(2.0 * u)
}

/// 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(-x/√2): the erfc form keeps full relative accuracy
/// in the negative tail, where `1 + erf` would cancel.
///
/// erfc(z) is the Chebyshev fit of Numerical Recipes (`erfcc`: t·e^(-z² + P(t)) with
/// t = 1/(1 + z/2), fractional error < 1.2e-7). In the tail e^(-z²) is steep, so z² = x²/2 is
/// formed exactly (Dekker's split, no FMA needed) and e^(-z²) taken from the exact high part
/// times a correction, rather than rounding an argument of size ~80 to f32 first.
#[inline(always)]
pub fn gelu_erf<M: MulAdd>(x: f32) -> f32 {
    // Beyond ±15 erfc is 0 or 2 in f32; clamping keeps the split below finite.
    let xc = x.clamp(-15.0, 15.0);
    let a = xc.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = 0.170_872_77f32;
    p = M::mul_add(p, t, -0.822_152_23);
    p = M::mul_add(p, t, 1.488_515_9);
    p = M::mul_add(p, t, -1.135_204);
    p = M::mul_add(p, t, 0.278_868_07);
    p = M::mul_add(p, t, -0.186_288_06);
    p = M::mul_add(p, t, 0.096_784_18);
    p = M::mul_add(p, t, 0.374_091_96);
    p = M::mul_add(p, t, 1.000_023_7);
    p = M::mul_add(p, t, -1.265_512_2);
    // xc² = hi + lo exactly.
    let c = 4097.0 * xc;
    let xh = c - (c - xc);
    let xl = xc - xh;
    let hi = xc * xc;
    let lo = ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl;
    // The split above stays plain multiplies and adds: its exactness is the point of it.
    let r = t * exp::<M>(-0.5 * hi) * exp::<M>(p - 0.5 * lo);
    // erfc(-x/√2): r is erfc(|x|/√2), the tail, when x ≤ 0.
    let erfc = if x <= 0.0 { r } else { 2.0 - r };
    0.5 * x * erfc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(got: f32, want: f64) -> f64 {
        if want == 0.0 { got.abs() as f64 } else { ((got as f64 - want) / want).abs() }
    }

    /// erf(x) in f64 by its Taylor series (|x| < 3), erfc by a continued fraction beyond.
    fn erfc64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
        } else if x > 0.0 {
            // Lentz-free backward evaluation of the Laplace continued fraction.
            let mut f = 0.0;
            for k in (1..200).rev() {
                f = (k as f64 / 2.0) / (x + f);
            }
            (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
        } else {
            2.0 - erfc64(-x)
        }
    }

    #[test]
    fn exp_is_accurate_everywhere() {
        exp_is_accurate_with::<Separate>();
        exp_is_accurate_with::<Fused>();
    }

    fn exp_is_accurate_with<M: MulAdd>() {
        let exp = exp::<M>;
        let mut worst: f64 = 0.0;
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.3f32 + (88.7f32 + 87.3) * (i as f32 / n as f32);
            worst = worst.max(rel(exp(x), (x as f64).exp()));
        }
        assert!(worst < 2.5e-7, "exp max relative error {worst:e}");
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(88.72).is_finite());
    }

    #[test]
    fn tanh_sigmoid_gelu_are_accurate() {
        tanh_sigmoid_gelu_are_accurate_with::<Separate>();
        tanh_sigmoid_gelu_are_accurate_with::<Fused>();
    }

    fn tanh_sigmoid_gelu_are_accurate_with<M: MulAdd>() {
        let (tanh, sigmoid) = (tanh::<M>, sigmoid::<M>);
        let (gelu_tanh, gelu_erf) = (gelu_tanh::<M>, gelu_erf::<M>);
        let n = 200_000;
        let (mut t, mut s, mut g, mut e) = (0f64, 0f64, 0f64, 0f64);
        for i in 0..=n {
            let x = -20.0f32 + 40.0 * (i as f32 / n as f32);
            let xd = x as f64;
            // Relative error where the value is not tiny, absolute below.
            let err = |got: f32, want: f64| {
                ((got as f64 - want).abs() / want.abs().max(1e-30)).min((got as f64 - want).abs())
            };
            t = t.max(err(tanh(x), xd.tanh()));
            s = s.max(err(sigmoid(x), 1.0 / (1.0 + (-xd).exp())));
            let c = (2.0 / std::f64::consts::PI).sqrt();
            g = g.max(err(
                gelu_tanh(x),
                0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd.powi(3))).tanh()),
            ));
            let want = 0.5 * xd * erfc64(-xd / 2f64.sqrt());
            // Relative error wherever the value is a normal f32.
            e = e.max(if want.abs() > 1e-37 {
                rel(gelu_erf(x), want)
            } else {
                err(gelu_erf(x), want)
            });
        }
        assert!(t < 1e-6, "tanh {t:e}");
        assert!(s < 1e-6, "sigmoid {s:e}");
        assert!(g < 1e-6, "gelu_tanh {g:e}");
        assert!(e < 1e-6, "gelu_erf {e:e}");
        assert_eq!(tanh(1e-20), 1e-20);
        assert!(tanh(f32::NAN).is_nan() && gelu_erf(f32::NAN).is_nan());
    }
}
