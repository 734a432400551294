// Op::Scatter: scatter (overwrite) and scatter_reduce (sum, prod, max, min). (common.cuh is
// prepended by the host; see README.md.) A file of its own, apart from index.cu, so that
// gather and scatter_add do not pay for compiling these 105 entry points.
//
// Indices are u32, i32 or i64 (the entry point's last dtype, <i>); a negative value counts
// from the end of the axis. A value outside the axis after that skips the element, touches
// no memory outside the views, and is flagged in `status` as given (common.cuh,
// mc_resolve_index).

// ---- scatter_<op>_<t>_<i>(p, const T* src, const I* indices, T* out, u32* status)
// <op> = assign | sum | prod | max | min (Op::Scatter, ScatterOp::name()); any dtype <t>.
//
// out[lane, resolve(indices[lane, i])] = combine(that element, src[lane, i]) for i in
// increasing order, one work item per lane (a position of `src` off the axis): the source
// elements of a lane apply in order, no other work item touches that lane's targets, so
// duplicates give one result (assign keeps the last, the reductions fold in order), with no
// atomics. Stores of 1- and 2-byte elements do not disturb their neighbours on CUDA.
// combine: assign copies the bits; floats compute in f32 and round to <t> at every store
// (max/min as binary_maximum/minimum: fmaxf/fminf ignore a NaN operand); integers are exact
// and wrap as binary_*_<n> (mc_add_int, mc_mul_int).
// The layout is scatter_add's deterministic one with `out` itself as the accumulator:
// iteration = src dims without axis; [0] src, [1] indices, [2] out, each without axis.
// ext[0] = out dims[axis], ext[1] = out axis stride, ext[2] = src dims[axis],
// ext[3] = src axis stride, ext[4] = indices axis stride.

struct McScatter_assign {
    template <typename T>
    static __device__ __forceinline__ T f(T, T s) {
        return s;
    }
};

#define MC_SCATTER_REDUCE(name, fexpr, iexpr)                                             \
    struct McScatter_##name {                                                             \
        template <typename T>                                                             \
        static __device__ __forceinline__ T f(T a, T b) {                                 \
            if constexpr (McElem<T>::is_float) {                                          \
                const float x = McElem<T>::to_f32(a);                                     \
                const float y = McElem<T>::to_f32(b);                                     \
                return McElem<T>::from_f32(fexpr);                                        \
            } else {                                                                      \
                return iexpr;                                                             \
            }                                                                             \
        }                                                                                 \
    };
MC_SCATTER_REDUCE(sum, x + y, mc_add_int(a, b))
MC_SCATTER_REDUCE(prod, x * y, mc_mul_int(a, b))
MC_SCATTER_REDUCE(max, fmaxf(x, y), a > b ? a : b)
MC_SCATTER_REDUCE(min, fminf(x, y), a < b ? a : b)

template <typename C, typename T, typename I>
__device__ __forceinline__ void mc_scatter(const McParams& p, const T* __restrict__ src,
                                           const I* __restrict__ idx, T* __restrict__ out,
                                           u32* status) {
    const u64 len = p.ext[0];
    const u64 astride = p.ext[1];
    const u64 n = p.ext[2];
    const u64 sstride = p.ext[3];
    const u64 xstride = p.ext[4];
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        for (u64 i = 0; i < n; ++i) {
            u64 t;
            if (!mc_resolve_index(McElem<I>::to_i64(idx[o.o[1] + i * xstride]), len, status, &t)) {
                continue;
            }
            T* at = out + o.o[2] + t * astride;
            *at = C::f(*at, src[o.o[0] + i * sstride]);
        }
    }
}

#define MC_SCATTER_OP_KERNEL(T, tn, I, in, op)                                             \
    extern "C" __global__ void scatter_##op##_##tn##_##in(                                 \
        const McParams p, const T* __restrict__ src, const I* __restrict__ indices,        \
        T* __restrict__ out, u32* status) {                                                \
        mc_scatter<McScatter_##op>(p, src, indices, out, status);                          \
    }
#define MC_SCATTER_OPS_KERNELS(T, tn, I, in)                                               \
    MC_SCATTER_OP_KERNEL(T, tn, I, in, assign)                                             \
    MC_SCATTER_OP_KERNEL(T, tn, I, in, sum)                                                \
    MC_SCATTER_OP_KERNEL(T, tn, I, in, prod)                                               \
    MC_SCATTER_OP_KERNEL(T, tn, I, in, max)                                                \
    MC_SCATTER_OP_KERNEL(T, tn, I, in, min)
#define MC_SCATTER_OPS_FOR(T, tn) MC_INDEX_TYPES(MC_SCATTER_OPS_KERNELS, T, tn)
MC_DTYPES(MC_SCATTER_OPS_FOR)
