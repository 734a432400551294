// (Log-)softmax along one axis, rows laid out as in reduce.wgsl; [4] is 1 for log-softmax.
// Three passes over the row: max, Σ exp(x - max), then the outputs.

var<workgroup> sv: array<f32, 256>;

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
    sv[lid.x] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s {
            sv[lid.x] = max(sv[lid.x], sv[lid.x + s]);
        }
        workgroupBarrier();
    }
    let mx = sv[0];
    workgroupBarrier();
    var total = 0.0;
    for (var i = lid.x; i < n; i = i + 256u) {
        total = total + exp(ldf0(o.x + i * st) - mx);
    }
    sv[lid.x] = total;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s {
            sv[lid.x] = sv[lid.x] + sv[lid.x + s];
        }
        workgroupBarrier();
    }
    let sum = sv[0];
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
