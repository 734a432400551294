// Every elementwise op (binary, compare, unary, affine, cast, copy, where, fill): `value`
// ({{VALUE}}) computes the bits of one output element from the operand offsets `o`.
// Scalars: [2] invocations (section `flat`); [3] and [4] op constants (affine mul/add, fill
// bits); [5] elements per output word and [6] the output's element offset (section
// `words`); [7] which operands advance with the element (section `flat`, bit k: operand k);
// [52..55] per input, the period of one that repeats a dense block (section `flat`, 0: none).

fn out_bits(v: f32) -> u32 {
    return {{FROM_F32}}(v);
}

fn value(o: vec4<u32>) -> u32 {
    {{VALUE}}
}

//# elements
// One invocation per output element, stored through the output's access functions.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let o = offsets(g);
    st{{OUT}}(o.{{OUT_C}}, value(o));
}

//# flat
// Every operand contiguous in the output's order, one broadcast element, or a dense block
// repeated along the leading dims (a bias row), the output 32-bit: an operand's offset is its
// first element's plus the element index, plus nothing, or plus the index modulo the block's
// size, with no more than that one division per element. Each invocation takes 4 elements,
// [2] (the invocation count) apart, so neighbouring invocations still touch neighbouring words.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = linear_id(gid, nwg, 256u);
    let n = pw(0u);
    let apart = pw(2u);
    if first >= apart {
        return;
    }
    let m = pw(7u);
    let step = vec4<u32>(m & 1u, (m >> 1u) & 1u, (m >> 2u) & 1u, (m >> 3u) & 1u);
    let base = vec4<u32>(pw(16u), pw(25u), pw(34u), pw(43u));
    for (var j = 0u; j < 4u; j = j + 1u) {
        let g = first + j * apart;
        if g >= n {
            return;
        }
        // {{AT}}: each operand's element index; the modulo only in kernels with a period.
        {{AT}}
        let o = base + step * at;
        st{{OUT}}(o.{{OUT_C}}, value(o));
    }
}

//# flat4
// The `flat` kernel's case where every operand that advances is 32-bit, starts on a multiple
// of 4 elements and has no period, and the element count is a multiple of 4: each
// invocation takes one aligned `vec4` of every such operand ({{LOAD4}} loads them once) and
// stores one `vec4` of output. [2] is the invocation count (elements / 4).
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = linear_id(gid, nwg, 256u);
    if q >= pw(2u) {
        return;
    }
    let m = pw(7u);
    let step = vec4<u32>(m & 1u, (m >> 1u) & 1u, (m >> 2u) & 1u, (m >> 3u) & 1u);
    let base = vec4<u32>(pw(16u), pw(25u), pw(34u), pw(43u));
    {{LOAD4}}
    var v: vec4<u32>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        v[j] = value(base + step * vec4<u32>(q * 4u + j));
    }
    b{{OUT}}[(base.{{OUT_C}} >> 2u) + q] = v;
}

//# words
// A contiguous packed output (16- or 8-bit): one invocation per u32 word of it, stored with a
// plain write; the edge words keep the bytes outside the view. No atomics needed.
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = linear_id(gid, nwg, 256u);
    let n = pw(0u);
    let per = pw(5u);
    let off = pw(6u);
    let first = off / per;
    if w >= (off + n + per - 1u) / per - first {
        return;
    }
    let word = first + w;
    let bits = 32u / per;
    let mask = (1u << bits) - 1u;
    var acc = 0u;
    if word * per < off || (word + 1u) * per > off + n {
        acc = b{{OUT}}[word];
    }
    for (var e = 0u; e < per; e = e + 1u) {
        let idx = word * per + e;
        if idx >= off && idx < off + n {
            let s = e * bits;
            acc = (acc & ~(mask << s)) | ((value(offsets(idx - off)) & mask) << s);
        }
    }
    b{{OUT}}[word] = acc;
}

//# helpers
fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// An odd polynomial near 0, where 1 - 2/(e^2x + 1) would cancel.
fn tanh_acc(x: f32) -> f32 {
    let a = abs(x);
    if a < 0.625 {
        let z = x * x;
        var p = -5.7049887e-3;
        p = p * z + 2.063909e-2;
        p = p * z - 5.3739716e-2;
        p = p * z + 1.3331442e-1;
        p = p * z - 3.333328e-1;
        return p * z * x + x;
    }
    if a > 20.0 {
        return sign(x);
    }
    return sign(x) * (1.0 - 2.0 / (exp(2.0 * a) + 1.0));
}

fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978846 * (x + 0.044715 * x * x * x);
    return x * sigmoid(2.0 * u);
}

// 0.5·x·erfc(-x/√2) with the Numerical Recipes erfc fit and x² split exactly (see the CPU
// backend's math.rs: the same function, so both agree in the tails).
fn gelu_erf(x: f32) -> f32 {
    let xc = clamp(x, -15.0, 15.0);
    let a = abs(xc) * 0.70710677;
    let t = 1.0 / (1.0 + 0.5 * a);
    var p = 0.17087277;
    p = p * t - 0.82215223;
    p = p * t + 1.4885159;
    p = p * t - 1.135204;
    p = p * t + 0.27886807;
    p = p * t - 0.18628806;
    p = p * t + 0.09678418;
    p = p * t + 0.37409196;
    p = p * t + 1.0000237;
    p = p * t - 1.2655122;
    let c = 4097.0 * xc;
    let xh = c - (c - xc);
    let xl = xc - xh;
    let hi = xc * xc;
    let lo = ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl;
    let r = t * exp(-0.5 * hi) * exp(p - 0.5 * lo);
    var erfc = 2.0 - r;
    if x <= 0.0 {
        erfc = r;
    }
    return 0.5 * x * erfc;
}

//# rem_helpers
// C's fmodf, exactly: with |a| = ma·2^ea and |b| = mb·2^eb (24-bit integer mantissas),
// |a| mod |b| is (ma·2^(ea-eb) mod mb)·2^eb, the power of two taken 8 bits at a time in u32.
// Not a - trunc(a / b)·b in floats: lavapipe does not fuse `fma`, and that loses the digits
// (1 % 0.1 came out 0). No loop: llvmpipe's loop budget per invocation is shared with a fused
// reduction's whole row. Eight steps, so exact while |a / b| < 2^64; past that the result is
// not fmod's. a's sign; NaN for an infinite a or a zero b.
fn fmod_f32(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a) & 0x7fffffffu;
    let ub = bitcast<u32>(b) & 0x7fffffffu;
    let ea = max(ua >> 23u, 1u);
    let eb = max(ub >> 23u, 1u);
    let ma = (ua & 0x7fffffu) | select(0u, 0x800000u, ua >= 0x800000u);
    let mb = max((ub & 0x7fffffu) | select(0u, 0x800000u, ub >= 0x800000u), 1u);
    let k = select(0u, ea - eb, ea > eb);
    var r = ma % mb;
    r = fmod_step(r, k, 0u, mb);
    r = fmod_step(r, k, 8u, mb);
    r = fmod_step(r, k, 16u, mb);
    r = fmod_step(r, k, 24u, mb);
    r = fmod_step(r, k, 32u, mb);
    r = fmod_step(r, k, 40u, mb);
    r = fmod_step(r, k, 48u, mb);
    r = fmod_step(r, k, 56u, mb);
    let m = bitcast<u32>(ldexp(f32(r), i32(eb) - 150));
    // |a| < |b| (an infinite b among them): a itself.
    let f = select(bitcast<f32>(m | (bitcast<u32>(a) & 0x80000000u)), a, ua < ub);
    return select(f, bitcast<f32>(0x7fc00000u), ua >= 0x7f800000u || ub > 0x7f800000u || ub == 0u);
}

// r·2^(the part of the gap k in [lo, lo + 8)) mod m, for r < m < 2^24.
fn fmod_step(r: u32, k: u32, lo: u32, m: u32) -> u32 {
    return (r << (clamp(k, lo, lo + 8u) - lo)) % m;
}

// Python's `%` (the result takes the divisor's sign): fmod, plus `b` when the signs differ.
fn rem_f32(a: f32, b: f32) -> f32 {
    let r = fmod_f32(a, b);
    return select(r, r + b, r != 0.0 && (r < 0.0) != (b < 0.0));
}

//# int_helpers
// Integer division and remainder on elements' bits, with the contract's rules where WGSL's
// `/` and `%` differ: a zero divisor gives 0 (WGSL: the dividend), division floors and the
// remainder takes the divisor's sign (WGSL truncates), MIN / -1 wraps to MIN and MIN % -1 is
// 0. Selects, not branches: llvmpipe runs both sides of a branch anyway. The divisor `/`
// sees is never 0 or -1, where SPIR-V leaves MIN / -1 undefined.

fn div_u32(x: u32, y: u32) -> u32 {
    return select(x / max(y, 1u), 0u, y == 0u);
}

fn rem_u32(x: u32, y: u32) -> u32 {
    return select(x % max(y, 1u), 0u, y == 0u);
}

fn div_i32(x: u32, y: u32) -> u32 {
    let a = bitcast<i32>(x);
    let b = bitcast<i32>(y);
    let d = select(b, 1, b == 0 || b == -1);
    let q = a / d;
    let r = a - q * d;
    let floor = q - select(0, 1, r != 0 && (r < 0) != (d < 0));
    // x / -1 is -x, wrapping (MIN stays MIN).
    return select(select(bitcast<u32>(floor), 0u - x, b == -1), 0u, b == 0);
}

fn rem_i32(x: u32, y: u32) -> u32 {
    let a = bitcast<i32>(x);
    let b = bitcast<i32>(y);
    let d = select(b, 1, b == 0 || b == -1);
    let r = a - (a / d) * d;
    let floor = r + select(0, d, r != 0 && (r < 0) != (d < 0));
    return select(bitcast<u32>(floor), 0u, b == 0 || b == -1);
}
