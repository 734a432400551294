// Reductions along one axis: reduce_<sum|mean|max|min|argmax>_<f32|f16|bf16>[_warp].
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
// gives -inf/+inf). argmax writes the u32 index of the first NaN-ignoring maximum, 0 for an
// all-NaN row.

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

template <typename Team, typename T>
__device__ __forceinline__ void mc_argmax_rows(const McParams& p, const T* __restrict__ in,
                                               u32* __restrict__ out) {
    const u64 n = p.ext[0];
    const u64 st = p.ext[1];
    for (u64 row = Team::first(); row < p.count; row += Team::step()) {
        McOffsets<2> o = mc_offsets<2>(p, row);
        McArg best = McArgMax::identity();
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            McArg cand;
            cand.v = mc_ld(in, o.o[0] + i * st);
            cand.i = i;
            best = McArgMax::combine(best, cand);
        }
        best = Team::template reduce<McArgMax>(best);
        if (Team::lane() == 0) {
            out[o.o[1]] = best.i == ~0ull ? 0u : (u32)best.i;
        }
    }
}

#define MC_REDUCE_KERNELS(name, Fold, T, tn)                                                 \
    extern "C" __global__ void reduce_##name##_##tn(const McParams p, const T* __restrict__ in, \
                                                    T* __restrict__ out) {                   \
        mc_reduce_rows<McBlockTeam, Fold>(p, in, out);                                       \
    }                                                                                        \
    extern "C" __global__ void reduce_##name##_##tn##_warp(                                  \
        const McParams p, const T* __restrict__ in, T* __restrict__ out) {                   \
        mc_reduce_rows<McWarpTeam, Fold>(p, in, out);                                        \
    }

#define MC_ARGMAX_KERNELS(T, tn)                                                           \
    extern "C" __global__ void reduce_argmax_##tn(const McParams p, const T* __restrict__ in, \
                                                  u32* __restrict__ out) {                 \
        mc_argmax_rows<McBlockTeam>(p, in, out);                                           \
    }                                                                                      \
    extern "C" __global__ void reduce_argmax_##tn##_warp(                                  \
        const McParams p, const T* __restrict__ in, u32* __restrict__ out) {               \
        mc_argmax_rows<McWarpTeam>(p, in, out);                                            \
    }

#define MC_REDUCE_ALL(T, tn)                    \
    MC_REDUCE_KERNELS(sum, McFoldSum, T, tn)    \
    MC_REDUCE_KERNELS(mean, McFoldMean, T, tn)  \
    MC_REDUCE_KERNELS(max, McFoldMax, T, tn)    \
    MC_REDUCE_KERNELS(min, McFoldMin, T, tn)    \
    MC_ARGMAX_KERNELS(T, tn)
MC_FLOATS(MC_REDUCE_ALL)
