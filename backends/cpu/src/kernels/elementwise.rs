//! Elementwise ops over arbitrary strided operands: binary, unary, affine, compare, cast,
//! where.
//!
//! Float arithmetic runs on f32 slices. An f32 segment whose operands are contiguous (or a
//! broadcast scalar) goes straight to the SIMD loops in `simd.rs`; anything else (f16, bf16,
//! odd strides) is staged through small f32 blocks: load and convert, compute, convert and
//! store. Compare, integer casts and where are per-element closures over the stored types.

use manychips_api::{BinaryOp, CompareOp, Layout, UnaryOp};

use super::plan::{MIN_CHUNK, MIN_CHUNK_HEAVY, Plan};
use super::simd;
use super::stream::{self, Operand};
use crate::element::{Elem, Int};

/// Elements per staging block: three blocks of f32 stay well inside L1.
pub(crate) const BLOCK: usize = 1024;

/// Per-task staging buffers of `K` blocks, allocated on first use (contiguous f32 ops never
/// need them).
pub(crate) struct Stage<const K: usize>(Vec<f32>);

impl<const K: usize> Stage<K> {
    pub fn new() -> Self {
        Stage(Vec::new())
    }

    pub fn blocks(&mut self) -> [&mut [f32]; K] {
        if self.0.is_empty() {
            self.0 = vec![0.0; K * BLOCK];
        }
        let mut it = self.0.chunks_exact_mut(BLOCK);
        std::array::from_fn(|_| it.next().unwrap_or_default())
    }
}

/// Reads `dst.len()` elements of `src` from `off` on, `stride` apart, as f32.
#[inline]
pub(crate) fn load<T: Elem>(src: &[T], off: usize, stride: usize, dst: &mut [f32]) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    if stride == 1 || n == 1 {
        T::load_f32(&src[off..off + n], dst);
    } else if stride == 0 {
        dst.fill(src[off].to_f32());
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[off + i * stride].to_f32();
        }
    }
}

/// Writes `src` into `dst` from `off` on, `stride` apart, rounding to `T`.
#[inline]
pub(crate) fn store<T: Elem>(src: &[f32], dst: &mut [T], off: usize, stride: usize) {
    let n = src.len();
    if n == 0 {
        return;
    }
    if stride == 1 || n == 1 {
        T::store_f32(src, &mut dst[off..off + n]);
    } else {
        for (i, &v) in src.iter().enumerate() {
            dst[off + i * stride] = T::from_f32(v);
        }
    }
}

/// `out = lhs ∘ rhs`.
pub(crate) fn binary<T: Elem>(
    op: BinaryOp,
    (a, al): (&[T], &Layout),
    (b, bl): (&[T], &Layout),
    (out, ol): (&mut [T], &Layout),
) {
    let plan = Plan::new(ol.dims(), [ol, al, bl]);
    let [so, sa, sb] = plan.inner_strides();
    let chunk = if op == BinaryOp::Pow { MIN_CHUNK_HEAVY } else { MIN_CHUNK };
    let streamed = stream::worth_it(plan.numel() * size_of::<f32>());
    plan.run(out, chunk, Stage::<3>::new, |stage, out, [oo, oa, ob], len| {
        if let (Some(a), Some(b), Some(o)) = (T::as_f32(a), T::as_f32(b), T::as_f32_mut(out))
            && (so == 1 || len == 1)
        {
            let o = &mut o[oo..oo + len];
            if streamed
                && let (Some(x), Some(y)) =
                    (Operand::strided(a, oa, sa, len), Operand::strided(b, ob, sb, len))
                && stream::binary(op, x, y, o)
            {
                return;
            }
            match (sa, sb) {
                (1, 1) => return simd::binary_vv(op, &a[oa..oa + len], &b[ob..ob + len], o),
                (1, 0) => return simd::binary_vs(op, &a[oa..oa + len], b[ob], o),
                (0, 1) => return simd::binary_sv(op, a[oa], &b[ob..ob + len], o),
                _ => {}
            }
        }
        let [ba, bb, bo] = stage.blocks();
        let mut i = 0;
        while i < len {
            let n = BLOCK.min(len - i);
            load(a, oa + i * sa, sa, &mut ba[..n]);
            load(b, ob + i * sb, sb, &mut bb[..n]);
            simd::binary_vv(op, &ba[..n], &bb[..n], &mut bo[..n]);
            store(&bo[..n], out, oo + i * so, so);
            i += n;
        }
    });
}

/// A one-input float map: what `Unary`, `Affine` and float-to-float `Cast` share.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Map {
    Unary(UnaryOp),
    Affine { mul: f32, add: f32 },
    Identity,
}

impl Map {
    fn apply(self, src: &[f32], dst: &mut [f32]) {
        match self {
            Map::Unary(op) => simd::unary(op, src, dst),
            Map::Affine { mul, add } => simd::affine(src, dst, mul, add),
            Map::Identity => dst.copy_from_slice(src),
        }
    }

    fn min_chunk(self) -> usize {
        match self {
            Map::Unary(op) if simd::unary_is_heavy(op) => MIN_CHUNK_HEAVY,
            _ => MIN_CHUNK,
        }
    }
}

/// `out = m(input)`, converting between float types on the way.
pub(crate) fn map<S: Elem, D: Elem>(
    m: Map,
    (a, al): (&[S], &Layout),
    (out, ol): (&mut [D], &Layout),
) {
    let plan = Plan::new(ol.dims(), [ol, al]);
    let [so, sa] = plan.inner_strides();
    plan.run(out, m.min_chunk(), Stage::<2>::new, |stage, out, [oo, oa], len| {
        if let (Some(a), Some(o)) = (S::as_f32(a), D::as_f32_mut(out))
            && ((so, sa) == (1, 1) || len == 1)
        {
            return m.apply(&a[oa..oa + len], &mut o[oo..oo + len]);
        }
        let [ba, bo] = stage.blocks();
        let mut i = 0;
        while i < len {
            let n = BLOCK.min(len - i);
            load(a, oa + i * sa, sa, &mut ba[..n]);
            if let Map::Identity = m {
                store(&ba[..n], out, oo + i * so, so);
            } else {
                m.apply(&ba[..n], &mut bo[..n]);
                store(&bo[..n], out, oo + i * so, so);
            }
            i += n;
        }
    });
}

/// `out = f(a)` per element of the stored types.
pub(crate) fn zip_map1<A: Elem, O: Elem>(
    (a, al): (&[A], &Layout),
    (out, ol): (&mut [O], &Layout),
    f: impl Fn(A) -> O + Sync,
) {
    let plan = Plan::new(ol.dims(), [ol, al]);
    let [so, sa] = plan.inner_strides();
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo, oa], len| {
            if (so, sa) == (1, 1) || len == 1 {
                for (o, &x) in out[oo..oo + len].iter_mut().zip(&a[oa..oa + len]) {
                    *o = f(x);
                }
            } else {
                for i in 0..len {
                    out[oo + i * so] = f(a[oa + i * sa]);
                }
            }
        },
    );
}

/// `out = f(a, b)` per element of the stored types.
pub(crate) fn zip_map2<A: Elem, B: Elem, O: Elem>(
    (a, al): (&[A], &Layout),
    (b, bl): (&[B], &Layout),
    (out, ol): (&mut [O], &Layout),
    f: impl Fn(A, B) -> O + Sync,
) {
    let plan = Plan::new(ol.dims(), [ol, al, bl]);
    let [so, sa, sb] = plan.inner_strides();
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo, oa, ob], len| {
            if (so, sa, sb) == (1, 1, 1) || len == 1 {
                let (a, b) = (&a[oa..oa + len], &b[ob..ob + len]);
                for ((o, &x), &y) in out[oo..oo + len].iter_mut().zip(a).zip(b) {
                    *o = f(x, y);
                }
            } else if (so, sa, sb) == (1, 1, 0) {
                let y = b[ob];
                for (o, &x) in out[oo..oo + len].iter_mut().zip(&a[oa..oa + len]) {
                    *o = f(x, y);
                }
            } else {
                for i in 0..len {
                    out[oo + i * so] = f(a[oa + i * sa], b[ob + i * sb]);
                }
            }
        },
    );
}

/// `out = f(a, b, c)` per element of the stored types.
pub(crate) fn zip_map3<A: Elem, B: Elem, C: Elem, O: Elem>(
    (a, al): (&[A], &Layout),
    (b, bl): (&[B], &Layout),
    (c, cl): (&[C], &Layout),
    (out, ol): (&mut [O], &Layout),
    f: impl Fn(A, B, C) -> O + Sync,
) {
    let plan = Plan::new(ol.dims(), [ol, al, bl, cl]);
    let [so, sa, sb, sc] = plan.inner_strides();
    plan.run(
        out,
        MIN_CHUNK,
        || (),
        |_, out, [oo, oa, ob, oc], len| {
            if (so, sa, sb, sc) == (1, 1, 1, 1) || len == 1 {
                let (a, b, c) = (&a[oa..oa + len], &b[ob..ob + len], &c[oc..oc + len]);
                for (((o, &x), &y), &z) in out[oo..oo + len].iter_mut().zip(a).zip(b).zip(c) {
                    *o = f(x, y, z);
                }
            } else {
                for i in 0..len {
                    out[oo + i * so] = f(a[oa + i * sa], b[ob + i * sb], c[oc + i * sc]);
                }
            }
        },
    );
}

/// `out = lhs ∘ rhs` on integers, exactly as [`Int`] defines each op (`Pow` is refused by
/// validation before it gets here).
pub(crate) fn binary_int<T: Int>(
    op: BinaryOp,
    a: (&[T], &Layout),
    b: (&[T], &Layout),
    out: (&mut [T], &Layout),
) {
    match op {
        BinaryOp::Add => zip_map2(a, b, out, T::add),
        BinaryOp::Sub => zip_map2(a, b, out, T::sub),
        BinaryOp::Mul => zip_map2(a, b, out, T::mul),
        BinaryOp::Div => zip_map2(a, b, out, T::floor_div),
        BinaryOp::Rem => zip_map2(a, b, out, T::floor_rem),
        BinaryOp::Max => zip_map2(a, b, out, Ord::max),
        BinaryOp::Min => zip_map2(a, b, out, Ord::min),
        BinaryOp::Pow => {}
    }
}

/// `out = f(input)` on signed integers: `Neg` and `Abs`, the only ones validation lets by.
pub(crate) fn unary_int<T: Int>(op: UnaryOp, a: (&[T], &Layout), out: (&mut [T], &Layout)) {
    if op == UnaryOp::Abs {
        zip_map1(a, out, T::abs);
    } else {
        zip_map1(a, out, T::neg);
    }
}

/// `out = lhs ⋚ rhs` as 1/0 of the output type. Integers compare as integers, floats as
/// IEEE values (NaN compares unequal to everything).
pub(crate) fn compare<T: Elem, O: Elem>(
    op: CompareOp,
    a: (&[T], &Layout),
    b: (&[T], &Layout),
    out: (&mut [O], &Layout),
) {
    let bit = |t: bool| if t { O::ONE } else { O::ZERO };
    match op {
        CompareOp::Eq => zip_map2(a, b, out, |x: T, y: T| bit(x == y)),
        CompareOp::Ne => zip_map2(a, b, out, |x: T, y: T| bit(x != y)),
        CompareOp::Lt => zip_map2(a, b, out, |x: T, y: T| bit(x < y)),
        CompareOp::Le => zip_map2(a, b, out, |x: T, y: T| bit(x <= y)),
        CompareOp::Gt => zip_map2(a, b, out, |x: T, y: T| bit(x > y)),
        CompareOp::Ge => zip_map2(a, b, out, |x: T, y: T| bit(x >= y)),
    }
}

/// `Cast` between any two dtypes.
pub(crate) fn cast<S: Elem, D: Elem>(a: (&[S], &Layout), out: (&mut [D], &Layout)) {
    if S::IS_FLOAT && D::IS_FLOAT {
        // Through f32 blocks, so the bulk (SIMD) conversions apply.
        map::<S, D>(Map::Identity, a, out);
    } else {
        zip_map1(a, out, |x: S| x.cast::<D>());
    }
}

/// `out = cond ? on_true : on_false`.
pub(crate) fn select<T: Elem>(
    cond: (&[u8], &Layout),
    on_true: (&[T], &Layout),
    on_false: (&[T], &Layout),
    out: (&mut [T], &Layout),
) {
    zip_map3(cond, on_true, on_false, out, |c: u8, x: T, y: T| if c != 0 { x } else { y });
}
