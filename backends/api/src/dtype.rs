//! Element types a tensor can hold.

use std::fmt;

use half::{bf16, f16};

/// The element type of a buffer view.
///
/// Floats take every op. Integers take integer arithmetic (add, sub, mul, floor division,
/// remainder, minimum, maximum; neg and abs when signed; sum, max, min, argmax, argmin), with
/// one overflow rule on every backend: results wrap (two's complement, modulo 2^bits), as
/// Rust's `wrapping_*` and C's unsigned arithmetic do. `U32`, `I32` and `I64` also index;
/// `U8` is also the mask type of comparisons and `where`.
///
/// `I64` is optional for a device (WGSL has no 64-bit integers): a device that cannot
/// compute it exactly leaves it out of `DeviceInfo::dtypes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    U32,
    U8,
    I32,
    I64,
}

impl DType {
    pub const ALL: [DType; 7] =
        [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8, DType::I32, DType::I64];
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
    pub const INTS: [DType; 4] = [DType::U32, DType::U8, DType::I32, DType::I64];
    /// The dtypes an index tensor may have; a negative index counts from the end of the axis.
    pub const INDICES: [DType; 3] = [DType::U32, DType::I32, DType::I64];

    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::I64 => 8,
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub const fn is_int(self) -> bool {
        !self.is_float()
    }

    pub const fn is_signed_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    pub const fn is_index(self) -> bool {
        matches!(self, DType::U32 | DType::I32 | DType::I64)
    }

    /// The smallest and largest value of an integer dtype (`None` for floats).
    pub const fn int_range(self) -> Option<(i128, i128)> {
        match self {
            DType::U8 => Some((0, u8::MAX as i128)),
            DType::U32 => Some((0, u32::MAX as i128)),
            DType::I32 => Some((i32::MIN as i128, i32::MAX as i128)),
            DType::I64 => Some((i64::MIN as i128, i64::MAX as i128)),
            DType::F32 | DType::F16 | DType::BF16 => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A Rust type that is stored as one [`DType`]; what `Tensor::from_slice` and `to_vec` accept.
pub trait Element: bytemuck::Pod + Send + Sync + fmt::Debug + PartialEq + 'static {
    const DTYPE: DType;
    /// Converts to f64: exactly, except `i64` beyond ±2^53, which rounds to nearest.
    fn to_f64(self) -> f64;
    /// Converts from f64 with the rounding (floats) or saturating truncation (integers) that
    /// `Cast` uses.
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f32_round_to_odd(v))
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f32_round_to_odd(v))
    }
}

/// `v` as f32 rounded to odd: truncated towards zero, with the last bit set when inexact.
/// Rounding that to nearest-even in a type with at least two fewer significand bits (f16,
/// bf16) gives the correctly rounded result, which a plain f64 -> f32 -> f16 double rounding
/// (and `half`'s `from_f64`, which drops low bits first) does not always do.
pub fn f32_round_to_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if !nearest.is_finite() || nearest as f64 == v {
        return nearest;
    }
    let mut bits = nearest.to_bits();
    if (nearest as f64).abs() > v.abs() {
        bits -= 1; // rounded away from zero: step back towards zero
    }
    f32::from_bits(bits | 1)
}

/// Integers convert to f64 exactly (`i64` past ±2^53 rounds) and back with Rust's `as`:
/// truncation towards zero, saturating, NaN to 0.
macro_rules! int_element {
    ($($t:ty => $dtype:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$dtype;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    )*};
}

int_element!(u32 => U32, u8 => U8, i32 => I32, i64 => I64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_round_f64_correctly() {
        // Just past a bf16 rounding tie, beyond f32's and half's low-bit truncation.
        assert_eq!(bf16::from_f64(6701057.0).to_f64(), 6684672.0, "half's own rounding");
        assert_eq!(<bf16 as Element>::from_f64(6701057.0).to_f64(), 6717440.0);
        assert_eq!(<bf16 as Element>::from_f64(4210689.0).to_f64(), 4227072.0);
        assert_eq!(<f16 as Element>::from_f64(2049.0 + 1e-9).to_f64(), 2050.0);
        assert_eq!(<f16 as Element>::from_f64(2049.0).to_f64(), 2048.0, "ties to even");
        assert_eq!(<f16 as Element>::from_f64(1e6).to_f64(), f64::INFINITY);
        assert_eq!(<bf16 as Element>::from_f64(-1.5).to_f64(), -1.5);
        assert!(<f16 as Element>::from_f64(f64::NAN).is_nan());
        assert_eq!(<u8 as Element>::from_f64(300.0), 255);
        assert_eq!(<u32 as Element>::from_f64(-3.0), 0);
        assert_eq!(<i32 as Element>::from_f64(-3.7), -3);
        assert_eq!(<i32 as Element>::from_f64(1e10), i32::MAX);
        assert_eq!(<i64 as Element>::from_f64(f64::NAN), 0);
        assert_eq!(<i64 as Element>::from_f64(-1e30), i64::MIN);
    }
}
