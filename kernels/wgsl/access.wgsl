// How a kernel reaches operand {{K}}: `ld{{K}}`/`st{{K}}` move the raw element bits (zero-extended
// to u32), `ldf{{K}}`/`stf{{K}}` convert to and from f32. 16- and 8-bit elements live packed in
// u32 words; a writable packed buffer is atomic so that invocations storing neighbouring
// elements of one word never race (each clears and sets only its own bits).

//# w32_ro
@group(0) @binding({{K}}) var<storage, read> b{{K}}: array<u32>;
fn ld{{K}}(i: u32) -> u32 {
    return b{{K}}[i];
}

//# w32_v4_ro
@group(0) @binding({{K}}) var<storage, read> b{{K}}: array<vec4<u32>>;
fn ld{{K}}(i: u32) -> u32 {
    return b{{K}}[i >> 2u][i & 3u];
}

//# w32_v4c_ro
// One aligned `vec4` per invocation (the `flat4` kernel): its `main` loads the invocation's
// four words into `c{{K}}` once; `ld{{K}}` picks an element's word from them.
@group(0) @binding({{K}}) var<storage, read> b{{K}}: array<vec4<u32>>;
var<private> c{{K}}: vec4<u32>;
fn ld{{K}}(i: u32) -> u32 {
    return c{{K}}[i & 3u];
}

//# w32_v4_rw
@group(0) @binding({{K}}) var<storage, read_write> b{{K}}: array<vec4<u32>>;
fn ld{{K}}(i: u32) -> u32 {
    return b{{K}}[i >> 2u][i & 3u];
}
fn st{{K}}(i: u32, v: u32) {
    b{{K}}[i >> 2u][i & 3u] = v;
}

//# w32_rw
@group(0) @binding({{K}}) var<storage, read_write> b{{K}}: array<u32>;
fn ld{{K}}(i: u32) -> u32 {
    return b{{K}}[i];
}
fn st{{K}}(i: u32, v: u32) {
    b{{K}}[i] = v;
}

//# h16_ro
@group(0) @binding({{K}}) var<storage, read> b{{K}}: array<u32>;
fn ld{{K}}(i: u32) -> u32 {
    return (b{{K}}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

//# h16_rw
@group(0) @binding({{K}}) var<storage, read_write> b{{K}}: array<atomic<u32>>;
fn ld{{K}}(i: u32) -> u32 {
    return (atomicLoad(&b{{K}}[i >> 1u]) >> ((i & 1u) * 16u)) & 0xffffu;
}
fn st{{K}}(i: u32, v: u32) {
    let s = (i & 1u) * 16u;
    atomicAnd(&b{{K}}[i >> 1u], ~(0xffffu << s));
    atomicOr(&b{{K}}[i >> 1u], (v & 0xffffu) << s);
}

//# b8_ro
@group(0) @binding({{K}}) var<storage, read> b{{K}}: array<u32>;
fn ld{{K}}(i: u32) -> u32 {
    return (b{{K}}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

//# b8_rw
@group(0) @binding({{K}}) var<storage, read_write> b{{K}}: array<atomic<u32>>;
fn ld{{K}}(i: u32) -> u32 {
    return (atomicLoad(&b{{K}}[i >> 2u]) >> ((i & 3u) * 8u)) & 0xffu;
}
fn st{{K}}(i: u32, v: u32) {
    let s = (i & 3u) * 8u;
    atomicAnd(&b{{K}}[i >> 2u], ~(0xffu << s));
    atomicOr(&b{{K}}[i >> 2u], (v & 0xffu) << s);
}

//# words_rw
// A packed output written a whole word at a time by its owner (see elementwise `words`).
@group(0) @binding({{K}}) var<storage, read_write> b{{K}}: array<u32>;

//# load_f32
fn ldf{{K}}(i: u32) -> f32 {
    return {{TO_F32}}(ld{{K}}(i));
}

//# store_f32
fn stf{{K}}(i: u32, v: f32) {
    st{{K}}(i, {{FROM_F32}}(v));
}

//# status
// Word 0: bit 0 set when an unsigned index value was out of range, bit 1 when a signed one
// was; word 1: the largest such unsigned value; word 2: the largest such signed value, its
// bits plus 2^31 (unsigned order is then signed order); word 3: the longest axis a bad value
// was checked against. (`manychips_wgsl::bad_index` reads them.)
@group(0) @binding({{K}}) var<storage, read_write> status: array<atomic<u32>>;
fn flag_index(v: u32, len: u32) {
    atomicOr(&status[0], 1u);
    atomicMax(&status[1], v);
    atomicMax(&status[3], len);
}
fn flag_signed_index(v: u32, len: u32) {
    atomicOr(&status[0], 2u);
    atomicMax(&status[2], v ^ 0x80000000u);
    atomicMax(&status[3], len);
}
