// Reductions along one axis. A row is the `n` elements along the axis ([2]); the shared
// layout enumerates the rows. A plain reduction reads operand 0 at stride [3] and writes
// operand 1; a fused one computes each element from up to three inputs (operands 0..2, at
// strides [3], [4], [6] along the axis) and writes the operand after them.
// `value_*` entries fold the values, `arg_*` ones find the index of the best; `*_wide`
// entries give each row a workgroup and reduce it as a tree (long rows), `*_short` entries
// give each row one invocation (many short rows).
// The lowering (reduce.rs) specialises the element type `V` (f32, or u32 holding an
// integer's bits), the fold, the arg order and the store; `element` reads or computes each
// element.

alias V = {{V}};

var<workgroup> sv: array<V, 256>;
var<workgroup> si: array<u32, 256>;

fn combine(a: V, b: V) -> V {
    return {{COMBINE}};
}

fn finish(acc: V, n: u32) -> V {
    return {{FINISH}};
}

fn init() -> V {
    return {{INIT}};
}

// Element `i` of the row whose operands start at `row_o`.
fn element(row_o: vec4<u32>, i: u32) -> V {
    {{ELEMENT}}
}

// Stores a folded value (converting an f32 to the output dtype).
fn store_value(at: u32, v: V) {
    {{STORE}}{{OUT}}(at, v);
}

// The arg order: whether `b` beats `a` (larger for argmax, smaller for argmin).
fn better(b: V, a: V) -> bool {
    return {{BETTER}};
}

// Values an arg reduction passes over (NaN; nothing for integers).
fn skips(v: V) -> bool {
    return {{SKIPS}};
}

const NONE: u32 = 0xffffffffu;

// Arg order: a better value wins, then the lower index; an empty candidate (NONE) loses to
// every other.
fn takes(av: V, ai: u32, bv: V, bi: u32) -> bool {
    if bi == NONE {
        return false;
    }
    if ai == NONE {
        return true;
    }
    return better(bv, av) || (bv == av && bi < ai);
}

fn row_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(256)
fn value_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = row_id(wid, nwg);
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    var acc = init();
    for (var i = lid.x; i < n; i = i + 256u) {
        acc = combine(acc, element(o, i));
    }
    sv[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s {
            sv[lid.x] = combine(sv[lid.x], sv[lid.x + s]);
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        store_value(o.{{OUT_C}}, finish(sv[0], n));
    }
}

@compute @workgroup_size(256)
fn value_short(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_id(gid, nwg, 256u);
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    var acc = init();
    for (var i = 0u; i < n; i = i + 1u) {
        acc = combine(acc, element(o, i));
    }
    store_value(o.{{OUT_C}}, finish(acc, n));
}

@compute @workgroup_size(256)
fn arg_wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = row_id(wid, nwg);
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    var bv = init();
    var bi = NONE;
    for (var i = lid.x; i < n; i = i + 256u) {
        let v = element(o, i);
        if !skips(v) && takes(bv, bi, v, i) {
            bv = v;
            bi = i;
        }
    }
    sv[lid.x] = bv;
    si[lid.x] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s && takes(sv[lid.x], si[lid.x], sv[lid.x + s], si[lid.x + s]) {
            sv[lid.x] = sv[lid.x + s];
            si[lid.x] = si[lid.x + s];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        st{{OUT}}(o.{{OUT_C}}, select(si[0], 0u, si[0] == NONE));
    }
}

@compute @workgroup_size(256)
fn arg_short(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_id(gid, nwg, 256u);
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    var bv = init();
    var bi = NONE;
    for (var i = 0u; i < n; i = i + 1u) {
        let v = element(o, i);
        if !skips(v) && takes(bv, bi, v, i) {
            bv = v;
            bi = i;
        }
    }
    st{{OUT}}(o.{{OUT_C}}, select(bi, 0u, bi == NONE));
}
