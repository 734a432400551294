// Shared by every kernel: the parameter block and the dtype conversions.
//
// Parameter words (params.rs writes them): [0] count, [1] rank, [2..8] per-kernel scalars,
// [8..16] dims (outermost first), then four operands of 9 words each at 16 + 9k: the
// element offset, then one stride per dim. Words 52.. are per-kernel extras.

struct Params { w: array<vec4<u32>, 16> }

@group(0) @binding({{PARAMS}}) var<uniform> P: Params;

fn pw(i: u32) -> u32 {
    return P.w[i >> 2u][i & 3u];
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(pw(i));
}

// Element offsets of the four operands at the linear (row-major) position `g`.
fn offsets(g: u32) -> vec4<u32> {
    var o = vec4<u32>(pw(16u), pw(25u), pw(34u), pw(43u));
    var rem = g;
    var d = pw(1u);
    loop {
        if d == 0u {
            break;
        }
        d = d - 1u;
        let n = pw(8u + d);
        let i = rem % n;
        rem = rem / n;
        o = o + i * vec4<u32>(pw(17u + d), pw(26u + d), pw(35u + d), pw(44u + d));
    }
    return o;
}

// A 1-D grid folded into two dimensions (at most 65535 workgroups per dimension).
fn linear_id(gid: vec3<u32>, nwg: vec3<u32>, width: u32) -> u32 {
    return gid.x + gid.y * nwg.x * width;
}

// Bit tests, not `v != v`: they cannot be folded away by fast-math compilers.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn f16_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        // Zero or subnormal: m · 2^-24, a normal f32.
        return bitcast<f32>(s | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
    }
    if e == 31u {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

// Round to nearest even on the bits, as `half::f16::from_f32` does (NaN stays NaN).
fn f32_to_f16(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let s = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if a > 0x7f800000u {
        return s | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if a >= 0x477ff000u {
        return s | 0x7c00u;
    }
    if a >= 0x38800000u {
        let r = a - 0x38000000u;
        return s | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
    }
    if a < 0x33000000u {
        return s;
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let sh = 126u - (a >> 23u);
    var q = m >> sh;
    let rem = m & ((1u << sh) - 1u);
    let half = 1u << (sh - 1u);
    if rem > half || (rem == half && (q & 1u) == 1u) {
        q = q + 1u;
    }
    return s | q;
}

fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn f32_to_bf16(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    if (x & 0x7fffffffu) > 0x7f800000u {
        return ((x >> 16u) | 0x40u) & 0xffffu;
    }
    return ((x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u) & 0xffffu;
}

// Saturating truncation towards zero, NaN to 0 (the contract's Cast).
fn f32_to_u32_sat(v: f32) -> u32 {
    if is_nan(v) || v <= 0.0 {
        return 0u;
    }
    if v >= 4294967296.0 {
        return 0xffffffffu;
    }
    return u32(v);
}

fn f32_to_u8_sat(v: f32) -> u32 {
    return min(f32_to_u32_sat(v), 255u);
}

// The same for i32, as its bits: ±2^31 and beyond saturate to MIN and MAX.
fn f32_to_i32_sat(v: f32) -> u32 {
    if is_nan(v) {
        return 0u;
    }
    if v >= 2147483648.0 {
        return 0x7fffffffu;
    }
    if v <= -2147483648.0 {
        return 0x80000000u;
    }
    return bitcast<u32>(i32(v));
}

// u32 → f32 rounded to nearest even (`odd` false) or to odd (`odd` true: the f32 that a
// second rounding to f16/bf16 turns into the correctly rounded result).
fn u32_to_f32_mode(x: u32, odd: bool) -> f32 {
    if x < 0x1000000u {
        return f32(x);
    }
    let sh = 8u - countLeadingZeros(x);
    var q = x >> sh;
    let rem = x & ((1u << sh) - 1u);
    if odd {
        if rem != 0u {
            q = q | 1u;
        }
    } else {
        let half = 1u << (sh - 1u);
        if rem > half || (rem == half && (q & 1u) == 1u) {
            q = q + 1u;
        }
    }
    return ldexp(f32(q), i32(sh));
}

fn u32_to_f32(x: u32) -> f32 {
    return u32_to_f32_mode(x, false);
}

fn u32_to_f16(x: u32) -> u32 {
    return f32_to_f16(u32_to_f32_mode(x, true));
}

fn u32_to_bf16(x: u32) -> u32 {
    return f32_to_bf16(u32_to_f32_mode(x, true));
}

// i32 bits → f32 as the u32 conversions round: the magnitude (MIN's too: 0u - x is 2^31),
// then the sign, so that rounding is symmetric.
fn i32_to_f32_mode(x: u32, odd: bool) -> f32 {
    let neg = x >= 0x80000000u;
    let m = u32_to_f32_mode(select(x, 0u - x, neg), odd);
    return select(m, -m, neg);
}

fn i32_to_f32(x: u32) -> f32 {
    return i32_to_f32_mode(x, false);
}

fn i32_to_f16(x: u32) -> u32 {
    return f32_to_f16(i32_to_f32_mode(x, true));
}

fn i32_to_bf16(x: u32) -> u32 {
    return f32_to_bf16(i32_to_f32_mode(x, true));
}
