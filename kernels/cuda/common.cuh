// Shared by every CUDA kernel: the parameter block, strided offsets, dtype load/store and
// conversions, the status word, and the f32 math that the CPU backend uses.
//
// This header is not #included: the host concatenates it in front of each .cu file and
// hands the result to NVRTC as one program (see README.md). It includes nothing either, so
// NVRTC needs no header search path (no cuda_fp16.h / cuda_bf16.h at run time).
//
// ---- The parameter block -----------------------------------------------------------------
//
// Every kernel takes `const McParams p` BY VALUE as its first argument, then one pointer per
// operand (the start of its buffer, typed), in the order of `Op::views_mut()` (inputs in
// `Op::inputs()` order, the output last), then `u32* status` for the indexed kernels.
//
//   field        type       bytes     meaning
//   count        u64        0..8      work items (elements, rows, columns or batches, below);
//                                     must equal the product of dims[0..rank]
//   rank         u32        8..12     dims of the iteration space in use (0..=8)
//   bits         u32        12..16    fill: the bit pattern of the value, zero-extended
//   mul          f32        16..20    affine: `mul as f32`
//   add          f32        20..24    affine: `add as f32`
//   dims[8]      u64        24..88    iteration space, outermost first (dims[rank..] unused)
//   ops[4]       McOperand  88..376   operand k: 72 bytes at 88 + 72k
//     .offset      u64      +0        element offset (in elements, not bytes)
//     .strides[8]  u64      +8..+72   element stride per iteration dim
//   ext[12]      u64        376..472  per-kernel extents and strides (below)
//   sizeof = 472, alignof = 8. Rust mirror:
//     #[repr(C)] struct McOperand { offset: u64, strides: [u64; 8] }
//     #[repr(C)] struct McParams { count: u64, rank: u32, bits: u32, mul: f32, add: f32,
//                                  dims: [u64; 8], ops: [McOperand; 4], ext: [u64; 12] }
//
// Work item g (0 <= g < count) is the row-major position g in `dims[0..rank]`; operand k's
// element for it is `ops[k].offset + Σ_d i_d · ops[k].strides[d]` (mc_offsets below). With
// rank 0 every work item sees the bare offsets. Coalesce dims on the host (as the WGSL
// backend's params.rs does) so every layout fits in 8 dims.
//
// Per family (operand k in brackets; "without axis" = the view's dims/strides with the
// reduced or indexed axis removed):
//   elementwise, cast, copy, fill, where:
//     iteration = the output's dims; count = numel. ext unused.
//   reduce_*, log_softmax_*, softmax_*:
//     iteration = input dims without axis (one work item per row); count = rows.
//     [0] input without axis, [1] output without axis.
//     ext[0] = row length (input dims[axis]), ext[1] = input axis stride,
//     ext[2] = output axis stride (softmax only).
//   gather_*, index_select_*:
//     iteration = the output's dims; count = numel.
//     [0] input with its axis stride set to 0, [1] indices (index_select: the 1-D indices
//     broadcast: stride 0 on every dim but axis, indices.strides[0] on axis), [2] output.
//     ext[0] = input dims[axis], ext[1] = input axis stride.
//   scatter_add_*, index_add_*   (deterministic; one work item per column):
//     iteration = src dims without axis; count = their product.
//     [0] src without axis, [1] indices without axis (index_add: all strides 0),
//     [2] the f32 accumulator without axis.
//     ext[0] = out dims[axis], ext[1] = accumulator axis stride, ext[2] = src dims[axis],
//     ext[3] = src axis stride, ext[4] = indices axis stride (index_add: indices.strides[0]).
//   scatter_add_atomic_*, index_add_atomic_*   (one work item per src element):
//     iteration = src dims; count = src numel.
//     [0] src, [1] indices (index_add: broadcast as for index_select), [2] the accumulator
//     with its axis stride set to 0. ext[0] = out dims[axis], ext[1] = accumulator axis
//     stride.
//   scatter_<op>_*   (Op::Scatter, scatter.cu; one work item per lane, in order):
//     as the deterministic scatter_add, with `out` itself (in its dtype) as [2].
//   argsort_keys_*, argsort_merge, argsort_tile   (Op::ArgSort, sort.cu): see sort.cu.
//   matmul_tiled_*:
//     iteration = batch dims (all but the last two); count = batch count (1 if rank 2).
//     [0] lhs, [1] rhs, [2] out: their batch strides.
//     ext[0] = m, ext[1] = n, ext[2] = k, ext[3], ext[4] = lhs strides along m, k,
//     ext[5], ext[6] = rhs strides along k, n, ext[7], ext[8] = out strides along m, n.
//
// ---- Status word ---------------------------------------------------------------------------
//
// `u32* status` points at 24 zeroed bytes: an out-of-range index value sets word 0 to 1
// (MC_STATUS_INDEX, atomicOr) and records the value as given (a negative one before it was
// taken from the end): the u64 at byte 8 rises to the largest non-negative such value
// (atomicMax), the i64 at byte 16 falls to the smallest negative one (atomicMin). The
// element is skipped (gather writes 0) and no memory outside the views is touched. The host
// reads, reports and re-zeroes the words after the op.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef int i32;
typedef long long i64;

#define MC_MAX_RANK 8
#define MC_OPERANDS 4
#define MC_EXT 12
#define MC_STATUS_INDEX 1u

struct McOperand {
    u64 offset;
    u64 strides[MC_MAX_RANK];
};

struct McParams {
    u64 count;
    u32 rank;
    u32 bits;
    float mul;
    float add;
    u64 dims[MC_MAX_RANK];
    McOperand ops[MC_OPERANDS];
    u64 ext[MC_EXT];
};

static_assert(sizeof(McOperand) == 72, "McOperand layout");
// Every field is naturally aligned with no padding between (8 + 4 + 4 + 4 + 4 + 64 + 288 +
// 96 bytes), so the total size pins every offset listed above.
static_assert(sizeof(McParams) == 472, "McParams layout");
static_assert(alignof(McParams) == 8, "McParams layout");

// ---- Iteration ---------------------------------------------------------------------------

// Grid-stride loop over the work items: correct for any grid size.
#define MC_FOR_EACH(g, p)                                                              \
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < (p).count;            \
         g += (u64)gridDim.x * blockDim.x)

// Element offsets of the first N operands at work item g.
template <int N>
struct McOffsets {
    u64 o[N];
};

template <int N>
__device__ __forceinline__ McOffsets<N> mc_offsets(const McParams& p, u64 g) {
    McOffsets<N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        r.o[k] = p.ops[k].offset;
    }
    if (p.count <= 0xffffffffull) {
        // 32-bit division is several times cheaper than 64-bit; every dim and g fit.
        u32 rem = (u32)g;
        for (int d = (int)p.rank - 1; d >= 0; --d) {
            u32 n = (u32)p.dims[d];
            u32 i = rem % n;
            rem /= n;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                r.o[k] += (u64)i * p.ops[k].strides[d];
            }
        }
    } else {
        u64 rem = g;
        for (int d = (int)p.rank - 1; d >= 0; --d) {
            u64 n = p.dims[d];
            u64 i = rem % n;
            rem /= n;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                r.o[k] += i * p.ops[k].strides[d];
            }
        }
    }
    return r;
}

__device__ __forceinline__ void mc_flag_index(u32* status, i64 value) {
    atomicOr(&status[0], MC_STATUS_INDEX);
    if (value >= 0) {
        atomicMax((u64*)(status + 2), (u64)value);
    } else {
        atomicMin((i64*)(status + 4), value);
    }
}

// The position an index value names along an axis of `len`: a negative value counts from the
// end. Out of range (before or after that), flags the value as given and returns false.
__device__ __forceinline__ bool mc_resolve_index(i64 value, u64 len, u32* status, u64* at) {
    i64 j = value < 0 ? value + (i64)len : value;
    if (j < 0 || (u64)j >= len) {
        mc_flag_index(status, value);
        return false;
    }
    *at = (u64)j;
    return true;
}

// ---- Scalar helpers (bit tests: immune to fast-math folding) -----------------------------

__device__ __forceinline__ bool mc_isnan(float v) {
    return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u;
}

__device__ __forceinline__ bool mc_isfinite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// Rust's f32::clamp: NaN stays NaN.
__device__ __forceinline__ float mc_clamp(float x, float lo, float hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// ---- Storage types and conversions ---------------------------------------------------------
//
// f16 and bf16 are stored as their 16-bit patterns (the same bytes as __half and
// __nv_bfloat16). Arithmetic is in f32; stores round to nearest-even once, bit-identical to
// the CPU backend (the `half` crate), NaN included (quietened, sign and top payload kept).

struct alignas(2) mc_f16 {
    u16 bits;
};

struct alignas(2) mc_bf16 {
    u16 bits;
};

__device__ __forceinline__ float mc_f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 mc_f32_to_f16(float v) {
    u32 x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)(((x >> 16) & 0x8000u) | 0x7e00u | ((x >> 13) & 0x3ffu));
    }
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ float mc_bf16_to_f32(u16 h) {
    return __uint_as_float((u32)h << 16);
}

__device__ __forceinline__ u16 mc_f32_to_bf16(float v) {
    u32 x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((x >> 16) | 0x40u);
    }
    return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// `v` as f32 rounded to odd (truncated, the last bit set when inexact): rounding that to
// f16/bf16 to nearest even gives the correctly rounded result of v (24 bits hold the 11 of
// f16 and 2 more). Every i64 is in f32's range, and truncation keeps it inside i64's, so
// the round trip that tests exactness cannot overflow.
__device__ __forceinline__ float mc_i64_to_f32_odd(i64 v) {
    float truncated = __ll2float_rz(v);
    if (__float2ll_rz(truncated) == v) {
        return truncated;
    }
    return __uint_as_float(__float_as_uint(truncated) | 1u);
}

// Saturating truncation towards zero, NaN to 0 (Rust's `as`).
__device__ __forceinline__ u32 mc_f32_to_u32(float v) {
    if (!(v > 0.0f)) {
        return 0u;
    }
    if (v >= 4294967296.0f) {
        return 0xffffffffu;
    }
    return (u32)v;
}

__device__ __forceinline__ u8 mc_f32_to_u8(float v) {
    if (!(v > 0.0f)) {
        return 0;
    }
    if (v >= 255.0f) {
        return 255;
    }
    return (u8)(u32)v;
}

__device__ __forceinline__ i32 mc_f32_to_i32(float v) {
    if (mc_isnan(v)) {
        return 0;
    }
    if (v >= 2147483648.0f) {
        return 0x7fffffff;
    }
    if (v <= -2147483648.0f) {
        return (i32)0x80000000u;
    }
    return (i32)v;
}

__device__ __forceinline__ i64 mc_f32_to_i64(float v) {
    if (mc_isnan(v)) {
        return 0;
    }
    if (v >= 9223372036854775808.0f) {
        return 0x7fffffffffffffffll;
    }
    if (v <= -9223372036854775808.0f) {
        return (i64)0x8000000000000000ull;
    }
    return (i64)v;
}

// An integer value clamped to [lo, hi] (int -> int casts saturate).
__device__ __forceinline__ i64 mc_clamp_i64(i64 v, i64 lo, i64 hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// McElem<T>: how kernels see a stored type. to_f32/from_f32 for float arithmetic (and the
// float side of casts); integers also have to_i64/from_i64 (exact, and saturating), and
// every type has from_i64 for casts from integers (floats: correctly rounded once);
// from_bits builds a value from a zero-extended bit pattern (Fill). `U` is the unsigned type
// integer arithmetic wraps in (signed overflow is undefined in C++).
template <typename T>
struct McElem;

template <>
struct McElem<float> {
    static constexpr bool is_float = true;
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
    static __device__ __forceinline__ float from_i64(i64 v) { return __ll2float_rn(v); }
    static __device__ __forceinline__ float from_bits(u64 b) { return __uint_as_float((u32)b); }
};

template <>
struct McElem<mc_f16> {
    static constexpr bool is_float = true;
    static __device__ __forceinline__ float to_f32(mc_f16 v) { return mc_f16_to_f32(v.bits); }
    static __device__ __forceinline__ mc_f16 from_f32(float v) {
        mc_f16 r;
        r.bits = mc_f32_to_f16(v);
        return r;
    }
    static __device__ __forceinline__ mc_f16 from_i64(i64 v) {
        return from_f32(mc_i64_to_f32_odd(v));
    }
    static __device__ __forceinline__ mc_f16 from_bits(u64 b) {
        mc_f16 r;
        r.bits = (u16)b;
        return r;
    }
};

template <>
struct McElem<mc_bf16> {
    static constexpr bool is_float = true;
    static __device__ __forceinline__ float to_f32(mc_bf16 v) { return mc_bf16_to_f32(v.bits); }
    static __device__ __forceinline__ mc_bf16 from_f32(float v) {
        mc_bf16 r;
        r.bits = mc_f32_to_bf16(v);
        return r;
    }
    static __device__ __forceinline__ mc_bf16 from_i64(i64 v) {
        return from_f32(mc_i64_to_f32_odd(v));
    }
    static __device__ __forceinline__ mc_bf16 from_bits(u64 b) {
        mc_bf16 r;
        r.bits = (u16)b;
        return r;
    }
};

template <>
struct McElem<u32> {
    static constexpr bool is_float = false;
    static constexpr bool is_signed = false;
    typedef u32 U;
    static __device__ __forceinline__ float to_f32(u32 v) { return __uint2float_rn(v); }
    static __device__ __forceinline__ u32 from_f32(float v) { return mc_f32_to_u32(v); }
    static __device__ __forceinline__ i64 to_i64(u32 v) { return (i64)v; }
    static __device__ __forceinline__ u32 from_i64(i64 v) {
        return (u32)mc_clamp_i64(v, 0, 0xffffffffll);
    }
    static __device__ __forceinline__ u32 from_bits(u64 b) { return (u32)b; }
};

template <>
struct McElem<u8> {
    static constexpr bool is_float = false;
    static constexpr bool is_signed = false;
    typedef u32 U;
    static __device__ __forceinline__ float to_f32(u8 v) { return (float)v; }
    static __device__ __forceinline__ u8 from_f32(float v) { return mc_f32_to_u8(v); }
    static __device__ __forceinline__ i64 to_i64(u8 v) { return (i64)v; }
    static __device__ __forceinline__ u8 from_i64(i64 v) { return (u8)mc_clamp_i64(v, 0, 255); }
    static __device__ __forceinline__ u8 from_bits(u64 b) { return (u8)b; }
};

template <>
struct McElem<i32> {
    static constexpr bool is_float = false;
    static constexpr bool is_signed = true;
    typedef u32 U;
    static __device__ __forceinline__ float to_f32(i32 v) { return __int2float_rn(v); }
    static __device__ __forceinline__ i32 from_f32(float v) { return mc_f32_to_i32(v); }
    static __device__ __forceinline__ i64 to_i64(i32 v) { return (i64)v; }
    static __device__ __forceinline__ i32 from_i64(i64 v) {
        return (i32)mc_clamp_i64(v, -2147483648ll, 2147483647ll);
    }
    static __device__ __forceinline__ i32 from_bits(u64 b) { return (i32)(u32)b; }
};

template <>
struct McElem<i64> {
    static constexpr bool is_float = false;
    static constexpr bool is_signed = true;
    typedef u64 U;
    static __device__ __forceinline__ float to_f32(i64 v) { return __ll2float_rn(v); }
    static __device__ __forceinline__ i64 from_f32(float v) { return mc_f32_to_i64(v); }
    static __device__ __forceinline__ i64 to_i64(i64 v) { return v; }
    static __device__ __forceinline__ i64 from_i64(i64 v) { return v; }
    static __device__ __forceinline__ i64 from_bits(u64 b) { return (i64)b; }
};

template <typename T>
__device__ __forceinline__ float mc_ld(const T* base, u64 i) {
    return McElem<T>::to_f32(base[i]);
}

template <typename T>
__device__ __forceinline__ void mc_st(T* base, u64 i, float v) {
    base[i] = McElem<T>::from_f32(v);
}

// The contract's Cast: float sources go through f32 (one rounding; to an integer: truncated,
// saturating, NaN -> 0); integer sources through i64, which holds every integer value
// exactly (to an integer: saturating; to a float: rounded once).
template <typename S, typename D>
__device__ __forceinline__ D mc_cast(S x) {
    if constexpr (McElem<S>::is_float) {
        return McElem<D>::from_f32(McElem<S>::to_f32(x));
    } else {
        return McElem<D>::from_i64(McElem<S>::to_i64(x));
    }
}

// Wrapping integer add, sub and mul (binary_*_<n> and the scatters): computed in the
// dtype's unsigned type, since signed overflow is undefined in C++.
template <typename T>
__device__ __forceinline__ T mc_add_int(T x, T y) {
    typedef typename McElem<T>::U U;
    return (T)((U)x + (U)y);
}

template <typename T>
__device__ __forceinline__ T mc_sub_int(T x, T y) {
    typedef typename McElem<T>::U U;
    return (T)((U)x - (U)y);
}

template <typename T>
__device__ __forceinline__ T mc_mul_int(T x, T y) {
    typedef typename McElem<T>::U U;
    return (T)((U)x * (U)y);
}

// Type lists for the instantiation macros: MC_X(type, name).
#define MC_FLOATS(X) X(float, f32) X(mc_f16, f16) X(mc_bf16, bf16)
#define MC_INTS(X) X(u32, u32) X(u8, u8) X(i32, i32) X(i64, i64)
#define MC_SIGNED(X) X(i32, i32) X(i64, i64)
#define MC_DTYPES(X) MC_FLOATS(X) MC_INTS(X)
// Index dtypes (gather, index_select, scatter_add, index_add): MC_X(type, name).
#define MC_INDEX_TYPES(X, ...) \
    X(__VA_ARGS__, u32, u32) X(__VA_ARGS__, i32, i32) X(__VA_ARGS__, i64, i64)

// The remainder with the divisor's sign (Python's %, the contract's BinaryOp::Rem) in f32:
// fmod's sign follows the dividend, so a nonzero result of the other sign moves by y.
// y == 0 gives NaN (from fmodf).
__device__ __forceinline__ float mc_remf(float x, float y) {
    float r = fmodf(x, y);
    return (r != 0.0f && ((r < 0.0f) != (y < 0.0f))) ? r + y : r;
}

// ---- f32 math, ported from the CPU backend (backends/cpu/src/kernels/math.rs) -------------
//
// Same constants and operation order, so with `--fmad=false` (no contraction, as in Rust)
// these agree with the CPU bit for bit.

// e^x with ~1 ulp on [-87.3, 88.7]; 0 below, +inf above, NaN kept.
__device__ __forceinline__ float mc_exp(float x) {
    const float LOG2_E = 1.44269504088896340736f;
    const float LN2_HI = 0.6933594f;
    const float LN2_LO = -2.1219444e-4f;
    const float EXP_HI = 88.72284f;
    const float EXP_LO = -87.33655f;
    const float ROUND_MAGIC = 12582912.0f;
    float xc = mc_clamp(x, EXP_LO, EXP_HI);
    float t = xc * LOG2_E + ROUND_MAGIC;
    float n = t - ROUND_MAGIC;
    int ni = (int)(__float_as_uint(t) - __float_as_uint(ROUND_MAGIC));
    float r = xc - n * LN2_HI - n * LN2_LO;
    float q = 1.9875691e-4f;
    q = q * r + 1.3981999e-3f;
    q = q * r + 8.333452e-3f;
    q = q * r + 4.1665796e-2f;
    q = q * r + 1.6666665e-1f;
    q = q * r + 0.5f;
    float y = q * r * r + r + 1.0f;
    int n1 = ni >> 1;
    int n2 = (int)((u32)ni - (u32)n1);
    // Unsigned arithmetic: wrapping (as in Rust) for the garbage `ni` of a NaN input.
    float s1 = __uint_as_float(((u32)n1 + 127u) << 23);
    float s2 = __uint_as_float(((u32)n2 + 127u) << 23);
    float v = y * s1 * s2;
    v = x > EXP_HI ? __uint_as_float(0x7f800000u) : v;
    v = x < EXP_LO ? 0.0f : v;
    return mc_isnan(x) ? x : v;
}

__device__ __forceinline__ float mc_tanh(float x) {
    float a = fabsf(x);
    float z = x * x;
    float q = -5.7049887e-3f;
    q = q * z + 2.063909e-2f;
    q = q * z - 5.3739716e-2f;
    q = q * z + 1.3331442e-1f;
    q = q * z - 3.333328e-1f;
    float small = q * z * x + x;
    float big = copysignf(1.0f - 2.0f / (mc_exp(2.0f * a) + 1.0f), x);
    return a < 0.625f ? small : big;
}

__device__ __forceinline__ float mc_sigmoid(float x) {
    return 1.0f / (1.0f + mc_exp(-x));
}

__device__ __forceinline__ float mc_silu(float x) {
    return x * mc_sigmoid(x);
}

// 0.5·x·(1 + tanh(u)) as x·sigmoid(2u).
__device__ __forceinline__ float mc_gelu_tanh(float x) {
    const float SQRT_2_OVER_PI = 0.7978846f;
    float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
    return x * mc_sigmoid(2.0f * u);
}

// 0.5·x·erfc(-x/√2) with the Numerical Recipes erfc fit and x² split exactly.
__device__ __forceinline__ float mc_gelu_erf(float x) {
    const float FRAC_1_SQRT_2 = 0.707106781186547524400844362104849039f;
    float xc = mc_clamp(x, -15.0f, 15.0f);
    float a = fabsf(xc) * FRAC_1_SQRT_2;
    float t = 1.0f / (1.0f + 0.5f * a);
    float q = 0.17087277f;
    q = q * t - 0.82215223f;
    q = q * t + 1.4885159f;
    q = q * t - 1.135204f;
    q = q * t + 0.27886807f;
    q = q * t - 0.18628806f;
    q = q * t + 0.09678418f;
    q = q * t + 0.37409196f;
    q = q * t + 1.0000237f;
    q = q * t - 1.2655122f;
    float c = 4097.0f * xc;
    float xh = c - (c - xc);
    float xl = xc - xh;
    float hi = xc * xc;
    float lo = ((xh * xh - hi) + 2.0f * xh * xl) + xl * xl;
    float r = t * mc_exp(-0.5f * hi) * mc_exp(q - 0.5f * lo);
    float erfc = x <= 0.0f ? r : 2.0f - r;
    return 0.5f * x * erfc;
}

// ---- Cooperative reductions (reduce.cu, softmax.cu) ---------------------------------------
//
// A "team" reduces one row: a whole block (McBlockTeam; blockDim.x a multiple of 32, at most
// 1024) or one warp (McWarpTeam; each block holds blockDim.x / 32 teams). Rows are walked
// with a grid-stride loop over teams. `reduce` returns the combined value to every thread.

#define MC_FULL_MASK 0xffffffffu

template <typename C, typename V>
__device__ __forceinline__ V mc_warp_allreduce(V v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v = C::combine(v, C::shfl_xor(v, off));
    }
    return v;
}

struct McWarpTeam {
    static __device__ __forceinline__ u64 first() {
        return (u64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    }
    static __device__ __forceinline__ u64 step() { return (u64)gridDim.x * (blockDim.x / 32); }
    static __device__ __forceinline__ u32 lane() { return threadIdx.x % 32; }
    static __device__ __forceinline__ u32 size() { return 32; }
    template <typename C, typename V>
    static __device__ __forceinline__ V reduce(V v) {
        return mc_warp_allreduce<C>(v);
    }
};

struct McBlockTeam {
    static __device__ __forceinline__ u64 first() { return blockIdx.x; }
    static __device__ __forceinline__ u64 step() { return gridDim.x; }
    static __device__ __forceinline__ u32 lane() { return threadIdx.x; }
    static __device__ __forceinline__ u32 size() { return blockDim.x; }
    template <typename C, typename V>
    static __device__ __forceinline__ V reduce(V v) {
        __shared__ V partial[32];
        u32 warp = threadIdx.x / 32;
        u32 lane = threadIdx.x % 32;
        u32 warps = blockDim.x / 32;
        v = mc_warp_allreduce<C>(v);
        if (lane == 0) {
            partial[warp] = v;
        }
        __syncthreads();
        v = lane < warps ? partial[lane] : C::identity();
        v = mc_warp_allreduce<C>(v);
        // Every warp read `partial` above; wait before the next call overwrites it.
        __syncthreads();
        return v;
    }
};

// Combiners: identity, combine, and a butterfly shuffle of the value type.
struct McSumF64 {
    static __device__ __forceinline__ double identity() { return 0.0; }
    static __device__ __forceinline__ double combine(double a, double b) { return a + b; }
    static __device__ __forceinline__ double shfl_xor(double v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

// NaN is ignored (IEEE maxNum, like Rust's f32::max); an all-NaN or empty fold gives -inf.
struct McMaxF32 {
    static __device__ __forceinline__ float identity() { return __uint_as_float(0xff800000u); }
    static __device__ __forceinline__ float combine(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float shfl_xor(float v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

struct McMinF32 {
    static __device__ __forceinline__ float identity() { return __uint_as_float(0x7f800000u); }
    static __device__ __forceinline__ float combine(float a, float b) { return fminf(a, b); }
    static __device__ __forceinline__ float shfl_xor(float v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

// Arg-max and arg-min of floats: the largest (smallest) value wins, NaN ranks behind every
// number (-inf and +inf included), ties (equal values, or two NaNs) go to the lower index.
// So the result is the first index of the NaN-ignoring maximum (minimum), or 0 for an
// all-NaN row: the CPU backend's row rule, and arg-min its mirror image.
struct McArg {
    float v;
    u64 i;
};

template <bool MAX>
struct McArgF32 {
    typedef McArg V;
    template <typename T>
    static __device__ __forceinline__ float lift(T x) {
        return McElem<T>::to_f32(x);
    }
    static __device__ __forceinline__ McArg identity() {
        McArg a;
        a.v = __uint_as_float(0x7fc00000u);
        a.i = ~0ull;
        return a;
    }
    static __device__ __forceinline__ McArg combine(McArg a, McArg b) {
        bool an = mc_isnan(a.v);
        bool bn = mc_isnan(b.v);
        bool take_b;
        if (an != bn) {
            take_b = an;
        } else if (an) {
            take_b = b.i < a.i;
        } else {
            bool better = MAX ? b.v > a.v : b.v < a.v;
            take_b = better || (b.v == a.v && b.i < a.i);
        }
        return take_b ? b : a;
    }
    static __device__ __forceinline__ McArg shfl_xor(McArg v, int off) {
        McArg r;
        r.v = __shfl_xor_sync(MC_FULL_MASK, v.v, off);
        r.i = __shfl_xor_sync(MC_FULL_MASK, v.i, off);
        return r;
    }
};
typedef McArgF32<true> McArgMax;
typedef McArgF32<false> McArgMin;

// ---- Integer folds (reduce.cu): every integer value as an i64, exact ----------------------

// A wrapping sum: u64 arithmetic is modulo 2^64, and truncating it to the dtype's width
// gives the sum modulo 2^bits, the contract's wrapping rule.
struct McSumU64 {
    static __device__ __forceinline__ u64 identity() { return 0ull; }
    static __device__ __forceinline__ u64 combine(u64 a, u64 b) { return a + b; }
    static __device__ __forceinline__ u64 shfl_xor(u64 v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

struct McMaxI64 {
    static __device__ __forceinline__ i64 identity() { return (i64)0x8000000000000000ull; }
    static __device__ __forceinline__ i64 combine(i64 a, i64 b) { return b > a ? b : a; }
    static __device__ __forceinline__ i64 shfl_xor(i64 v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

struct McMinI64 {
    static __device__ __forceinline__ i64 identity() { return 0x7fffffffffffffffll; }
    static __device__ __forceinline__ i64 combine(i64 a, i64 b) { return b < a ? b : a; }
    static __device__ __forceinline__ i64 shfl_xor(i64 v, int off) {
        return __shfl_xor_sync(MC_FULL_MASK, v, off);
    }
};

// Arg-max and arg-min of integers: the first index of the largest (smallest) value. The
// identity's index ~0 loses every tie, so a row of the identity's value still gets index 0.
struct McArgInt {
    i64 v;
    u64 i;
};

template <bool MAX>
struct McArgI64 {
    typedef McArgInt V;
    template <typename T>
    static __device__ __forceinline__ i64 lift(T x) {
        return McElem<T>::to_i64(x);
    }
    static __device__ __forceinline__ McArgInt identity() {
        McArgInt a;
        a.v = MAX ? McMaxI64::identity() : McMinI64::identity();
        a.i = ~0ull;
        return a;
    }
    static __device__ __forceinline__ McArgInt combine(McArgInt a, McArgInt b) {
        bool better = MAX ? b.v > a.v : b.v < a.v;
        return better || (b.v == a.v && b.i < a.i) ? b : a;
    }
    static __device__ __forceinline__ McArgInt shfl_xor(McArgInt v, int off) {
        McArgInt r;
        r.v = __shfl_xor_sync(MC_FULL_MASK, v.v, off);
        r.i = __shfl_xor_sync(MC_FULL_MASK, v.i, off);
        return r;
    }
};
