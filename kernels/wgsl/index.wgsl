// Indexed reads, accumulations and scatters. Operand 0 is the indexed or source tensor, 1
// the indices, 2 the output (their axis strides travel separately). Out-of-range index
// values touch nothing and are flagged in the status buffer. A kernel is this head plus the
// one section with its entry point (index.rs picks it).

const NONE: u32 = 0xffffffffu;

// The position an index value's bits `raw` pick on an axis of `len`, or NONE (after flagging
// the value) when it is out of range. The body is the index dtype's rule (index.rs): u32 as
// it is; i32 negative counting from the end.
fn resolve(raw: u32, len: u32) -> u32 {
    {{RESOLVE}}
}

//# gather
// Gather / index_select: one invocation per output element. [3] axis length of the input,
// [4] the input's axis stride.
@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let o = offsets(g);
    let j = resolve(ld1(o.y), pw(3u));
    if j == NONE {
        st2(o.z, 0u);
    } else {
        st2(o.z, ld0(o.x + j * pw(4u)));
    }
}

//# scatter_add
// Scatter-add / index_add: one invocation per position off the axis (of the source), which
// walks the source along the axis in order and adds each element where its index points:
// deterministic, race-free (no other invocation writes that column), and a sequential sum.
// f16/bf16 outputs are accumulated in an f32 copy (a temporary) and rounded once afterwards.
// [2] source length along the axis, [3] output axis length, [4] source axis stride,
// [5] indices axis stride, [6] output axis stride, [7] the first source element of this
// dispatch: long axes are cut into consecutive dispatches (in order, so the sum stays
// sequential), because llvmpipe stops loops after 65535 iterations per invocation.
@compute @workgroup_size(256)
fn scatter_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let o = offsets(g);
    let len = pw(3u);
    for (var i = pw(7u); i < pw(2u); i = i + 1u) {
        let t = resolve(ld1(o.y + i * pw(5u)), len);
        if t == NONE {
            continue;
        }
        let at = o.z + t * pw(6u);
        stf2(at, ldf2(at) + ldf0(o.x + i * pw(4u)));
    }
}

//# scatter
// Scatter / scatter_reduce (`Op::Scatter`): one invocation per lane (position off the axis
// of the source), which walks the source along the axis in order and combines each element
// into the output element its index names, in place: duplicates resolve in source order
// (the last assignment wins, reductions fold in order), and no other invocation touches the
// lane's targets. {{UPDATE}} combines the source element at `s` into the output element at
// `at`, by the op and dtype (index.rs: bits copied, integer bits, or f32 rounded on store).
// Packed outputs are atomic words whose stores touch only their element's bits, so lanes
// sharing a word do not race. Parameters as `scatter_add`'s.
@compute @workgroup_size(256)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = linear_id(gid, nwg, 256u);
    if g >= pw(0u) {
        return;
    }
    let o = offsets(g);
    let len = pw(3u);
    for (var i = pw(7u); i < pw(2u); i = i + 1u) {
        let t = resolve(ld1(o.y + i * pw(5u)), len);
        if t == NONE {
            continue;
        }
        let at = o.z + t * pw(6u);
        let s = o.x + i * pw(4u);
        {{UPDATE}}
    }
}
