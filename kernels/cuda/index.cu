// Indexed reads and accumulations. (common.cuh is prepended by the host; see README.md.)
//
// As in the CPU and WGSL backends, each pair shares one body: an IndexSelect index vector
// is a Gather index tensor broadcast (stride 0) over the other dims, and likewise for
// IndexAdd / ScatterAdd. The indexed operand is addressed as `base + index · axis_stride`,
// with `base` its layout with the axis stride zeroed. The `index_select_*` / `index_add_*`
// entry points are the same code under the op's own name; only the host's parameters differ
// (see common.cuh).
//
// Indices are u32, i32 or i64 (the entry point's last dtype, <i>); a negative value counts
// from the end of the axis. A value outside the axis after that skips the element (gather
// writes 0), touches no memory outside the views, and is flagged in `status` as given
// (common.cuh, mc_resolve_index).

// ---- gather_<t>_<i> / index_select_<t>_<i>(p, const T* input, const I* indices, T* out,
//                                            u32* status)
// ext[0] = input dims[axis], ext[1] = input axis stride.

template <typename T, typename I>
__device__ __forceinline__ void mc_gather(const McParams& p, const T* __restrict__ in,
                                          const I* __restrict__ idx, T* __restrict__ out,
                                          u32* status) {
    const u64 len = p.ext[0];
    const u64 astride = p.ext[1];
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        u64 j;
        if (mc_resolve_index(McElem<I>::to_i64(idx[o.o[1]]), len, status, &j)) {
            out[o.o[2]] = in[o.o[0] + j * astride];
        } else {
            out[o.o[2]] = McElem<T>::from_bits(0ull);
        }
    }
}

#define MC_GATHER_KERNELS(T, tn, I, in)                                                    \
    extern "C" __global__ void gather_##tn##_##in(                                         \
        const McParams p, const T* __restrict__ input, const I* __restrict__ indices,      \
        T* __restrict__ out, u32* status) {                                                \
        mc_gather(p, input, indices, out, status);                                         \
    }                                                                                      \
    extern "C" __global__ void index_select_##tn##_##in(                                   \
        const McParams p, const T* __restrict__ input, const I* __restrict__ indices,      \
        T* __restrict__ out, u32* status) {                                                \
        mc_gather(p, input, indices, out, status);                                         \
    }
#define MC_GATHER_FOR(T, tn) MC_INDEX_TYPES(MC_GATHER_KERNELS, T, tn)
MC_DTYPES(MC_GATHER_FOR)

// ---- scatter_add_<t>_<i> / index_add_<t>_<i>(p, const T* src, const I* indices, float* acc,
//                                              u32* status)
//
// Deterministic: one work item per column (a position off the axis of `src`), which walks
// the source along the axis in order and adds each element where its index points. No
// other work item writes that column of the accumulator, so there are no races and no
// atomics, and every output element is a sequential f32 sum in source order: the CPU
// backend's result bit for bit.
//
// `acc` is f32: the output itself for f32; for f16/bf16 an f32 copy of the output made with
// cast_<t>_f32 before and rounded back with cast_f32_<t> after (one rounding, as the CPU).
// <t> is the dtype of `src`.
// ext[0] = out dims[axis], ext[1] = acc axis stride, ext[2] = src dims[axis],
// ext[3] = src axis stride, ext[4] = indices axis stride.

template <typename T, typename I>
__device__ __forceinline__ void mc_scatter_add(const McParams& p, const T* __restrict__ src,
                                               const I* __restrict__ idx,
                                               float* __restrict__ acc, u32* status) {
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
            float* at = acc + o.o[2] + t * astride;
            *at = *at + mc_ld(src, o.o[0] + i * sstride);
        }
    }
}

// ---- scatter_add_atomic_<t>_<i> / index_add_atomic_<t>_<i>: same signature, one work item per source
// element with an f32 atomicAdd: far more parallel when there are few columns (an embedding
// gradient), but the summation order, and so the last bits, vary from run to run.
// Iteration = all src dims; [0] src, [1] indices, [2] acc with its axis stride zeroed.
// ext[0] = out dims[axis], ext[1] = acc axis stride.

template <typename T, typename I>
__device__ __forceinline__ void mc_scatter_add_atomic(const McParams& p,
                                                      const T* __restrict__ src,
                                                      const I* __restrict__ idx,
                                                      float* __restrict__ acc, u32* status) {
    const u64 len = p.ext[0];
    const u64 astride = p.ext[1];
    MC_FOR_EACH(g, p) {
        McOffsets<3> o = mc_offsets<3>(p, g);
        u64 t;
        if (!mc_resolve_index(McElem<I>::to_i64(idx[o.o[1]]), len, status, &t)) {
            continue;
        }
        atomicAdd(acc + o.o[2] + t * astride, mc_ld(src, o.o[0]));
    }
}

#define MC_SCATTER_KERNELS(T, tn, I, in)                                                   \
    extern "C" __global__ void scatter_add_##tn##_##in(                                    \
        const McParams p, const T* __restrict__ src, const I* __restrict__ indices,        \
        float* __restrict__ acc, u32* status) {                                            \
        mc_scatter_add(p, src, indices, acc, status);                                      \
    }                                                                                      \
    extern "C" __global__ void index_add_##tn##_##in(                                      \
        const McParams p, const T* __restrict__ src, const I* __restrict__ indices,        \
        float* __restrict__ acc, u32* status) {                                            \
        mc_scatter_add(p, src, indices, acc, status);                                      \
    }                                                                                      \
    extern "C" __global__ void scatter_add_atomic_##tn##_##in(                             \
        const McParams p, const T* __restrict__ src, const I* __restrict__ indices,        \
        float* __restrict__ acc, u32* status) {                                            \
        mc_scatter_add_atomic(p, src, indices, acc, status);                               \
    }                                                                                      \
    extern "C" __global__ void index_add_atomic_##tn##_##in(                               \
        const McParams p, const T* __restrict__ src, const I* __restrict__ indices,        \
        float* __restrict__ acc, u32* status) {                                            \
        mc_scatter_add_atomic(p, src, indices, acc, status);                               \
    }
#define MC_SCATTER_FOR(T, tn) MC_INDEX_TYPES(MC_SCATTER_KERNELS, T, tn)
MC_FLOATS(MC_SCATTER_FOR)
