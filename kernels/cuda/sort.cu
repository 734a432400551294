// Op::ArgSort: the positions that sort each lane along an axis, stable, exact for every dtype.
// (common.cuh is prepended by the host; see README.md.) A file of its own so that no other
// op's users compile it.
//
// Every element gets an unsigned 64-bit KEY whose unsigned order is the wanted order
// (ascending; descending: ~key), and the (key, position) pairs of each lane are sorted
// lexicographically by a bitonic network. The pairs are distinct (positions differ), so the
// result is the one sorted order: stable, ties by position ascending in both directions.
//   floats (f16/bf16 widened exactly to f32): b = the f32 bits, -0 as +0;
//     key = b >= 0x80000000 ? 0xFFFFFFFF - b : b + 0x80000000; any NaN -> 0xFFFFFFFF
//     (after +inf ascending, first descending).
//   u8, u32: the value; i32: bits ^ 0x80000000; i64: bits ^ 0x8000000000000000.
// Bit operations only: no float arithmetic that flush-to-zero or fast math could change.
//
// The work happens in two temporaries of lanes * m elements, m = the lane length n rounded
// up to a power of two (m >= 2): `keys` (u64) and `pos` (u32), lane L at L * m, contiguous.
// Padding (positions n..m) holds key 0xFFFF...FF and position 0xFFFFFFFF, which sorts after
// every real pair (real positions are < n <= 0xFFFFFFFF); padding pairs are equal to one
// another, which a sorting network does not mind. The host then copies the first n
// positions of every lane to `out` with copy_u32 (any strides). Lanes of one element are a
// fill_u32 of 0 and never come here.
//
// Network: for k = 2, 4, .., m and j = k/2, .., 1, element i of a lane (lane-local index)
// with l = i | j, i & j == 0, is compare-exchanged with l: ascending when i & k == 0 (so all
// ascending at k = m), descending otherwise. Stages with j < MC_SORT_TILE/2 run inside one
// block in shared memory (argsort_tile); the others, one launch per (k, j) (argsort_merge).

// Elements of the temporaries one block of argsort_tile holds in shared memory
// (24 KiB: under the 48 KiB of static shared memory every architecture allows).
#define MC_SORT_TILE 2048

template <typename T>
__device__ __forceinline__ u64 mc_sort_key(T v) {
    if constexpr (McElem<T>::is_float) {
        const float f = McElem<T>::to_f32(v);
        u32 b = __float_as_uint(f);
        if (mc_isnan(f)) {
            return 0xffffffffull;
        }
        if (b == 0x80000000u) {
            b = 0;  // -0.0 sorts as +0.0
        }
        return (u64)(b >= 0x80000000u ? 0xffffffffu - b : b + 0x80000000u);
    } else if constexpr (McElem<T>::is_signed) {
        typedef typename McElem<T>::U U;
        const U sign = (U)1 << (sizeof(U) * 8 - 1);
        return (u64)((U)v ^ sign);
    } else {
        return (u64)v;
    }
}

// Whether pair a must come after pair b.
__device__ __forceinline__ bool mc_sort_after(u64 ka, u32 pa, u64 kb, u32 pb) {
    return ka > kb || (ka == kb && pa > pb);
}

// ---- argsort_keys_<t>(p, const T* input, u64* keys, u32* pos)
// iteration = input dims without axis, then m (the padded axis, innermost); count = lanes * m.
// [0] input: its strides without axis, then its axis stride; [1] the temporaries: contiguous
// (lane * m + i). ext[0] = n (input dims[axis]), ext[1] = m, ext[2] = 1 for descending.
template <typename T>
__device__ __forceinline__ void mc_argsort_keys(const McParams& p, const T* __restrict__ in,
                                                u64* __restrict__ keys, u32* __restrict__ pos) {
    const u64 n = p.ext[0];
    const u64 m = p.ext[1];
    const bool descending = p.ext[2] != 0;
    MC_FOR_EACH(g, p) {
        McOffsets<2> o = mc_offsets<2>(p, g);
        const u64 i = o.o[1] & (m - 1);
        if (i < n) {
            const u64 key = mc_sort_key<T>(in[o.o[0]]);
            keys[o.o[1]] = descending ? ~key : key;
            pos[o.o[1]] = (u32)i;
        } else {
            keys[o.o[1]] = ~0ull;
            pos[o.o[1]] = 0xffffffffu;
        }
    }
}

#define MC_ARGSORT_KEYS_KERNEL(T, tn)                                                      \
    extern "C" __global__ void argsort_keys_##tn(const McParams p, const T* __restrict__ in, \
                                                 u64* __restrict__ keys,                  \
                                                 u32* __restrict__ pos) {                 \
        mc_argsort_keys<T>(p, in, keys, pos);                                              \
    }
MC_DTYPES(MC_ARGSORT_KEYS_KERNEL)

// ---- argsort_merge(p, u64* keys, u32* pos): one (k, j) stage over every lane, in global
// memory (j >= MC_SORT_TILE / 2). iteration = lanes * m / 2 pairs (rank 1); ext[0] = log2(m),
// ext[1] = k, ext[2] = j.
extern "C" __global__ void argsort_merge(const McParams p, u64* __restrict__ keys,
                                         u32* __restrict__ pos) {
    const u32 logm = (u32)p.ext[0];
    const u64 k = p.ext[1];
    const u64 j = p.ext[2];
    const u64 half = (1ull << (logm - 1)) - 1;
    MC_FOR_EACH(g, p) {
        const u64 lane = g >> (logm - 1);
        const u64 t = g & half;
        const u64 i = ((t & ~(j - 1)) << 1) | (t & (j - 1));
        const u64 a = (lane << logm) + i;
        const u64 b = a + j;
        const u64 ka = keys[a], kb = keys[b];
        const u32 pa = pos[a], pb = pos[b];
        if (mc_sort_after(ka, pa, kb, pb) == ((i & k) == 0)) {
            keys[a] = kb;
            keys[b] = ka;
            pos[a] = pb;
            pos[b] = pa;
        }
    }
}

// ---- argsort_tile(p, u64* keys, u32* pos): the stages j < MC_SORT_TILE / 2 in shared memory.
// One block per tile of MC_SORT_TILE consecutive elements of the temporaries (the last one
// shorter; a tile holds whole lanes when m < MC_SORT_TILE, else a part of one lane), for
// k = ext[1], 2 ext[1], .., ext[2] and, for each, j = min(k, MC_SORT_TILE) / 2, .., 1.
// iteration = tiles (rank 1); ext[0] = log2(m), ext[3] = lanes * m. Any 1-D block size
// (the threads loop over the pairs); the loops around the barriers are uniform per block.
extern "C" __global__ void argsort_tile(const McParams p, u64* __restrict__ keys,
                                        u32* __restrict__ pos) {
    __shared__ u64 sk[MC_SORT_TILE];
    __shared__ u32 sp[MC_SORT_TILE];
    const u64 m = 1ull << (u32)p.ext[0];
    const u64 k_first = p.ext[1];
    const u64 k_last = p.ext[2];
    const u64 total = p.ext[3];
    for (u64 tile = blockIdx.x; tile < p.count; tile += gridDim.x) {
        const u64 base = tile * MC_SORT_TILE;
        const u32 len = (u32)min((u64)MC_SORT_TILE, total - base);
        for (u32 e = threadIdx.x; e < len; e += blockDim.x) {
            sk[e] = keys[base + e];
            sp[e] = pos[base + e];
        }
        __syncthreads();
        for (u64 k = k_first; k <= k_last; k <<= 1) {
            for (u32 j = (u32)(min(k, (u64)MC_SORT_TILE) >> 1); j > 0; j >>= 1) {
                for (u32 t = threadIdx.x; t < len / 2; t += blockDim.x) {
                    const u32 a = ((t & ~(j - 1)) << 1) | (t & (j - 1));
                    const u32 b = a + j;
                    const u64 i = (base + a) & (m - 1);  // lane-local
                    const u64 ka = sk[a], kb = sk[b];
                    const u32 pa = sp[a], pb = sp[b];
                    if (mc_sort_after(ka, pa, kb, pb) == ((i & k) == 0)) {
                        sk[a] = kb;
                        sk[b] = ka;
                        sp[a] = pb;
                        sp[b] = pa;
                    }
                }
                __syncthreads();
            }
        }
        for (u32 e = threadIdx.x; e < len; e += blockDim.x) {
            keys[base + e] = sk[e];
            pos[base + e] = sp[e];
        }
        __syncthreads();
    }
}
