// Batched matmul over arbitrary strides: operand 0 = lhs [m, k], 1 = rhs [k, n], 2 = out.
// Params: [0] batch count, [1] batch rank, [2] m, [3] n, [4] k; dims/strides of the batch
// dims in the shared layout; [52..58] row and column strides of lhs, rhs, out.
// Every variant accumulates in f32 and loops over whatever the grid does not cover, so any
// size fits a dispatch of at most 65535 workgroups per dimension.

fn mm_m() -> u32 { return pw(2u); }
fn mm_n() -> u32 { return pw(3u); }
fn mm_k() -> u32 { return pw(4u); }

// One output per invocation: the bench baseline.
@compute @workgroup_size(16, 16)
fn naive(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = mm_m();
    let n = mm_n();
    let kk = mm_k();
    for (var b = wid.z; b < pw(0u); b = b + nwg.z) {
        let base = offsets(b);
        for (var ty = wid.y; ty * 16u < m; ty = ty + nwg.y) {
            for (var tx = wid.x; tx * 16u < n; tx = tx + nwg.x) {
                let i = ty * 16u + lid.y;
                let j = tx * 16u + lid.x;
                if i < m && j < n {
                    // Four k per iteration: llvmpipe ends loops after 65535 iterations.
                    let ar = base.x + i * pw(52u);
                    let bc = base.y + j * pw(55u);
                    let acs = pw(53u);
                    let brs = pw(54u);
                    var acc = 0.0;
                    var k = 0u;
                    for (; k + 4u <= kk; k = k + 4u) {
                        acc = acc + ldf0(ar + k * acs) * ldf1(bc + k * brs);
                        acc = acc + ldf0(ar + (k + 1u) * acs) * ldf1(bc + (k + 1u) * brs);
                        acc = acc + ldf0(ar + (k + 2u) * acs) * ldf1(bc + (k + 2u) * brs);
                        acc = acc + ldf0(ar + (k + 3u) * acs) * ldf1(bc + (k + 3u) * brs);
                    }
                    for (; k < kk; k = k + 1u) {
                        acc = acc + ldf0(ar + k * acs) * ldf1(bc + k * brs);
                    }
                    stf2(base.z + i * pw(56u) + j * pw(57u), acc);
                }
            }
        }
    }
}

// Four columns of one rhs row: `bc` the columns' offsets, `bk` the row's.
fn mm_b4_scalar(bc: vec4<u32>, bk: u32) -> vec4<f32> {
    return vec4<f32>(ldf1(bc.x + bk), ldf1(bc.y + bk), ldf1(bc.z + bk), ldf1(bc.w + bk));
}

// The same four as one aligned vector load (rhs f32, unit column stride, aligned rows).
fn mm_b4_vector(bc: vec4<u32>, bk: u32) -> vec4<f32> {
    return {{B4_VECTOR}};
}

// Four consecutive k of one lhs row starting at element offset `at`.
fn mm_a4_scalar(at: u32) -> vec4<f32> {
    let cs = pw(53u);
    return vec4<f32>(ldf0(at), ldf0(at + cs), ldf0(at + 2u * cs), ldf0(at + 3u * cs));
}

fn mm_a4_vector(at: u32) -> vec4<f32> {
    return {{A4_VECTOR}};
}

fn mm_store4(i: u32, j0: u32, base: u32, acc: vec4<f32>) {
    let n = mm_n();
    let at = base + i * pw(56u) + j0 * pw(57u);
    let cs = pw(57u);
    stf2(at, acc.x);
    if j0 + 1u < n {
        stf2(at + cs, acc.y);
    }
    if j0 + 2u < n {
        stf2(at + 2u * cs, acc.z);
    }
    if j0 + 3u < n {
        stf2(at + 3u * cs, acc.w);
    }
}

// 4×4 outputs per invocation held in registers, no shared memory and no barriers: what a
// CPU driver (lavapipe) runs fastest on outputs too small for `blocked_wide` (below). A
// workgroup covers 32×32 outputs.
@compute @workgroup_size(8, 8)
fn blocked(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = mm_m();
    let n = mm_n();
    let kk = mm_k();
    let ars = pw(52u);
    let acs = pw(53u);
    let brs = pw(54u);
    let bcs = pw(55u);
    for (var b = wid.z; b < pw(0u); b = b + nwg.z) {
        let base = offsets(b);
        for (var ty = wid.y; ty * 32u < m; ty = ty + nwg.y) {
            for (var tx = wid.x; tx * 32u < n; tx = tx + nwg.x) {
                let i0 = ty * 32u + lid.y * 4u;
                let j0 = tx * 32u + lid.x * 4u;
                if i0 < m && j0 < n {
                    // Clamped rows and columns: loads stay in bounds, stores are guarded.
                    let r = min(vec4<u32>(i0, i0 + 1u, i0 + 2u, i0 + 3u), vec4<u32>(m - 1u));
                    let c = min(vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u), vec4<u32>(n - 1u));
                    let ar = vec4<u32>(base.x) + r * ars;
                    let bc = vec4<u32>(base.y) + c * bcs;
                    var acc0 = vec4<f32>(0.0);
                    var acc1 = vec4<f32>(0.0);
                    var acc2 = vec4<f32>(0.0);
                    var acc3 = vec4<f32>(0.0);
                    // Four steps of k at a time: a row of A as one vec4 (a vector load when
                    // lhs rows are contiguous and aligned), four rows of B as vec4s.
                    var k = 0u;
                    for (; k + 4u <= kk; k = k + 4u) {
                        let b0 = {{LOAD_B4}}(bc, k * brs);
                        let b1 = {{LOAD_B4}}(bc, (k + 1u) * brs);
                        let b2 = {{LOAD_B4}}(bc, (k + 2u) * brs);
                        let b3 = {{LOAD_B4}}(bc, (k + 3u) * brs);
                        let ak = k * acs;
                        let a0 = {{LOAD_A4}}(ar.x + ak);
                        let a1 = {{LOAD_A4}}(ar.y + ak);
                        let a2 = {{LOAD_A4}}(ar.z + ak);
                        let a3 = {{LOAD_A4}}(ar.w + ak);
                        acc0 = acc0 + a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
                        acc1 = acc1 + a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
                        acc2 = acc2 + a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
                        acc3 = acc3 + a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
                    }
                    for (; k < kk; k = k + 1u) {
                        let bv = mm_b4_scalar(bc, k * brs);
                        let ak = k * acs;
                        acc0 = acc0 + ldf0(ar.x + ak) * bv;
                        acc1 = acc1 + ldf0(ar.y + ak) * bv;
                        acc2 = acc2 + ldf0(ar.z + ak) * bv;
                        acc3 = acc3 + ldf0(ar.w + ak) * bv;
                    }
                    mm_store4(i0, j0, base.z, acc0);
                    if i0 + 1u < m {
                        mm_store4(i0 + 1u, j0, base.z, acc1);
                    }
                    if i0 + 2u < m {
                        mm_store4(i0 + 2u, j0, base.z, acc2);
                    }
                    if i0 + 3u < m {
                        mm_store4(i0 + 3u, j0, base.z, acc3);
                    }
                }
            }
        }
    }
}

// Sixteen lhs rows' or rhs columns' element offsets, four to a vector.
struct Offsets16 { c0: vec4<u32>, c1: vec4<u32>, c2: vec4<u32>, c3: vec4<u32> }

// Sixteen consecutive values of one rhs row.
struct Cols16 { c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32> }

// Four consecutive rhs rows of sixteen columns: four steps of k.
struct Rows4 { k0: Cols16, k1: Cols16, k2: Cols16, k3: Cols16 }

// Offsets of rows (or columns) `first`..first+15 at `stride`, clamped to `last` so that every
// load stays in bounds (the stores are guarded).
fn mm_offsets16(first: u32, last: u32, stride: u32, base: u32) -> Offsets16 {
    let step = vec4<u32>(0u, 1u, 2u, 3u);
    let f = vec4<u32>(first) + step;
    let l = vec4<u32>(last);
    let b = vec4<u32>(base);
    return Offsets16(
        b + min(f, l) * stride,
        b + min(f + 4u, l) * stride,
        b + min(f + 8u, l) * stride,
        b + min(f + 12u, l) * stride,
    );
}

fn mm_cols16(bc: Offsets16, bk: u32) -> Cols16 {
    return Cols16({{LOAD_B4}}(bc.c0, bk), {{LOAD_B4}}(bc.c1, bk), {{LOAD_B4}}(bc.c2, bk), {{LOAD_B4}}(bc.c3, bk));
}

// Row `r` of the 16×16 block += a · b.
fn mm_axpy16(acc: ptr<function, array<vec4<f32>, 64>>, r: u32, a: f32, b: Cols16) {
    let av = vec4<f32>(a);
    (*acc)[r * 4u] = fma(av, b.c0, (*acc)[r * 4u]);
    (*acc)[r * 4u + 1u] = fma(av, b.c1, (*acc)[r * 4u + 1u]);
    (*acc)[r * 4u + 2u] = fma(av, b.c2, (*acc)[r * 4u + 2u]);
    (*acc)[r * 4u + 3u] = fma(av, b.c3, (*acc)[r * 4u + 3u]);
}

// Rows r..r+3 of the block, one step of k: `a` holds their lhs values.
fn mm_axpy64(acc: ptr<function, array<vec4<f32>, 64>>, r: u32, a: vec4<f32>, b: Cols16) {
    mm_axpy16(acc, r, a.x, b);
    mm_axpy16(acc, r + 1u, a.y, b);
    mm_axpy16(acc, r + 2u, a.z, b);
    mm_axpy16(acc, r + 3u, a.w, b);
}

// Rows r..r+3 of the block over four steps of k; `at` holds the rows' lhs offsets at the
// first of them.
fn mm_wide_rows(acc: ptr<function, array<vec4<f32>, 64>>, r: u32, at: vec4<u32>, b: Rows4) {
    let a0 = {{LOAD_A4}}(at.x);
    let a1 = {{LOAD_A4}}(at.y);
    let a2 = {{LOAD_A4}}(at.z);
    let a3 = {{LOAD_A4}}(at.w);
    mm_axpy64(acc, r, vec4<f32>(a0.x, a1.x, a2.x, a3.x), b.k0);
    mm_axpy64(acc, r, vec4<f32>(a0.y, a1.y, a2.y, a3.y), b.k1);
    mm_axpy64(acc, r, vec4<f32>(a0.z, a1.z, a2.z, a3.z), b.k2);
    mm_axpy64(acc, r, vec4<f32>(a0.w, a1.w, a2.w, a3.w), b.k3);
}

fn mm_lhs4(at: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(ldf0(at.x), ldf0(at.y), ldf0(at.z), ldf0(at.w));
}

// Row `x` of the block at (i, j), as far as it lies inside the output.
fn mm_wide_store(i: u32, j: u32, base: u32, acc: ptr<function, array<vec4<f32>, 64>>, x: u32) {
    let n = mm_n();
    if i + x < mm_m() {
        mm_store4(i + x, j, base, (*acc)[x * 4u]);
        if j + 4u < n {
            mm_store4(i + x, j + 4u, base, (*acc)[x * 4u + 1u]);
        }
        if j + 8u < n {
            mm_store4(i + x, j + 8u, base, (*acc)[x * 4u + 2u]);
        }
        if j + 12u < n {
            mm_store4(i + x, j + 12u, base, (*acc)[x * 4u + 3u]);
        }
    }
}

// Rows x..x+3 of the block.
fn mm_wide_store4(i: u32, j: u32, base: u32, acc: ptr<function, array<vec4<f32>, 64>>, x: u32) {
    mm_wide_store(i, j, base, acc, x);
    mm_wide_store(i, j, base, acc, x + 1u);
    mm_wide_store(i, j, base, acc, x + 2u);
    mm_wide_store(i, j, base, acc, x + 3u);
}

// 16×16 outputs per invocation held in registers, a workgroup covering 128×128: per step
// of k an invocation loads 32 values for 256 products, against 8 for 16 in `blocked`. On a
// CPU driver every load an invocation makes is a scalar load per lane, so this ratio is
// what counts (lavapipe, 1024³: 8.2 → 29 GFLOP/s); it needs outputs of at least a few
// 128×128 blocks to fill the device, so small products keep `blocked`.
@compute @workgroup_size(8, 8)
fn blocked_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = mm_m();
    let n = mm_n();
    let kk = mm_k();
    let acs = pw(53u);
    let brs = pw(54u);
    for (var b = wid.z; b < pw(0u); b = b + nwg.z) {
        let base = offsets(b);
        for (var ty = wid.y; ty * 128u < m; ty = ty + nwg.y) {
            for (var tx = wid.x; tx * 128u < n; tx = tx + nwg.x) {
                let i0 = ty * 128u + lid.y * 16u;
                let j0 = tx * 128u + lid.x * 16u;
                if i0 < m && j0 < n {
                    let ar = mm_offsets16(i0, m - 1u, pw(52u), base.x);
                    let bc = mm_offsets16(j0, n - 1u, pw(55u), base.y);
                    var acc = array<vec4<f32>, 64>();
                    var k = 0u;
                    for (; k + 4u <= kk; k = k + 4u) {
                        let bk = k * brs;
                        let rows = Rows4(
                            mm_cols16(bc, bk),
                            mm_cols16(bc, bk + brs),
                            mm_cols16(bc, bk + 2u * brs),
                            mm_cols16(bc, bk + 3u * brs),
                        );
                        let ak = vec4<u32>(k * acs);
                        mm_wide_rows(&acc, 0u, ar.c0 + ak, rows);
                        mm_wide_rows(&acc, 4u, ar.c1 + ak, rows);
                        mm_wide_rows(&acc, 8u, ar.c2 + ak, rows);
                        mm_wide_rows(&acc, 12u, ar.c3 + ak, rows);
                    }
                    for (; k < kk; k = k + 1u) {
                        let cols = mm_cols16(bc, k * brs);
                        let ak = vec4<u32>(k * acs);
                        mm_axpy64(&acc, 0u, mm_lhs4(ar.c0 + ak), cols);
                        mm_axpy64(&acc, 4u, mm_lhs4(ar.c1 + ak), cols);
                        mm_axpy64(&acc, 8u, mm_lhs4(ar.c2 + ak), cols);
                        mm_axpy64(&acc, 12u, mm_lhs4(ar.c3 + ak), cols);
                    }
                    mm_wide_store4(i0, j0, base.z, &acc, 0u);
                    mm_wide_store4(i0, j0, base.z, &acc, 4u);
                    mm_wide_store4(i0, j0, base.z, &acc, 8u);
                    mm_wide_store4(i0, j0, base.z, &acc, 12u);
                }
            }
        }
    }
}

// The staged tiles, four lanes to an entry so that one workgroup load feeds four products:
// `tile_a[q * 32 + r]` holds rows 4r..4r+3 of the 128×8 A tile at its step q of k, and
// `tile_b[q * 64 + c]` columns 4c..4c+3 of the 8×256 B tile's row q.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 512>;

// Four consecutive k of lhs row `i` from `k0` (a multiple of 4), zero past m and k.
fn mm_tile_a4(base: u32, i: u32, k0: u32) -> vec4<f32> {
    let kk = mm_k();
    if i >= mm_m() || k0 >= kk {
        return vec4<f32>(0.0);
    }
    let at = base + i * pw(52u) + k0 * pw(53u);
    if k0 + 4u <= kk {
        return {{TILE_A4}}(at);
    }
    let cs = pw(53u);
    var v = vec4<f32>(ldf0(at), 0.0, 0.0, 0.0);
    if k0 + 1u < kk {
        v.y = ldf0(at + cs);
    }
    if k0 + 2u < kk {
        v.z = ldf0(at + 2u * cs);
    }
    return v;
}

// Columns j..j+3 (j a multiple of 4) of rhs row `k`, zero past k and n.
fn mm_tile_b4(base: u32, k: u32, j: u32) -> vec4<f32> {
    let n = mm_n();
    if k >= mm_k() || j >= n {
        return vec4<f32>(0.0);
    }
    let cols = vec4<u32>(j, j + 1u, j + 2u, j + 3u);
    let bk = k * pw(54u);
    if j + 4u <= n {
        return {{TILE_B4}}(vec4<u32>(base) + cols * pw(55u), bk);
    }
    let v = mm_b4_scalar(vec4<u32>(base) + min(cols, vec4<u32>(n - 1u)) * pw(55u), bk);
    return select(vec4<f32>(0.0), v, cols < vec4<u32>(n));
}

// Entry `e` of the tiles at (i0, j0, k0) as the staging order counts them, bounds tested:
// four k of A row `e / 2`, and four columns of B row `e / 64` (twice: e and e + 256).
fn tile_loads_checked(e: u32, i0: u32, j0: u32, k0: u32, base: vec4<u32>) -> array<vec4<f32>, 3> {
    return array<vec4<f32>, 3>(
        mm_tile_a4(base.x, i0 + (e >> 1u), k0 + (e & 1u) * 4u),
        mm_tile_b4(base.y, k0 + (e >> 6u), j0 + (e & 63u) * 4u),
        mm_tile_b4(base.y, k0 + 4u + (e >> 6u), j0 + (e & 63u) * 4u),
    );
}

// The same for a product made of whole tiles with vector-loadable operands (the lowering
// checks): no tests. On a CPU driver both sides of a branch cost, so this is a separate
// function the lowering picks, not a branch.
fn tile_loads_whole(e: u32, i0: u32, j0: u32, k0: u32, base: vec4<u32>) -> array<vec4<f32>, 3> {
    let j = j0 + (e & 63u) * 4u;
    let cols = vec4<u32>(base.y) + vec4<u32>(j, j + 1u, j + 2u, j + 3u) * pw(55u);
    let bk = (k0 + (e >> 6u)) * pw(54u);
    return array<vec4<f32>, 3>(
        {{TILE_A4}}(base.x + (i0 + (e >> 1u)) * pw(52u) + (k0 + (e & 1u) * 4u) * pw(53u)),
        {{TILE_B4}}(cols, bk),
        {{TILE_B4}}(cols, bk + 4u * pw(54u)),
    );
}

// Staging both tiles: invocation `t` (of 256) stores what its loads brought.
fn tile_fill(t: u32, i0: u32, j0: u32, k0: u32, base: vec4<u32>) {
    let v = {{TILE_LOADS}}(t, i0, j0, k0, base);
    let r = t >> 1u;
    let at = (t & 1u) * 128u + (r >> 2u);
    let lane = r & 3u;
    tile_a[at][lane] = v[0].x;
    tile_a[at + 32u][lane] = v[0].y;
    tile_a[at + 64u][lane] = v[0].z;
    tile_a[at + 96u][lane] = v[0].w;
    tile_b[t] = v[1];
    tile_b[t + 256u] = v[2];
}

// Row `r` of an invocation's 8×16 outputs += a · b.
fn tile_axpy(acc: ptr<function, array<vec4<f32>, 32>>, r: u32, a: f32, b: Cols16) {
    let av = vec4<f32>(a);
    (*acc)[r * 4u] = fma(av, b.c0, (*acc)[r * 4u]);
    (*acc)[r * 4u + 1u] = fma(av, b.c1, (*acc)[r * 4u + 1u]);
    (*acc)[r * 4u + 2u] = fma(av, b.c2, (*acc)[r * 4u + 2u]);
    (*acc)[r * 4u + 3u] = fma(av, b.c3, (*acc)[r * 4u + 3u]);
}

// Step `q` of k inside the staged tiles for the 8×16 outputs of invocation `l`: six
// workgroup loads for 128 products.
fn tile_step(q: u32, l: vec2<u32>, acc: ptr<function, array<vec4<f32>, 32>>) {
    let a0 = tile_a[q * 32u + l.y * 2u];
    let a1 = tile_a[q * 32u + l.y * 2u + 1u];
    let bq = q * 64u + l.x * 4u;
    let b = Cols16(tile_b[bq], tile_b[bq + 1u], tile_b[bq + 2u], tile_b[bq + 3u]);
    tile_axpy(acc, 0u, a0.x, b);
    tile_axpy(acc, 1u, a0.y, b);
    tile_axpy(acc, 2u, a0.z, b);
    tile_axpy(acc, 3u, a0.w, b);
    tile_axpy(acc, 4u, a1.x, b);
    tile_axpy(acc, 5u, a1.y, b);
    tile_axpy(acc, 6u, a1.z, b);
    tile_axpy(acc, 7u, a1.w, b);
}

// Row `r` of the 8×16 outputs at (i, j), as far as it lies inside the output.
fn tile_store(i: u32, j: u32, base: u32, acc: ptr<function, array<vec4<f32>, 32>>, r: u32) {
    let n = mm_n();
    if i + r < mm_m() && j < n {
        mm_store4(i + r, j, base, (*acc)[r * 4u]);
        if j + 4u < n {
            mm_store4(i + r, j + 4u, base, (*acc)[r * 4u + 1u]);
        }
        if j + 8u < n {
            mm_store4(i + r, j + 8u, base, (*acc)[r * 4u + 2u]);
        }
        if j + 12u < n {
            mm_store4(i + r, j + 12u, base, (*acc)[r * 4u + 3u]);
        }
    }
}

// 128×256 outputs per workgroup of 16×16 invocations, 8×16 per invocation, both operands
// staged in workgroup memory 8 steps of k at a time between barriers: each element is
// read from memory once per workgroup instead of 128 or 256 times. A GPU SGEMM's shape
// (CUTLASS's largest SIMT tiles); for real GPUs, where barriers are cheap.
@compute @workgroup_size(16, 16)
fn tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = mm_m();
    let n = mm_n();
    let kk = mm_k();
    let t = lid.y * 16u + lid.x;
    // One loop over (batch, tile row, tile column): each loop level costs on CPU drivers.
    let tiles_x = (n + 255u) / 256u;
    let tiles = tiles_x * ((m + 127u) / 128u);
    let groups = nwg.x * nwg.y * nwg.z;
    for (var g = wid.x + nwg.x * (wid.y + nwg.y * wid.z); g < tiles * pw(0u); g = g + groups) {
        let base = offsets(g / tiles);
        let i0 = (g % tiles) / tiles_x * 128u;
        let j0 = g % tiles_x * 256u;
        var acc = array<vec4<f32>, 32>();
        for (var k0 = 0u; k0 < kk; k0 = k0 + 8u) {
            tile_fill(t, i0, j0, k0, base);
            workgroupBarrier();
            // Straight-line code, no inner loops: llvmpipe caps the iterations a shader
            // runs in nested loops, which a long k would exceed.
            tile_step(0u, lid.xy, &acc);
            tile_step(1u, lid.xy, &acc);
            tile_step(2u, lid.xy, &acc);
            tile_step(3u, lid.xy, &acc);
            tile_step(4u, lid.xy, &acc);
            tile_step(5u, lid.xy, &acc);
            tile_step(6u, lid.xy, &acc);
            tile_step(7u, lid.xy, &acc);
            workgroupBarrier();
        }
        let i = i0 + lid.y * 8u;
        let j = j0 + lid.x * 16u;
        tile_store(i, j, base.z, &acc, 0u);
        tile_store(i, j, base.z, &acc, 1u);
        tile_store(i, j, base.z, &acc, 2u);
        tile_store(i, j, base.z, &acc, 3u);
        tile_store(i, j, base.z, &acc, 4u);
        tile_store(i, j, base.z, &acc, 5u);
        tile_store(i, j, base.z, &acc, 6u);
        tile_store(i, j, base.z, &acc, 7u);
    }
}
