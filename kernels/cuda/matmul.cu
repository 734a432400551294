// Batched matmul fallback: matmul_tiled_<f32|f16|bf16>(p, const T* lhs, const T* rhs, T* out).
// (common.cuh is prepended by the host; see README.md.)
//
// cuBLAS does the real GEMMs; this covers the layouts it cannot express (arbitrary strides
// on every dim, broadcast batches with stride 0, a zero-size k). out[b, i, j] =
// Σ_k lhs[b, i, k] · rhs[b, k, j], accumulated in f32 and rounded once (the CPU backend
// stages f16/bf16 through f32 the same way). k = 0 writes zeros.
//
// Work item = one batch: iteration over the batch dims, operands [0] lhs, [1] rhs, [2] out
// (their batch strides); ext[0..3] = m, n, k; ext[3], ext[4] = lhs strides along m, k;
// ext[5], ext[6] = rhs strides along k, n; ext[7], ext[8] = out strides along m, n.
//
// Launch with blockDim = (16, 16, 1). Grid: x over n tiles, y over m tiles, z over batches;
// each is a grid-stride loop, so any grid (up to 65535 in y and z) covers every output.

#define MC_TILE 16

template <typename T>
__device__ __forceinline__ void mc_matmul_tiled(const McParams& p, const T* __restrict__ a,
                                                const T* __restrict__ b, T* __restrict__ c) {
    // +1 column: a column read of the tile hits 16 different banks.
    __shared__ float as[MC_TILE][MC_TILE + 1];
    __shared__ float bs[MC_TILE][MC_TILE + 1];
    const u64 m = p.ext[0];
    const u64 n = p.ext[1];
    const u64 k = p.ext[2];
    const u64 sam = p.ext[3], sak = p.ext[4];
    const u64 sbk = p.ext[5], sbn = p.ext[6];
    const u64 scm = p.ext[7], scn = p.ext[8];
    const u32 tx = threadIdx.x;
    const u32 ty = threadIdx.y;
    // Every loop bound below is uniform over the block, so all threads reach each barrier.
    for (u64 batch = blockIdx.z; batch < p.count; batch += gridDim.z) {
        McOffsets<3> o = mc_offsets<3>(p, batch);
        for (u64 m0 = (u64)blockIdx.y * MC_TILE; m0 < m; m0 += (u64)gridDim.y * MC_TILE) {
            for (u64 n0 = (u64)blockIdx.x * MC_TILE; n0 < n; n0 += (u64)gridDim.x * MC_TILE) {
                const u64 row = m0 + ty;
                const u64 col = n0 + tx;
                float acc = 0.0f;
                for (u64 k0 = 0; k0 < k; k0 += MC_TILE) {
                    const u64 ka = k0 + tx;
                    const u64 kb = k0 + ty;
                    as[ty][tx] = row < m && ka < k ? mc_ld(a, o.o[0] + row * sam + ka * sak) : 0.0f;
                    bs[ty][tx] = kb < k && col < n ? mc_ld(b, o.o[1] + kb * sbk + col * sbn) : 0.0f;
                    __syncthreads();
#pragma unroll
                    for (int kk = 0; kk < MC_TILE; ++kk) {
                        acc += as[ty][kk] * bs[kk][tx];
                    }
                    __syncthreads();
                }
                if (row < m && col < n) {
                    mc_st(c, o.o[2] + row * scm + col * scn, acc);
                }
            }
        }
    }
}

#define MC_MATMUL_KERNEL(T, tn)                                                             \
    extern "C" __global__ void __launch_bounds__(MC_TILE * MC_TILE)                         \
        matmul_tiled_##tn(const McParams p, const T* __restrict__ lhs,                      \
                          const T* __restrict__ rhs, T* __restrict__ out) {                 \
        mc_matmul_tiled(p, lhs, rhs, out);                                                  \
    }
MC_FLOATS(MC_MATMUL_KERNEL)
