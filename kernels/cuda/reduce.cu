// Reductions along one axis: reduce_<sum|mean|max|min|argmax|argmin>_<f32|f16|bf16>[_warp]
// and reduce_<sum|max|min|argmax|argmin>_<u32|u8|i32|i64>[_warp].
// (common.cuh is prepended by the host; see README.md.)
//
// One work item per output element (a row: the input along the axis). Operand 0 is the
// input without the axis, 1 the output without the axis; ext[0] = row length, ext[1] = the
// input's axis stride.
//
//   reduce_<op>_<t>       a block per row (long rows): blockDim.x a multiple of 32, <= 1024
//   reduce_<op>_<t>_warp  a warp per row (many short rows): blockDim.x a multiple of 32
//
// Semantics (the CPU backend's): sum and mean accumulate in f64 and round once (mean divides
// in f64); an empty row sums to 0 and its mean is NaN. max/min ignore NaN (an all-NaN row
// gives -inf/+inf). argmax (argmin) writes the u32 index of the first NaN-ignoring maximum
// (minimum), 0 for an all-NaN row. Integers are exact: sum wraps (modulo 2^bits), max, min,
// argmax and argmin compare the integers themselves.

struct McFoldSum {
    typedef McSumF64 C;
    static __device__ __forceinline__ double lift(float v) { return (double)v; }
    static __device__ __forceinline__ float finish(double acc, u64) { return (float)acc; }
};

struct McFoldMean {
    typedef McSumF64 C;
    static __device__ __forceinline__ double lift(float v) { return (double)v; }
    static __device__ __forceinline__ float finish(double acc, u64 n) {
        return (float)(acc / (double)n);
    }
};

struct McFoldMax {
    typedef McMaxF32 C;
    static __device__ __forceinline__ float lift(float v) { return v; }
    static __device__ __forceinline__ float finish(float acc, u64) { return acc; }
};

struct McFoldMin {
    typedef McMinF32 C;
    static __device__ __forceinline__ float lift(float v) { return v; }
    static __device__ __forceinline__ float finish(float acc, u64) { return acc; }
};

// Integer folds: values lifted to i64 (exact), the sum in u64 (wrapping), truncated to the
// dtype on store (the sum modulo 2^bits; max and min are in range).
struct McFoldSumInt {
    typedef McSumU64 C;
    static __device__ __forceinline__ u64 lift(i64 v) { return (u64)v; }
    template <typename T>
    static __device__ __forceinline__ T finish(u64 acc) {
        return (T)(typename McElem<T>::U)acc;
    }
};

struct McFoldMaxInt {
    typedef McMaxI64 C;
    static __device__ __forceinline__ i64 lift(i64 v) { return v; }
    template <typename T>
    static __device__ __forceinline__ T finish(i64 acc) {
        return (T)acc;
    }
};

struct McFoldMinInt {
    typedef McMinI64 C;
    static __device__ __forceinline__ i64 lift(i64 v) { return v; }
    template <typename T>
    static __device__ __forceinline__ T finish(i64 acc) {
        return (T)acc;
    }
};

template <typename Team, typename F, typename T>
__device__ __forceinline__ void mc_reduce_rows(const McParams& p, const T* __restrict__ in,
                                               T* __restrict__ out) {
    typedef typename F::C C;
    const u64 n = p.ext[0];
    const u64 st = p.ext[1];
    // The loop condition is uniform across the team, so every thread of a team reaches the
    // team's shuffles and barriers.
    for (u64 row = Team::first(); row < p.count; row += Team::step()) {
        McOffsets<2> o = mc_offsets<2>(p, row);
        auto acc = C::identity();
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            acc = C::combine(acc, F::lift(mc_ld(in, o.o[0] + i * st)));
        }
        acc = Team::template reduce<C>(acc);
        if (Team::lane() == 0) {
            mc_st(out, o.o[1], F::finish(acc, n));
        }
    }
}

template <typename Team, typename F, typename T>
__device__ __forceinline__ void mc_reduce_int_rows(const McParams& p, const T* __restrict__ in,
                                                   T* __restrict__ out) {
    typedef typename F::C C;
    const u64 n = p.ext[0];
    const u64 st = p.ext[1];
    for (u64 row = Team::first(); row < p.count; row += Team::step()) {
        McOffsets<2> o = mc_offsets<2>(p, row);
        auto acc = C::identity();
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            acc = C::combine(acc, F::lift(McElem<T>::to_i64(in[o.o[0] + i * st])));
        }
        acc = Team::template reduce<C>(acc);
        if (Team::lane() == 0) {
            out[o.o[1]] = F::template finish<T>(acc);
        }
    }
}

// Arg-max / arg-min rows; A is McArgF32<max?> or McArgI64<max?> (common.cuh).
template <typename Team, typename A, typename T>
__device__ __forceinline__ void mc_arg_rows(const McParams& p, const T* __restrict__ in,
                                            u32* __restrict__ out) {
    const u64 n = p.ext[0];
    const u64 st = p.ext[1];
    for (u64 row = Team::first(); row < p.count; row += Team::step()) {
        McOffsets<2> o = mc_offsets<2>(p, row);
        typename A::V best = A::identity();
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            typename A::V cand;
            cand.v = A::lift(in[o.o[0] + i * st]);
            cand.i = i;
            best = A::combine(best, cand);
        }
        best = Team::template reduce<A>(best);
        if (Team::lane() == 0) {
            out[o.o[1]] = best.i == ~0ull ? 0u : (u32)best.i;
        }
    }
}

#define MC_REDUCE_KERNELS(name, Rows, Fold, T, tn)                                           \
    extern "C" __global__ void reduce_##name##_##tn(const McParams p, const T* __restrict__ in, \
                                                    T* __restrict__ out) {                   \
        Rows<McBlockTeam, Fold>(p, in, out);                                                 \
    }                                                                                        \
    extern "C" __global__ void reduce_##name##_##tn##_warp(                                  \
        const McParams p, const T* __restrict__ in, T* __restrict__ out) {                   \
        Rows<McWarpTeam, Fold>(p, in, out);                                                  \
    }

#define MC_ARG_KERNELS(name, Arg, T, tn)                                                    \
    extern "C" __global__ void reduce_##name##_##tn(const McParams p, const T* __restrict__ in, \
                                                    u32* __restrict__ out) {                \
        mc_arg_rows<McBlockTeam, Arg>(p, in, out);                                          \
    }                                                                                       \
    extern "C" __global__ void reduce_##name##_##tn##_warp(                                 \
        const McParams p, const T* __restrict__ in, u32* __restrict__ out) {                \
        mc_arg_rows<McWarpTeam, Arg>(p, in, out);                                           \
    }

#define MC_REDUCE_FLOAT(T, tn)                                  \
    MC_REDUCE_KERNELS(sum, mc_reduce_rows, McFoldSum, T, tn)    \
    MC_REDUCE_KERNELS(mean, mc_reduce_rows, McFoldMean, T, tn)  \
    MC_REDUCE_KERNELS(max, mc_reduce_rows, McFoldMax, T, tn)    \
    MC_REDUCE_KERNELS(min, mc_reduce_rows, McFoldMin, T, tn)    \
    MC_ARG_KERNELS(argmax, McArgF32<true>, T, tn)               \
    MC_ARG_KERNELS(argmin, McArgF32<false>, T, tn)
MC_FLOATS(MC_REDUCE_FLOAT)

#define MC_REDUCE_INT(T, tn)                                          \
    MC_REDUCE_KERNELS(sum, mc_reduce_int_rows, McFoldSumInt, T, tn)   \
    MC_REDUCE_KERNELS(max, mc_reduce_int_rows, McFoldMaxInt, T, tn)   \
    MC_REDUCE_KERNELS(min, mc_reduce_int_rows, McFoldMinInt, T, tn)   \
    MC_ARG_KERNELS(argmax, McArgI64<true>, T, tn)                     \
    MC_ARG_KERNELS(argmin, McArgI64<false>, T, tn)
MC_INTS(MC_REDUCE_INT)
