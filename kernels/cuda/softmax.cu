// (Log-)softmax along one axis: softmax_<t>[_warp], log_softmax_<t>[_warp], t in f32/f16/bf16.
// (common.cuh is prepended by the host; see README.md.)
//
// Rows as in reduce.cu: operand 0 the input without the axis, 1 the output without the axis;
// ext[0] = row length, ext[1] = the input's axis stride, ext[2] = the output's axis stride.
// `softmax_<t>` gives each row a block (blockDim.x a multiple of 32, <= 1024); `_warp` a warp.
//
// Three passes over the row, as the CPU backend: m = max (NaN ignored), s = Σ e^(x - m)
// (each term in f32, summed in f64), then
//   softmax:     e^(x - m) · (f32)(1 / s)
//   log_softmax: (x - m) - (f32)ln(s)
// with e^x the CPU's exp (mc_exp), so results match it up to the summation order of s.

template <typename Team, bool LOG, typename T>
__device__ __forceinline__ void mc_softmax_rows(const McParams& p, const T* __restrict__ in,
                                                T* __restrict__ out) {
    const u64 n = p.ext[0];
    const u64 ist = p.ext[1];
    const u64 ost = p.ext[2];
    for (u64 row = Team::first(); row < p.count; row += Team::step()) {
        McOffsets<2> o = mc_offsets<2>(p, row);
        float m = McMaxF32::identity();
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            m = fmaxf(m, mc_ld(in, o.o[0] + i * ist));
        }
        m = Team::template reduce<McMaxF32>(m);
        double s = 0.0;
        for (u64 i = Team::lane(); i < n; i += Team::size()) {
            s += (double)mc_exp(mc_ld(in, o.o[0] + i * ist) - m);
        }
        s = Team::template reduce<McSumF64>(s);
        if (LOG) {
            const float c = (float)log(s);
            for (u64 i = Team::lane(); i < n; i += Team::size()) {
                mc_st(out, o.o[1] + i * ost, (mc_ld(in, o.o[0] + i * ist) - m) - c);
            }
        } else {
            const float k = (float)(1.0 / s);
            for (u64 i = Team::lane(); i < n; i += Team::size()) {
                mc_st(out, o.o[1] + i * ost, mc_exp(mc_ld(in, o.o[0] + i * ist) - m) * k);
            }
        }
    }
}

#define MC_SOFTMAX_KERNELS(T, tn)                                                              \
    extern "C" __global__ void softmax_##tn(const McParams p, const T* __restrict__ in,        \
                                            T* __restrict__ out) {                             \
        mc_softmax_rows<McBlockTeam, false>(p, in, out);                                       \
    }                                                                                          \
    extern "C" __global__ void softmax_##tn##_warp(const McParams p, const T* __restrict__ in, \
                                                   T* __restrict__ out) {                      \
        mc_softmax_rows<McWarpTeam, false>(p, in, out);                                        \
    }                                                                                          \
    extern "C" __global__ void log_softmax_##tn(const McParams p, const T* __restrict__ in,    \
                                                T* __restrict__ out) {                         \
        mc_softmax_rows<McBlockTeam, true>(p, in, out);                                        \
    }                                                                                          \
    extern "C" __global__ void log_softmax_##tn##_warp(                                        \
        const McParams p, const T* __restrict__ in, T* __restrict__ out) {                     \
        mc_softmax_rows<McWarpTeam, true>(p, in, out);                                         \
    }
MC_FLOATS(MC_SOFTMAX_KERNELS)
