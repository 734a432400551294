//! Element types as kernels see them: every dtype loads to and stores from `f32`, so float
//! kernels are written once and run on f32, f16 and bf16 alike.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use manychips_api::{DType, Element};

/// A stored element type. Arithmetic happens in `f32`; `f16`/`bf16` round to nearest-even on
/// store. The `f64` conversions are the api's [`Element`] ones, which define `Cast` and `Fill`.
pub(crate) trait Elem: Element + PartialOrd {
    const ZERO: Self;
    const ONE: Self;
    const IS_FLOAT: bool;

    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;

    /// Converts a slice to f32 (vectorised for the half types). Lengths are equal.
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    /// Converts f32 to this type, element by element. Lengths are equal.
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(s);
        }
    }

    /// The slice itself when this type is `f32`, so f32 kernels skip the staging copy.
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

    /// An integer's exact value (floats: truncated towards zero, saturating, NaN 0).
    fn to_wide(self) -> i128 {
        self.to_f64() as i128
    }

    /// `v` saturated to this type (floats: rounded).
    fn from_wide(v: i128) -> Self {
        Self::from_f64(v as f64)
    }

    /// An integer whose unsigned order is this type's ascending sort order (`Op::ArgSort`):
    /// floats by their f32 bits rearranged (−0.0 as +0.0, every NaN last), integers offset by
    /// their minimum.
    fn sort_key(self) -> u64 {
        let b = (self.to_f32() + 0.0).to_bits();
        let key = if b >= 0x8000_0000 { u32::MAX - b } else { b + 0x8000_0000 };
        if self.to_f32().is_nan() { u64::from(u32::MAX) } else { u64::from(key) }
    }

    /// `Cast` semantics. Floats go through f32, which holds every f16/bf16 exactly, so there
    /// is a single rounding. Integers convert exactly and saturate among themselves; to f32
    /// they round once (Rust's `as`), to f16/bf16 through f64, exact below 2^53 (beyond
    /// it an i64 rounds twice; f16 has overflowed long before).
    #[inline(always)]
    fn cast<D: Elem>(self) -> D {
        if Self::IS_FLOAT || D::DTYPE == DType::F32 {
            D::from_f32(self.to_f32())
        } else if D::IS_FLOAT {
            D::from_f64(self.to_f64())
        } else {
            D::from_wide(self.to_wide())
        }
    }
}

/// Integer arithmetic as the contract defines it (`manychips_api::DType`, `BinaryOp`):
/// wrapping; floor division and the divisor-signed remainder; 0 for a zero divisor.
pub(crate) trait Int: Elem + Ord {
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn floor_div(self, other: Self) -> Self;
    fn floor_rem(self, other: Self) -> Self;
    /// Wrapping negation and absolute value (`MIN` maps to itself; unsigned: never called).
    fn neg(self) -> Self;
    fn abs(self) -> Self;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            const IS_FLOAT: bool = false;

            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_wide(self) -> i128 {
                self as i128
            }
            #[inline(always)]
            fn from_wide(v: i128) -> Self {
                v.clamp(<$t>::MIN as i128, <$t>::MAX as i128) as $t
            }
            #[inline(always)]
            fn sort_key(self) -> u64 {
                (self as i128 - <$t>::MIN as i128) as u64
            }
        }

        impl Int for $t {
            #[inline(always)]
            fn add(self, other: Self) -> Self {
                self.wrapping_add(other)
            }
            #[inline(always)]
            fn sub(self, other: Self) -> Self {
                self.wrapping_sub(other)
            }
            #[inline(always)]
            fn mul(self, other: Self) -> Self {
                self.wrapping_mul(other)
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn floor_div(self, other: Self) -> Self {
                if other == 0 {
                    return 0;
                }
                let q = self.wrapping_div(other);
                // Truncation rounded towards zero; step down where the signs differ.
                let inexact = self.wrapping_rem(other) != 0;
                if inexact && ((self < 0) != (other < 0)) { q.wrapping_sub(1) } else { q }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn floor_rem(self, other: Self) -> Self {
                if other == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(other);
                if r != 0 && ((r < 0) != (other < 0)) { r.wrapping_add(other) } else { r }
            }
            #[inline(always)]
            fn neg(self) -> Self {
                (0 as $t).wrapping_sub(self)
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn abs(self) -> Self {
                if self < 0 { self.neg() } else { self }
            }
        }
    )*};
}

int_elem!(u8, u32, i32, i64);

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const IS_FLOAT: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Elem for f16 {
    const ZERO: Self = f16::ZERO;
    const ONE: Self = f16::ONE;
    const IS_FLOAT: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        // `half` uses F16C here when the CPU has it (detected at run time).
        src.convert_to_f32_slice(dst);
    }
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
}

impl Elem for bf16 {
    const ZERO: Self = bf16::ZERO;
    const ONE: Self = bf16::ONE;
    const IS_FLOAT: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(v))
    }
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        crate::kernels::simd::bf16_to_f32(bytemuck::cast_slice(src), dst);
    }
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        crate::kernels::simd::f32_to_bf16(src, bytemuck::cast_slice_mut(dst));
    }
}

/// Round-to-nearest-even f32 → bf16 without branches (so loops over it vectorise); agrees
/// with `half::bf16::from_f32` bit for bit, NaNs included (quietened, sign kept).
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x0040;
    (if x & 0x7fff_ffff > 0x7f80_0000 { nan } else { rounded }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let mut x: u32 = 0x1234_5678;
        let specials = [0.0f32, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY];
        for &v in &specials {
            assert_eq!(f32_to_bf16_bits(v), bf16::from_f32(v).to_bits(), "{v}");
            assert_eq!(f32_to_bf16_bits(-v), bf16::from_f32(-v).to_bits(), "{v}");
        }
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            let ours = f32_to_bf16_bits(v);
            let theirs = bf16::from_f32(v).to_bits();
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{v:e} ({x:#x})");
            }
        }
    }

    #[test]
    fn casts_follow_the_contract() {
        assert_eq!((-3.7f32).cast::<u32>(), 0);
        assert_eq!(3.7f32.cast::<u32>(), 3);
        assert_eq!(f32::NAN.cast::<u8>(), 0);
        assert_eq!(300.0f32.cast::<u8>(), 255);
        assert_eq!(70_000u32.cast::<u8>(), 255);
        assert_eq!(200u8.cast::<u32>(), 200);
        assert_eq!(16_777_217u32.cast::<f32>(), 16_777_216.0);
        assert_eq!(1.000_976_6f32.cast::<f16>(), f16::from_f32(1.000_976_6));
        assert_eq!(f16::from_f32(2.5).cast::<u32>(), 2);
        assert_eq!((-5i32).cast::<u32>(), 0);
        assert_eq!((1i64 << 40).cast::<i32>(), i32::MAX);
        assert_eq!(4_000_000_000u32.cast::<i32>(), i32::MAX);
        assert_eq!(i64::MAX.cast::<i64>(), i64::MAX);
        assert_eq!(((1i64 << 60) + 1).cast::<f32>(), (1u64 << 60) as f32);
        assert_eq!(((1i64 << 54) + 3).cast::<f32>(), ((1i64 << 54) + 3) as f32);
        assert_eq!(f32::NAN.cast::<i64>(), 0);
        assert_eq!((-1e20f32).cast::<i32>(), i32::MIN);
    }

    #[test]
    fn integer_arithmetic_follows_the_contract() {
        assert_eq!(7i32.floor_div(-2), -4);
        assert_eq!(7i32.floor_rem(-2), -1);
        assert_eq!((-7i64).floor_div(2), -4);
        assert_eq!((-7i64).floor_rem(2), 1);
        assert_eq!((-8i32).floor_rem(2), 0);
        assert_eq!(i32::MIN.floor_div(-1), i32::MIN);
        assert_eq!(i32::MIN.floor_rem(-1), 0);
        assert_eq!(5u8.floor_div(0), 0);
        assert_eq!(5i64.floor_rem(0), 0);
        assert_eq!(200u8.add(100), 44);
        assert_eq!(0u32.sub(1), u32::MAX);
        assert_eq!(i32::MIN.abs(), i32::MIN);
        assert_eq!(i64::MIN.neg(), i64::MIN);
        assert_eq!((-3i32).abs(), 3);
        for a in -9i32..=9 {
            for b in (-4i32..=4).filter(|&b| b != 0) {
                assert_eq!(a.floor_div(b) * b + a.floor_rem(b), a, "{a} {b}");
                assert!(a.floor_rem(b) == 0 || (a.floor_rem(b) < 0) == (b < 0));
            }
        }
    }
}
