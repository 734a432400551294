// (Log-)softmax along one axis, rows laid out as in reduce.wgsl; [4] is 1 for log-softmax.
// Three passes over the row: max, Σ exp(x - max), then the outputs.

var<workgroup> sv: array<f32, 256>;
var<workgroup> sw: array<f32, 16>;

// The 256 invocations' partial maxima (`is_max`) or sums folded in two rounds of 16, so the
// whole fold waits at two barriers where a halving tree waits at eight (a barrier is what
// costs most on CPU-backed Vulkan). Every invocation gets the total.
fn fold(v: f32, lid: u32, is_max: bool) -> f32 {
    sv[lid] = v;
    workgroupBarrier();
    if lid < 16u {
        var a = sv[lid * 16u];
        for (var k = 1u; k < 16u; k = k + 1u) {
            a = select(a + sv[lid * 16u + k], max(a, sv[lid * 16u + k]), is_max);
        }
        sw[lid] = a;
    }
    workgroupBarrier();
    var t = sw[0];
    for (var k = 1u; k < 16u; k = k + 1u) {
        t = select(t + sw[k], max(t, sw[k]), is_max);
    }
    return t;
}

const NEG_INF: u32 = 0xff800000u;

fn soft_out(x: f32, mx: f32, total: f32) -> f32 {
    if pw(4u) == 1u {
        return (x - mx) - log(total);
    }
    return exp(x - mx) / total;
}

@compute @workgroup_size(256)
fn wide(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    let st = pw(3u);
    let ost = pw(5u);
    var m = bitcast<f32>(NEG_INF);
    for (var i = lid.x; i < n; i = i + 256u) {
        m = max(m, ldf0(o.x + i * st));
    }
    let mx = fold(m, lid.x, true);
    var total = 0.0;
    for (var i = lid.x; i < n; i = i + 256u) {
        total = total + exp(ldf0(o.x + i * st) - mx);
    }
    let sum = fold(total, lid.x, false);
    for (var i = lid.x; i < n; i = i + 256u) {
        stf1(o.y + i * ost, soft_out(ldf0(o.x + i * st), mx, sum));
    }
}

@compute @workgroup_size(256)
fn short(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = linear_id(gid, nwg, 256u);
    if row >= pw(0u) {
        return;
    }
    let o = offsets(row);
    let n = pw(2u);
    let st = pw(3u);
    let ost = pw(5u);
    var mx = bitcast<f32>(NEG_INF);
    for (var i = 0u; i < n; i = i + 1u) {
        mx = max(mx, ldf0(o.x + i * st));
    }
    var sum = 0.0;
    for (var i = 0u; i < n; i = i + 1u) {
        sum = sum + exp(ldf0(o.x + i * st) - mx);
    }
    for (var i = 0u; i < n; i = i + 1u) {
        stf1(o.y + i * ost, soft_out(ldf0(o.x + i * st), mx, sum));
    }
}
