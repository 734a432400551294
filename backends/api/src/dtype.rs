//! Element types a tensor can hold.

use std::fmt;

use half::{bf16, f16};

/// The element type of a buffer view.
///
/// Floating types are for arithmetic; `U32` (indices) and `U8` (masks) are data: they can be
/// copied, gathered, compared, selected and cast, but not multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    U32,
    U8,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8];
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::U8 => "u8",
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
    /// Converts to f64 exactly (every supported element type is exactly representable).
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

impl Element for u32 {
    const DTYPE: DType = DType::U32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as u32
    }
}

impl Element for u8 {
    const DTYPE: DType = DType::U8;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as u8
    }
}

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
    }
}
