//! Element values on the host: rounding to a dtype, byte images, and random inputs.
//!
//! Every value the kit sends to a device is first rounded to the device dtype here, and the
//! reference computes from the rounded value, so the reference and the device start from the
//! same numbers.

use half::{bf16, f16};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::{DType, Element};

/// `v` converted to `dtype` as the contract's `Cast` does (round to nearest even for floats,
/// saturating truncation towards zero for integers, NaN to 0), back in f64 (exactly).
pub(crate) fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => f64::from(v as f32),
        // half's own f64 conversions drop the low 32 bits of the f64 before rounding, which
        // misrounds f32 values just past a tie; round exactly instead.
        DType::F16 => round_float(v, 11, -14, f16::MAX.to_f64()),
        DType::BF16 => round_float(v, 8, -126, bf16::MAX.to_f64()),
        DType::U32 => f64::from(v as u32),
        DType::U8 => f64::from(v as u8),
        DType::I32 => f64::from(v as i32),
        // Values past ±2^53 are not exact as f64; the kit only makes ones that are.
        DType::I64 => (v as i64) as f64,
    }
}

/// `v` rounded to nearest-even in a binary format with `bits` significant bits, smallest
/// normal exponent `min_exp` (subnormals below it) and largest finite value `max` (beyond
/// which IEEE rounding gives infinity).
fn round_float(v: f64, bits: i32, min_exp: i32, max: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let a = v.abs();
    // a = m · 2^e with 1 ≤ m < 2 (f64 subnormals are far below every format here).
    let e = ((a.to_bits() >> 52) as i32 - 1023).max(min_exp);
    let quantum = 2f64.powi(e - (bits - 1));
    let r = (a / quantum).round_ties_even() * quantum;
    let r = if r > max { f64::INFINITY } else { r };
    r.copysign(v)
}

/// The bytes a device buffer holds for `values` stored as `dtype` (native byte order).
pub(crate) fn encode(dtype: DType, values: &[f64]) -> Vec<u8> {
    fn enc<T: Element>(values: &[f64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * size_of::<T>());
        for &v in values {
            out.extend_from_slice(bytemuck::bytes_of(&T::from_f64(v)));
        }
        out
    }
    match dtype {
        DType::F32 => enc::<f32>(values),
        DType::F16 => enc::<f16>(values),
        DType::BF16 => enc::<bf16>(values),
        DType::U32 => enc::<u32>(values),
        DType::U8 => enc::<u8>(values),
        DType::I32 => enc::<i32>(values),
        DType::I64 => enc::<i64>(values),
    }
}

/// The values held by `bytes` of `dtype`; a trailing partial element is ignored.
pub(crate) fn decode(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    fn dec<T: Element>(bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(size_of::<T>())
            .map(|c| bytemuck::pod_read_unaligned::<T>(c).to_f64())
            .collect()
    }
    match dtype {
        DType::F32 => dec::<f32>(bytes),
        DType::F16 => dec::<f16>(bytes),
        DType::BF16 => dec::<bf16>(bytes),
        DType::U32 => dec::<u32>(bytes),
        DType::U8 => dec::<u8>(bytes),
        DType::I32 => dec::<i32>(bytes),
        DType::I64 => dec::<i64>(bytes),
    }
}

/// The conspicuous value the kit stores around every view and in every output before an op
/// runs: an element that a device wrongly reads shows up as a large error, one it wrongly
/// writes (or forgets to write) is caught exactly.
pub(crate) fn junk(dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => round_to(dtype, -7777.0),
        DType::U32 => f64::from(0xDEAD_BEEF_u32),
        DType::U8 => 165.0,
        DType::I32 => f64::from(0xDEAD_BEEF_u32 as i32),
        // Exact as f64 (32 significant bits), with bits set in both words.
        DType::I64 => -(0x0DEA_DBEE_F000_0000_i64 as f64),
    }
}

/// The smallest positive normal value of a float dtype (0 for integers): below it a device
/// may round to subnormals or flush to zero.
pub(crate) fn min_normal(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f64::from(f32::MIN_POSITIVE),
        DType::F16 => f16::MIN_POSITIVE.to_f64(),
        DType::BF16 => bf16::MIN_POSITIVE.to_f64(),
        DType::U32 | DType::U8 | DType::I32 | DType::I64 => 0.0,
    }
}

/// How random inputs are drawn; always rounded to the dtype afterwards.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dist {
    /// Uniform in `[lo, hi)`.
    Uniform(f64, f64),
    /// Magnitude uniform in `[lo, hi)` with a random sign: kept away from zero (divisors).
    AwayFromZero(f64, f64),
    /// Integers uniform in `[lo, hi]`.
    Int(i64, i64),
    /// Any value of the dtype for data movement: floats in `[-4, 4)`, integers over their
    /// whole range (`i64`: those exact as f64, multiples of 2^11).
    Data,
}

/// `n` random values of `dtype` drawn from `dist`, rounded to the dtype (never `-0.0`).
pub(crate) fn random(rng: &mut ChaCha8Rng, dtype: DType, dist: Dist, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = match dist {
                Dist::Uniform(lo, hi) => rng.random_range(lo..hi),
                Dist::AwayFromZero(lo, hi) => {
                    let m = rng.random_range(lo..hi);
                    if rng.random_bool(0.5) { m } else { -m }
                }
                Dist::Int(lo, hi) => rng.random_range(lo..=hi) as f64,
                Dist::Data => match dtype {
                    DType::U32 => f64::from(rng.random::<u32>()),
                    DType::U8 => f64::from(rng.random::<u8>()),
                    DType::I32 => f64::from(rng.random::<i32>()),
                    DType::I64 => ((rng.random::<i64>() >> 11) << 11) as f64,
                    _ => rng.random_range(-4.0..4.0),
                },
            };
            let r = round_to(dtype, v);
            if r == 0.0 { 0.0 } else { r }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_follows_cast_semantics() {
        // f16 has 11 significant bits: 1 + 2^-11 is a tie and goes to the even neighbour 1.
        assert_eq!(round_to(DType::F16, 1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(round_to(DType::F16, 1.0 + 3.0 * 2f64.powi(-11)), 1.0 + 2f64.powi(-9));
        assert_eq!(round_to(DType::BF16, 257.0), 256.0);
        assert_eq!(round_to(DType::BF16, 259.0), 260.0);
        assert_eq!(round_to(DType::F16, 1e5), f64::INFINITY);
        assert_eq!(round_to(DType::U8, 300.7), 255.0);
        assert_eq!(round_to(DType::U8, -3.5), 0.0);
        assert_eq!(round_to(DType::U32, 7.9), 7.0);
        assert_eq!(round_to(DType::U32, f64::NAN), 0.0);
        assert_eq!(round_to(DType::U32, 5e9), f64::from(u32::MAX));
        assert_eq!(round_to(DType::I32, -5e9), f64::from(i32::MIN));
        assert_eq!(round_to(DType::I32, -7.9), -7.0);
        assert_eq!(round_to(DType::I64, 1e19), i64::MAX as f64);
        assert!(round_to(DType::BF16, f64::NAN).is_nan());
        // An f32 just past a bf16 tie rounds away from it (half's from_f64 says 170).
        let past_tie = f64::from(-170.5f32 - 2f32.powi(-16));
        assert_eq!(round_to(DType::BF16, past_tie), -171.0);
        assert_eq!(round_to(DType::BF16, -170.5), -170.0);
        // Subnormals and the largest values.
        assert_eq!(round_to(DType::F16, 2f64.powi(-24) * 1.4), 2f64.powi(-24));
        assert_eq!(round_to(DType::F16, 65519.0), 65504.0);
        assert_eq!(round_to(DType::F16, 65520.0), f64::INFINITY);
    }

    #[test]
    fn rounding_agrees_with_half_from_f32() {
        let mut x = 1.234_567_f32;
        for _ in 0..100_000 {
            x = (x * 1.000_123_4 + 0.000_777) % 70000.0;
            for v in [x, -x, x * 1e-6, x * 1e30] {
                assert_eq!(round_to(DType::F16, f64::from(v)), f16::from_f32(v).to_f64(), "{v}");
                assert_eq!(round_to(DType::BF16, f64::from(v)), bf16::from_f32(v).to_f64(), "{v}");
            }
        }
    }

    #[test]
    fn bytes_round_trip() {
        for dtype in DType::ALL {
            let vals = [0.0, 1.0, 2.0, 100.0, junk(dtype)];
            let bytes = encode(dtype, &vals);
            assert_eq!(bytes.len(), vals.len() * dtype.size_in_bytes());
            assert_eq!(decode(dtype, &bytes), vals.map(|v| round_to(dtype, v)).to_vec());
        }
    }
}
