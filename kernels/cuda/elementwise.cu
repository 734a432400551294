// Elementwise kernels: unary, binary, compare, affine, where, fill, cast, copy.
// (common.cuh is prepended by the host; see README.md.)
//
// One work item per output element; iteration space = the output's dims (count = numel).
// Operands follow Op::views_mut(): inputs first, the output last. Floats are loaded to f32,
// computed in f32 and rounded once on store, as in the CPU backend. Integers are computed
// as integers: exactly, wrapping (two's complement) where a result does not fit, done in
// the dtype's unsigned type (McElem<T>::U) because signed overflow is undefined in C++.

// ---- Unary: unary_<op>_<f32|f16|bf16>(p, const T* in, T* out) ------------------------------

#define MC_UNARY_OPS(X)                 \
    X(neg, -x)                          \
    X(abs, fabsf(x))                    \
    X(exp, mc_exp(x))                   \
    X(log, logf(x))                     \
    X(sqrt, sqrtf(x))                   \
    X(rsqrt, 1.0f / sqrtf(x))           \
    X(tanh, mc_tanh(x))                 \
    X(sigmoid, mc_sigmoid(x))           \
    X(relu, fmaxf(x, 0.0f))             \
    X(gelu_tanh, mc_gelu_tanh(x))       \
    X(gelu_erf, mc_gelu_erf(x))         \
    X(silu, mc_silu(x))                 \
    X(sin, sinf(x))                     \
    X(cos, cosf(x))

#define MC_UNARY_FN(name, expr)                                             \
    struct McUnary_##name {                                                 \
        static __device__ __forceinline__ float f(float x) { return expr; } \
    };
MC_UNARY_OPS(MC_UNARY_FN)

template <typename F, typename T>
__device__ __forceinline__ void mc_unary(const McParams& p, const T* __restrict__ in,
                                         T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        mc_st(out, o.o[1], F::f(mc_ld(in, o.o[0])));
    }
}

#define MC_UNARY_KERNEL(name, T, tn)                                                    \
    extern "C" __global__ void unary_##name##_##tn(const McParams p, const T* __restrict__ in, \
                                                   T* __restrict__ out) {               \
        mc_unary<McUnary_##name>(p, in, out);                                           \
    }
#define MC_UNARY_ALL_TYPES(name, expr) \
    MC_UNARY_KERNEL(name, float, f32)  \
    MC_UNARY_KERNEL(name, mc_f16, f16) \
    MC_UNARY_KERNEL(name, mc_bf16, bf16)
MC_UNARY_OPS(MC_UNARY_ALL_TYPES)

// ---- Unary on signed integers: unary_<neg|abs>_<i32|i64>(p, const T* in, T* out) ---------
// Wrapping: neg(MIN) = abs(MIN) = MIN.

template <typename T>
__device__ __forceinline__ T mc_neg_int(T x) {
    typedef typename McElem<T>::U U;
    return (T)((U)0 - (U)x);
}

struct McIntUnary_neg {
    template <typename T>
    static __device__ __forceinline__ T f(T x) {
        return mc_neg_int(x);
    }
};

struct McIntUnary_abs {
    template <typename T>
    static __device__ __forceinline__ T f(T x) {
        return x < 0 ? mc_neg_int(x) : x;
    }
};

template <typename F, typename T>
__device__ __forceinline__ void mc_unary_int(const McParams& p, const T* __restrict__ in,
                                             T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        out[o.o[1]] = F::f(in[o.o[0]]);
    }
}

#define MC_UNARY_INT_KERNELS(T, tn)                                                        \
    extern "C" __global__ void unary_neg_##tn(const McParams p, const T* __restrict__ in, \
                                              T* __restrict__ out) {                      \
        mc_unary_int<McIntUnary_neg>(p, in, out);                                         \
    }                                                                                     \
    extern "C" __global__ void unary_abs_##tn(const McParams p, const T* __restrict__ in, \
                                              T* __restrict__ out) {                      \
        mc_unary_int<McIntUnary_abs>(p, in, out);                                         \
    }
MC_SIGNED(MC_UNARY_INT_KERNELS)

// ---- Affine: affine_<f>(p, const T* in, T* out): out = in * p.mul + p.add (f32) ------------

template <typename T>
__device__ __forceinline__ void mc_affine(const McParams& p, const T* __restrict__ in,
                                          T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        mc_st(out, o.o[1], mc_ld(in, o.o[0]) * p.mul + p.add);
    }
}

#define MC_AFFINE_KERNEL(T, tn)                                                   \
    extern "C" __global__ void affine_##tn(const McParams p, const T* __restrict__ in, \
                                           T* __restrict__ out) {                 \
        mc_affine(p, in, out);                                                    \
    }
MC_FLOATS(MC_AFFINE_KERNEL)

// ---- Binary: binary_<op>_<f>(p, const T* lhs, const T* rhs, T* out) ------------------------
// Op names are BinaryOp::name(): maximum/minimum ignore a NaN operand (IEEE maxNum, as
// Rust's f32::max/min); remainder takes the divisor's sign (mc_remf).

#define MC_BINARY_OPS(X)      \
    X(add, x + y)             \
    X(sub, x - y)             \
    X(mul, x * y)             \
    X(div, x / y)             \
    X(maximum, fmaxf(x, y))   \
    X(minimum, fminf(x, y))   \
    X(pow, powf(x, y))        \
    X(remainder, mc_remf(x, y))

#define MC_BINARY_FN(name, expr)                                                     \
    struct McBinary_##name {                                                         \
        static __device__ __forceinline__ float f(float x, float y) { return expr; } \
    };
MC_BINARY_OPS(MC_BINARY_FN)

template <typename F, typename T>
__device__ __forceinline__ void mc_binary(const McParams& p, const T* __restrict__ a,
                                          const T* __restrict__ b, T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        mc_st(out, o.o[2], F::f(mc_ld(a, o.o[0]), mc_ld(b, o.o[1])));
    }
}

#define MC_BINARY_KERNEL(name, T, tn)                                                      \
    extern "C" __global__ void binary_##name##_##tn(const McParams p, const T* __restrict__ a, \
                                                    const T* __restrict__ b,               \
                                                    T* __restrict__ out) {                 \
        mc_binary<McBinary_##name>(p, a, b, out);                                          \
    }
#define MC_BINARY_ALL_TYPES(name, expr) \
    MC_BINARY_KERNEL(name, float, f32)  \
    MC_BINARY_KERNEL(name, mc_f16, f16) \
    MC_BINARY_KERNEL(name, mc_bf16, bf16)
MC_BINARY_OPS(MC_BINARY_ALL_TYPES)

// ---- Binary on integers: binary_<op>_<u32|u8|i32|i64>(p, const T* lhs, const T* rhs, T* out)
// add, sub, mul wrap; div is floor division (rounds towards -inf) and remainder takes the
// divisor's sign, so that x == div(x, y) * y + remainder(x, y); a zero divisor gives 0 for
// both, and MIN / -1 wraps to MIN (its remainder is 0). No pow on integers.

template <typename T>
__device__ __forceinline__ T mc_div_int(T x, T y) {
    if (y == 0) {
        return 0;
    }
    if constexpr (McElem<T>::is_signed) {
        if (y == -1) {
            return mc_neg_int(x);  // MIN / -1 overflows: wraps to MIN
        }
        T q = x / y;
        bool inexact = q * y != x;
        return inexact && ((x < 0) != (y < 0)) ? q - 1 : q;
    } else {
        return x / y;
    }
}

template <typename T>
__device__ __forceinline__ T mc_rem_int(T x, T y) {
    if (y == 0) {
        return 0;
    }
    if constexpr (McElem<T>::is_signed) {
        if (y == -1) {
            return 0;  // MIN % -1 overflows in C++; every remainder by -1 is 0
        }
        T r = x % y;
        return r != 0 && ((r < 0) != (y < 0)) ? r + y : r;
    } else {
        return x % y;
    }
}

// mc_add_int, mc_sub_int, mc_mul_int (wrapping) are in common.cuh: scatter.cu's kernels
// use them too.

#define MC_INT_BINARY_OPS(X)                   \
    X(add, mc_add_int(x, y))                   \
    X(sub, mc_sub_int(x, y))                   \
    X(mul, mc_mul_int(x, y))                   \
    X(div, mc_div_int(x, y))                   \
    X(maximum, x > y ? x : y)                  \
    X(minimum, x < y ? x : y)                  \
    X(remainder, mc_rem_int(x, y))

#define MC_INT_BINARY_FN(name, expr)                         \
    struct McIntBinary_##name {                              \
        template <typename T>                                \
        static __device__ __forceinline__ T f(T x, T y) {    \
            return expr;                                     \
        }                                                    \
    };
MC_INT_BINARY_OPS(MC_INT_BINARY_FN)

template <typename F, typename T>
__device__ __forceinline__ void mc_binary_int(const McParams& p, const T* __restrict__ a,
                                              const T* __restrict__ b, T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        out[o.o[2]] = F::f(a[o.o[0]], b[o.o[1]]);
    }
}

#define MC_INT_BINARY_KERNEL(name, T, tn)                                                  \
    extern "C" __global__ void binary_##name##_##tn(const McParams p, const T* __restrict__ a, \
                                                    const T* __restrict__ b,               \
                                                    T* __restrict__ out) {                 \
        mc_binary_int<McIntBinary_##name>(p, a, b, out);                                   \
    }
#define MC_INT_BINARY_ALL_TYPES(name, expr) \
    MC_INT_BINARY_KERNEL(name, u32, u32)    \
    MC_INT_BINARY_KERNEL(name, u8, u8)      \
    MC_INT_BINARY_KERNEL(name, i32, i32)    \
    MC_INT_BINARY_KERNEL(name, i64, i64)
MC_INT_BINARY_OPS(MC_INT_BINARY_ALL_TYPES)

// ---- Compare: compare_<op>_<in>_<out>(p, const T* lhs, const T* rhs, O* out) ---------------
// <out> is u8 or <in>; writes 1/0 (1.0/0.0 for a float output). Floats compare as IEEE
// values in f32 (exact for f16/bf16; NaN unequal to everything, -0 == +0), integers as
// integers (never through f32, which would merge values above 2^24).

#define MC_COMPARE_OPS(X) \
    X(eq, ==)             \
    X(ne, !=)             \
    X(lt, <)              \
    X(le, <=)             \
    X(gt, >)              \
    X(ge, >=)

template <typename T>
struct McCmpValue {
    typedef float type;
    static __device__ __forceinline__ float get(T v) { return McElem<T>::to_f32(v); }
};
template <>
struct McCmpValue<u32> {
    typedef u32 type;
    static __device__ __forceinline__ u32 get(u32 v) { return v; }
};
template <>
struct McCmpValue<u8> {
    typedef u32 type;
    static __device__ __forceinline__ u32 get(u8 v) { return (u32)v; }
};
template <>
struct McCmpValue<i32> {
    typedef i32 type;
    static __device__ __forceinline__ i32 get(i32 v) { return v; }
};
template <>
struct McCmpValue<i64> {
    typedef i64 type;
    static __device__ __forceinline__ i64 get(i64 v) { return v; }
};

#define MC_COMPARE_FN(name, rel)                                         \
    struct McCompare_##name {                                            \
        template <typename V>                                            \
        static __device__ __forceinline__ bool f(V x, V y) {             \
            return x rel y;                                              \
        }                                                                \
    };
MC_COMPARE_OPS(MC_COMPARE_FN)

template <typename F, typename T, typename O>
__device__ __forceinline__ void mc_compare(const McParams& p, const T* __restrict__ a,
                                           const T* __restrict__ b, O* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        bool r = F::f(McCmpValue<T>::get(a[o.o[0]]), McCmpValue<T>::get(b[o.o[1]]));
        out[o.o[2]] = McElem<O>::from_f32(r ? 1.0f : 0.0f);
    }
}

#define MC_COMPARE_KERNEL(name, T, tn, O, on)                                          \
    extern "C" __global__ void compare_##name##_##tn##_##on(                           \
        const McParams p, const T* __restrict__ a, const T* __restrict__ b,            \
        O* __restrict__ out) {                                                         \
        mc_compare<McCompare_##name>(p, a, b, out);                                    \
    }
#define MC_COMPARE_ALL_TYPES(name, rel)                    \
    MC_COMPARE_KERNEL(name, float, f32, float, f32)        \
    MC_COMPARE_KERNEL(name, float, f32, u8, u8)            \
    MC_COMPARE_KERNEL(name, mc_f16, f16, mc_f16, f16)      \
    MC_COMPARE_KERNEL(name, mc_f16, f16, u8, u8)           \
    MC_COMPARE_KERNEL(name, mc_bf16, bf16, mc_bf16, bf16)  \
    MC_COMPARE_KERNEL(name, mc_bf16, bf16, u8, u8)         \
    MC_COMPARE_KERNEL(name, u32, u32, u32, u32)            \
    MC_COMPARE_KERNEL(name, u32, u32, u8, u8)              \
    MC_COMPARE_KERNEL(name, u8, u8, u8, u8)                \
    MC_COMPARE_KERNEL(name, i32, i32, i32, i32)            \
    MC_COMPARE_KERNEL(name, i32, i32, u8, u8)              \
    MC_COMPARE_KERNEL(name, i64, i64, i64, i64)            \
    MC_COMPARE_KERNEL(name, i64, i64, u8, u8)
MC_COMPARE_OPS(MC_COMPARE_ALL_TYPES)

// ---- Where: where_<t>(p, const u8* cond, const T* on_true, const T* on_false, T* out) -------

template <typename T>
__device__ __forceinline__ void mc_where(const McParams& p, const u8* __restrict__ cond,
                                         const T* __restrict__ t, const T* __restrict__ f,
                                         T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<4> o = mc_offsets<4>(p, g);
        out[o.o[3]] = cond[o.o[0]] != 0 ? t[o.o[1]] : f[o.o[2]];
    }
}

#define MC_WHERE_KERNEL(T, tn)                                                             \
    extern "C" __global__ void where_##tn(const McParams p, const u8* __restrict__ cond,   \
                                          const T* __restrict__ on_true,                   \
                                          const T* __restrict__ on_false,                  \
                                          T* __restrict__ out) {                           \
        mc_where(p, cond, on_true, on_false, out);                                         \
    }
MC_DTYPES(MC_WHERE_KERNEL)

// ---- Fill: fill_<t>(p, T* out): every element = the bit pattern p.bits | ext[0] << 32 -----
// The host converts the f64 value as Cast does (api `Element::from_f64`) and passes its bits:
// the low 32 in p.bits, the high 32 (i64 only, else 0) in ext[0].

template <typename T>
__device__ __forceinline__ void mc_fill(const McParams& p, T* __restrict__ out) {
    T v = McElem<T>::from_bits((u64)p.bits | (p.ext[0] << 32));
    MC_FOR_EACH(g, p) {
        McOffsets<1> o = mc_offsets<1>(p, g);
        out[o.o[0]] = v;
    }
}

#define MC_FILL_KERNEL(T, tn)                                                     \
    extern "C" __global__ void fill_##tn(const McParams p, T* __restrict__ out) { \
        mc_fill(p, out);                                                          \
    }
MC_DTYPES(MC_FILL_KERNEL)

// ---- Copy: copy_<t>(p, const T* in, T* out): strided copy (also Concat, one per input) ----

template <typename T>
__device__ __forceinline__ void mc_copy(const McParams& p, const T* __restrict__ in,
                                        T* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        out[o.o[1]] = in[o.o[0]];
    }
}

#define MC_COPY_KERNEL(T, tn)                                                               \
    extern "C" __global__ void copy_##tn(const McParams p, const T* __restrict__ in,        \
                                         T* __restrict__ out) {                             \
        mc_copy(p, in, out);                                                                \
    }
MC_DTYPES(MC_COPY_KERNEL)

// ---- Cast: cast_<src>_<dst>(p, const S* in, D* out), all 49 pairs ---------------------------
// Float -> float: through f32, one round-to-nearest-even. Float -> int: truncation towards
// zero, saturating, NaN -> 0. Int -> float: exact in i64, then correctly rounded once (i64 ->
// f32 too). Int -> int: saturating (u32 -> u8 clamps at 255, i32 -5 -> u32 0).

template <typename S, typename D>
__device__ __forceinline__ void mc_cast_kernel(const McParams& p, const S* __restrict__ in,
                                               D* __restrict__ out) {
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        out[o.o[1]] = mc_cast<S, D>(in[o.o[0]]);
    }
}

#define MC_CAST_KERNEL(S, sn, D, dn)                                                        \
    extern "C" __global__ void cast_##sn##_##dn(const McParams p, const S* __restrict__ in, \
                                                D* __restrict__ out) {                      \
        mc_cast_kernel(p, in, out);                                                         \
    }
#define MC_CAST_FROM(S, sn)              \
    MC_CAST_KERNEL(S, sn, float, f32)    \
    MC_CAST_KERNEL(S, sn, mc_f16, f16)   \
    MC_CAST_KERNEL(S, sn, mc_bf16, bf16) \
    MC_CAST_KERNEL(S, sn, u32, u32)      \
    MC_CAST_KERNEL(S, sn, u8, u8)        \
    MC_CAST_KERNEL(S, sn, i32, i32)      \
    MC_CAST_KERNEL(S, sn, i64, i64)
MC_DTYPES(MC_CAST_FROM)
