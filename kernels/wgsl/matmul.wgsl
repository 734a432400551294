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
// CPU driver (lavapipe) runs fastest. A workgroup covers 32×32 outputs.
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

// The staged tiles, four lanes to an entry so that one workgroup load feeds four products:
// `tile_a[q * 16 + r]` holds rows 4r..4r+3 of the A tile at its step q of k, and
// `tile_b[q * 16 + c]` columns 4c..4c+3 of the B tile's row q.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

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

// Part `p` of 4 of staging the 64×16 A tile and the 16×64 B tile at (i0, j0, k0):
// invocation `t` (of 64) loads four k of A row `t / 4 + 16p` and columns of one B row, each
// a vector load where the layout allows.
fn tile_fill(t: u32, p: u32, i0: u32, j0: u32, k0: u32, base: vec4<u32>) {
    let kq = (t & 3u) * 4u;
    let r = (t >> 2u) + p * 16u;
    let a = mm_tile_a4(base.x, i0 + r, k0 + kq);
    let at = kq * 16u + (r >> 2u);
    let lane = r & 3u;
    tile_a[at][lane] = a.x;
    tile_a[at + 16u][lane] = a.y;
    tile_a[at + 32u][lane] = a.z;
    tile_a[at + 48u][lane] = a.w;
    let e = t + p * 64u;
    tile_b[e] = mm_tile_b4(base.y, k0 + (e >> 4u), j0 + (e & 15u) * 4u);
}

// Step `q` of k inside the staged tiles for the 8×8 outputs of invocation `l`: four
// workgroup loads for 64 products.
fn tile_step(q: u32, l: vec2<u32>, acc: ptr<function, array<vec4<f32>, 16>>) {
    let a0 = tile_a[q * 16u + l.y * 2u];
    let a1 = tile_a[q * 16u + l.y * 2u + 1u];
    let b0 = tile_b[q * 16u + l.x * 2u];
    let b1 = tile_b[q * 16u + l.x * 2u + 1u];
    (*acc)[0] = (*acc)[0] + a0.x * b0;
    (*acc)[1] = (*acc)[1] + a0.x * b1;
    (*acc)[2] = (*acc)[2] + a0.y * b0;
    (*acc)[3] = (*acc)[3] + a0.y * b1;
    (*acc)[4] = (*acc)[4] + a0.z * b0;
    (*acc)[5] = (*acc)[5] + a0.z * b1;
    (*acc)[6] = (*acc)[6] + a0.w * b0;
    (*acc)[7] = (*acc)[7] + a0.w * b1;
    (*acc)[8] = (*acc)[8] + a1.x * b0;
    (*acc)[9] = (*acc)[9] + a1.x * b1;
    (*acc)[10] = (*acc)[10] + a1.y * b0;
    (*acc)[11] = (*acc)[11] + a1.y * b1;
    (*acc)[12] = (*acc)[12] + a1.z * b0;
    (*acc)[13] = (*acc)[13] + a1.z * b1;
    (*acc)[14] = (*acc)[14] + a1.w * b0;
    (*acc)[15] = (*acc)[15] + a1.w * b1;
}

// Row `r` of the 8×8 outputs at (i, j), as far as they lie inside the output.
fn tile_store(i: u32, j: u32, base: u32, acc: ptr<function, array<vec4<f32>, 16>>, r: u32) {
    if i + r < mm_m() {
        if j < mm_n() {
            mm_store4(i + r, j, base, (*acc)[2u * r]);
        }
        if j + 4u < mm_n() {
            mm_store4(i + r, j + 4u, base, (*acc)[2u * r + 1u]);
        }
    }
}

// 64×64 outputs per workgroup, 8×8 per invocation, both operands staged in workgroup memory
// 16 steps of k at a time between barriers: each element is read from memory once per
// workgroup instead of 64 times. For real GPUs (barriers are dear on CPU drivers).
@compute @workgroup_size(8, 8)
fn tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = mm_m();
    let n = mm_n();
    let kk = mm_k();
    let t = lid.y * 8u + lid.x;
    for (var b = wid.z; b < pw(0u); b = b + nwg.z) {
        let base = offsets(b);
        for (var ty = wid.y; ty * 64u < m; ty = ty + nwg.y) {
            for (var tx = wid.x; tx * 64u < n; tx = tx + nwg.x) {
                let i0 = ty * 64u;
                let j0 = tx * 64u;
                var acc = array<vec4<f32>, 16>();
                for (var k0 = 0u; k0 < kk; k0 = k0 + 16u) {
                    tile_fill(t, 0u, i0, j0, k0, base);
                    tile_fill(t, 1u, i0, j0, k0, base);
                    tile_fill(t, 2u, i0, j0, k0, base);
                    tile_fill(t, 3u, i0, j0, k0, base);
                    workgroupBarrier();
                    // Straight-line code, no inner loops: llvmpipe caps the iterations a
                    // shader runs in nested loops, which a long k would exceed.
                    tile_step(0u, lid.xy, &acc);
                    tile_step(1u, lid.xy, &acc);
                    tile_step(2u, lid.xy, &acc);
                    tile_step(3u, lid.xy, &acc);
                    tile_step(4u, lid.xy, &acc);
                    tile_step(5u, lid.xy, &acc);
                    tile_step(6u, lid.xy, &acc);
                    tile_step(7u, lid.xy, &acc);
                    tile_step(8u, lid.xy, &acc);
                    tile_step(9u, lid.xy, &acc);
                    tile_step(10u, lid.xy, &acc);
                    tile_step(11u, lid.xy, &acc);
                    tile_step(12u, lid.xy, &acc);
                    tile_step(13u, lid.xy, &acc);
                    tile_step(14u, lid.xy, &acc);
                    tile_step(15u, lid.xy, &acc);
                    workgroupBarrier();
                }
                let i = i0 + lid.y * 8u;
                let j = j0 + lid.x * 8u;
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
    }
}
