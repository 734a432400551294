// ArgSort (`Op::ArgSort`): a bitonic network over each lane padded to a power of two `m`,
// every lane at once. Two temporaries hold, per padded element, its u32 sort key and its
// position along the axis; the pairs (key, position) are sorted ascending, lexicographically,
// so ties keep their order. `keys` builds them; the bitonic stages whose partners lie less
// than a tile (512 elements) apart run in workgroup memory (`tile`, many stages a dispatch),
// the others one `stage` dispatch per (k, j) over every lane; `write` stores the first n
// positions of each lane. A kernel is the one section with its entry point (sort.rs picks
// it); only `keys` depends on the dtype.

//# keys
// One invocation per padded element: operand 0 the input, 1 the keys, 2 the positions (both
// contiguous, lane after lane, `m` each). The iteration space is the lanes then the padded
// axis, so `g` is the element's place in the temporaries and `o.x` its input element.
// [2] m - 1, [3] n (the axis length), [4] 0 ascending or 0xffffffff descending (the key's
// complement: NaN first). Padding gets the largest key and a position >= n: it sorts last.

// The order of floats as unsigned integers: `b` holds the value's bits with its sign at bit
// 31 (16-bit floats shifted up), `inf` the infinity's bits placed alike. −0 is +0; every NaN
// is the largest key.
fn float_key(b: u32, inf: u32) -> u32 {
    let a = b & 0x7fffffffu;
    if a > inf {
        return 0xffffffffu;
    }
    if a == 0u {
        return 0x80000000u;
    }
    return select(b + 0x80000000u, ~b, b >= 0x80000000u);
}

// The key of an element's bits, by dtype (sort.rs).
fn key_of(b: u32) -> u32 {
    {{KEY}}
}

@compute @workgroup_size(256)
fn keys(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let i = g & pw(2u);
    var key = 0xffffffffu;
    if i < pw(3u) {
        key = key_of(ld0(offsets(g).x)) ^ pw(4u);
    }
    st1(g, key);
    st2(g, i);
}

//# stage
// One bitonic stage over every lane: one invocation per compare-exchange pair (m / 2 per
// lane). Operand 0 the keys, 1 the positions. [2] log2(m) - 1, [3] j (the partner's
// distance), [4] k (the length of the sequences being merged: a pair sorts ascending where
// its in-lane index has bit k clear).
@compute @workgroup_size(256)
fn stage(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_id(gid, nwg, 256u);
    if t >= pw(0u) {
        return;
    }
    let hs = pw(2u);
    let j = pw(3u);
    let q = t & ((1u << hs) - 1u);
    let i = ((q & ~(j - 1u)) << 1u) | (q & (j - 1u));
    let a = ((t >> hs) << (hs + 1u)) + i;
    let b = a + j;
    let ka = ld0(a);
    let kb = ld0(b);
    let pa = ld1(a);
    let pb = ld1(b);
    let greater = ka > kb || (ka == kb && pa > pb);
    if greater == ((i & pw(4u)) == 0u) {
        st0(a, kb);
        st0(b, ka);
        st1(a, pb);
        st1(b, pa);
    }
}

//# tile
// Every bitonic stage with partners less than 512 apart, for k from [2] to [3] (j from [4]
// for the first k, from k / 2 for the others, down to 1), in workgroup memory: a workgroup
// owns a tile of 512 consecutive padded elements (whole lanes, or a 512th of one: m and 512
// are powers of two). Operand 0 the keys, 1 the positions. [0] the padded element count,
// [5] m - 1. Elements past the end (a last tile of short lanes) sort as padding among
// themselves and are not stored.
var<workgroup> tk: array<u32, 512>;
var<workgroup> tp: array<u32, 512>;

@compute @workgroup_size(256)
fn tile(@builtin(local_invocation_index) lt: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = (wid.x + wid.y * nwg.x) * 512u;
    let total = pw(0u);
    for (var h = 0u; h < 512u; h = h + 256u) {
        let e = lt + h;
        if base + e < total {
            tk[e] = ld0(base + e);
            tp[e] = ld1(base + e);
        } else {
            tk[e] = 0xffffffffu;
            tp[e] = 0xffffffffu;
        }
    }
    var k = pw(2u);
    var j = pw(4u);
    loop {
        if k > pw(3u) {
            break;
        }
        loop {
            if j == 0u {
                break;
            }
            workgroupBarrier();
            let a = ((lt & ~(j - 1u)) << 1u) | (lt & (j - 1u));
            let b = a + j;
            let ka = tk[a];
            let kb = tk[b];
            let pa = tp[a];
            let pb = tp[b];
            let greater = ka > kb || (ka == kb && pa > pb);
            if greater == ((((base + a) & pw(5u)) & k) == 0u) {
                tk[a] = kb;
                tk[b] = ka;
                tp[a] = pb;
                tp[b] = pa;
            }
            j = j >> 1u;
        }
        k = k << 1u;
        j = k >> 1u;
    }
    workgroupBarrier();
    for (var h = 0u; h < 512u; h = h + 256u) {
        let e = lt + h;
        if base + e < total {
            st0(base + e, tk[e]);
            st1(base + e, tp[e]);
        }
    }
}

//# write
// One invocation per output element: operand 0 the sorted positions (read at `o.x`), 1 the
// output (`o.y`), over the lanes then the first n places of each.
@compute @workgroup_size(256)
fn write(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let o = offsets(g);
    st1(o.y, ld0(o.x));
}
