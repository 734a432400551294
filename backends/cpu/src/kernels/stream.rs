//! Writes that bypass the cache, for outputs too big to stay in it. A normal store first
//! reads the cache line it writes, so `a + b` over large arrays moves four bytes for every
//! three it needs; a non-temporal store writes whole lines without reading them. That only
//! pays when the output would leave the cache before anyone reads it, so ops stream from
//! half the last-level cache up (an add of 4M f32 writes 16 MiB and reads 32).
//!
//! Only the binary ops whose vector instruction is the scalar op exactly (add, sub, mul,
//! div: IEEE results, so streamed and cached outputs are equal bit for bit), on CPUs with
//! AVX2 or AVX-512; everything else takes the ordinary loops in `simd.rs`.

use std::sync::OnceLock;

use manychips_api::BinaryOp;

/// The last-level cache assumed where the OS does not say.
const FALLBACK_CACHE: usize = 32 << 20;

/// Whether an op writing `bytes` should stream them.
pub(crate) fn worth_it(bytes: usize) -> bool {
    static FROM: OnceLock<usize> = OnceLock::new();
    bytes >= *FROM.get_or_init(|| crate::sysinfo::last_level_cache().unwrap_or(FALLBACK_CACHE) / 2)
}

/// One side of a binary op: a slice as long as the output, or one value for all of it.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
}

impl<'a> Operand<'a> {
    /// `len` elements of `x` from `at` on, `stride` apart, where that is a slice or one value.
    pub(crate) fn strided(x: &'a [f32], at: usize, stride: usize, len: usize) -> Option<Self> {
        match stride {
            0 => Some(Operand::Scalar(x[at])),
            1 => Some(Operand::Slice(&x[at..at + len])),
            _ => None,
        }
    }

    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        match self {
            Operand::Slice(s) => s[i],
            Operand::Scalar(v) => v,
        }
    }

    fn fits(self, n: usize) -> bool {
        match self {
            Operand::Slice(s) => s.len() == n,
            Operand::Scalar(_) => true,
        }
    }
}

/// `dst = a ∘ b` written with non-temporal stores. Returns false, having written nothing,
/// where the op or this CPU has no streaming form (the caller then runs the usual loop).
pub(crate) fn binary(op: BinaryOp, a: Operand, b: Operand, dst: &mut [f32]) -> bool {
    let n = dst.len();
    if !matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)
        || !a.fits(n)
        || !b.fits(n)
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() {
            // SAFETY: the CPU has AVX-512F (checked at run time); both slices hold `n`
            // elements (checked above).
            unsafe { x86::binary_avx512(op, a, b, dst) };
            return true;
        }
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 (checked at run time); lengths as above.
            unsafe { x86::binary_avx2(op, a, b, dst) };
            return true;
        }
    }
    false
}

/// The scalar op, for the elements before the first aligned vector and after the last.
#[inline(always)]
fn scalar(op: BinaryOp, a: Operand, b: Operand, dst: &mut [f32], range: std::ops::Range<usize>) {
    for i in range {
        let (x, y) = (a.at(i), b.at(i));
        dst[i] = match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            _ => x / y,
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BinaryOp, Operand, scalar};

    /// One streaming loop per op and operand kind: `$load` reads a vector of an operand at
    /// `i`, `$op` combines two, `$store` streams one to an address aligned to `$lanes` f32s.
    macro_rules! stream_loop {
        ($op:expr, $a:expr, $b:expr, $dst:expr, $lanes:expr,
         $load:ident, $set1:ident, $store:ident, [$add:ident, $sub:ident, $mul:ident, $div:ident]) => {{
            let (op, a, b, dst): (BinaryOp, Operand, Operand, &mut [f32]) = ($op, $a, $b, $dst);
            let n = dst.len();
            let head = dst.as_ptr().align_offset($lanes * 4).min(n);
            scalar(op, a, b, dst, 0..head);
            let body = head + (n - head) / $lanes * $lanes;
            let out = dst.as_mut_ptr();
            macro_rules! vector {
                ($x:expr, $i:expr) => {
                    match $x {
                        Operand::Slice(s) => $load(s.as_ptr().add($i)),
                        Operand::Scalar(v) => $set1(v),
                    }
                };
            }
            macro_rules! each {
                ($f:ident) => {{
                    let mut i = head;
                    while i < body {
                        $store(out.add(i), $f(vector!(a, i), vector!(b, i)));
                        i += $lanes;
                    }
                }};
            }
            match op {
                BinaryOp::Add => each!($add),
                BinaryOp::Sub => each!($sub),
                BinaryOp::Mul => each!($mul),
                _ => each!($div),
            }
            scalar(op, a, b, dst, body..n);
            // Non-temporal stores are weakly ordered: make them visible before the task
            // reports done.
            _mm_sfence();
        }};
    }

    /// # Safety
    /// The CPU has AVX-512F; every slice operand holds `dst.len()` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn binary_avx512(op: BinaryOp, a: Operand, b: Operand, dst: &mut [f32]) {
        // SAFETY: loads read `16` elements from `i < body <= n` within operands of `n`;
        // stores write to `dst[i..i + 16]`, aligned to 64 bytes from `head` on.
        unsafe {
            stream_loop!(
                op,
                a,
                b,
                dst,
                16,
                _mm512_loadu_ps,
                _mm512_set1_ps,
                _mm512_stream_ps,
                [_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_div_ps]
            )
        }
    }

    /// # Safety
    /// The CPU has AVX2; every slice operand holds `dst.len()` elements.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn binary_avx2(op: BinaryOp, a: Operand, b: Operand, dst: &mut [f32]) {
        // SAFETY: as in `binary_avx512`, with 8 lanes and 32-byte alignment.
        unsafe {
            stream_loop!(
                op,
                a,
                b,
                dst,
                8,
                _mm256_loadu_ps,
                _mm256_set1_ps,
                _mm256_stream_ps,
                [_mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_div_ps]
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_ops_equal_the_ordinary_loops_bit_for_bit() {
        let n = 1000;
        let a: Vec<f32> = (0..n + 3).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let b: Vec<f32> = (0..n + 3).map(|i| (i as f32 * 0.11).cos() + 1.5).collect();
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            // Every alignment of the output, so heads and tails of all lengths run.
            for shift in 0..3 {
                let (a, b) = (&a[shift..shift + n], &b[..n]);
                let mut want = vec![0.0; n];
                super::super::simd::binary_vv(op, a, b, &mut want);
                let mut buffer = vec![0.0f32; n + 16];
                for start in 0..16 {
                    let got = &mut buffer[start..start + n];
                    got.fill(f32::NAN);
                    if !binary(op, Operand::Slice(a), Operand::Slice(b), got) {
                        return; // no streaming form on this CPU
                    }
                    let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{op:?}, output at +{start}");
                }
                let mut want_vs = vec![0.0; n];
                super::super::simd::binary_vs(op, a, 3.25, &mut want_vs);
                let mut got = vec![0.0; n];
                assert!(binary(op, Operand::Slice(a), Operand::Scalar(3.25), &mut got));
                assert_eq!(got, want_vs, "{op:?} with a scalar right operand");
                let mut want_sv = vec![0.0; n];
                super::super::simd::binary_sv(op, 3.25, b, &mut want_sv);
                assert!(binary(op, Operand::Scalar(3.25), Operand::Slice(b), &mut got));
                assert_eq!(got, want_sv, "{op:?} with a scalar left operand");
            }
        }
        let mut out = vec![0.0; 4];
        assert!(!binary(BinaryOp::Pow, Operand::Slice(&a[..4]), Operand::Scalar(2.0), &mut out));
        assert!(!binary(BinaryOp::Add, Operand::Slice(&a[..3]), Operand::Scalar(2.0), &mut out));
    }
}
