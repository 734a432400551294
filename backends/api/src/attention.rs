//! [`Op::Attention`] and [`Op::AttentionBackward`] as primitive ops, for a backend without
//! an attention kernel of its own: the scores and weights are `[.., time, time]`
//! temporaries in the operands' dtype, as a framework's unfused attention keeps them.

use crate::fused::Temps;
use crate::{BinaryOp, DType, Device, Error, Instr, Layout, Op, ReduceOp, Result, Shape, View};

/// What the masked scores add above the diagonal: far below any score (f16 rounds it to
/// −∞, which is as good: a row always keeps its diagonal), so the softmax gives it no
/// weight.
const HIDDEN: f32 = -1e9;

/// Runs a validated `Op::Attention` or `Op::AttentionBackward` on `device` as primitive
/// ops. Temporaries are freed before returning (after the work they feed, in queue order).
pub fn decompose(device: &dyn Device, op: &Op) -> Result<()> {
    op.validate(&device.info().label())?;
    let mut temps = Temps { device, buffers: Vec::new() };
    let result = match op {
        Op::Attention { q, k, v, out, scale, causal } => {
            forward(&mut temps, q, k, v, out, *scale, *causal)
        }
        Op::AttentionBackward { q, k, v, d_out, out, scale, causal } => {
            backward(&mut temps, [q, k, v, d_out], out, *scale, *causal)
        }
        _ => Err(Error::InvalidArgument {
            op: op.name(),
            device: device.info().label(),
            detail: "attention::decompose takes an Op::Attention or an Op::AttentionBackward"
                .into(),
        }),
    };
    temps.free(result)
}

/// `v` with its last two axes swapped.
fn transposed(v: &View) -> View {
    let rank = v.dims().len();
    View::new(v.buffer, v.layout.transposed(rank - 2, rank - 1), v.dtype)
}

/// `[.., time, time]` for operands of `q`'s shape.
fn scores_dims(q: &View) -> Vec<usize> {
    let dims = q.dims();
    let time = dims[dims.len() - 2];
    [&dims[..dims.len() - 1], &[time]].concat()
}

/// The attention weights `softmax(scale · q · kᵀ + mask)` into a fresh temporary of `q`'s
/// dtype (`[.., time, time]`); a second temporary of that size is used on the way.
fn weights(
    temps: &mut Temps<'_>,
    q: &View,
    k: &View,
    scale: f64,
    causal: bool,
) -> Result<(View, View)> {
    let device = temps.device;
    let dims = scores_dims(q);
    let (scores, masked) = (temps.of(&dims, q.dtype)?, temps.of(&dims, q.dtype)?);
    device.run(&Op::Matmul { lhs: q.clone(), rhs: transposed(k), out: scores.clone() })?;
    if causal {
        let time = dims[dims.len() - 1];
        let mask = temps.f32(&[time, time])?;
        let bytes: Vec<u8> = (0..time * time)
            .flat_map(|i| if i % time > i / time { HIDDEN } else { 0.0 }.to_le_bytes())
            .collect();
        device.write(mask.buffer, 0, &bytes)?;
        let spread =
            mask.layout.broadcast_to(&Shape::new(dims.clone())).ok_or_else(|| Error::Shape {
                op: "attention".into(),
                device: device.info().label(),
                detail: format!("a [{time}, {time}] mask does not broadcast to {dims:?}"),
            })?;
        let program = [
            Instr::Input(0),
            Instr::Input(1),
            Instr::Affine(0, scale, 0.0),
            Instr::Binary(BinaryOp::Add, 2, 1),
        ];
        let inputs = vec![scores.clone(), View::new(mask.buffer, spread, DType::F32)];
        device.run(&Op::Fused { inputs, program: program.to_vec(), out: masked.clone() })?;
    } else {
        device.run(&Op::Affine {
            input: scores.clone(),
            out: masked.clone(),
            mul: scale,
            add: 0.0,
        })?;
    }
    let axis = dims.len() - 1;
    device.run(&Op::Softmax { input: masked.clone(), out: scores.clone(), axis, log: false })?;
    Ok((scores, masked))
}

fn forward(
    temps: &mut Temps<'_>,
    q: &View,
    k: &View,
    v: &View,
    out: &View,
    scale: f64,
    causal: bool,
) -> Result<()> {
    let (weights, _) = weights(temps, q, k, scale, causal)?;
    temps.device.run(&Op::Matmul { lhs: weights, rhs: v.clone(), out: out.clone() })
}

/// Entry `i` of `out`'s first axis, without that axis.
fn part(out: &View, i: usize) -> View {
    let narrowed = out.layout.narrowed(0, i, 1);
    let layout = Layout {
        shape: Shape::new(narrowed.dims()[1..].to_vec()),
        strides: narrowed.strides[1..].to_vec(),
        offset: narrowed.offset,
    };
    View::new(out.buffer, layout, out.dtype)
}

/// With `p` the weights and `dp = d_out · vᵀ` their gradient: `dv = pᵀ · d_out`, the
/// scores' gradient `ds = scale · p ∘ (dp − Σ_j p ∘ dp)` (the softmax's), `dq = ds · k` and
/// `dk = dsᵀ · q`.
fn backward(
    temps: &mut Temps<'_>,
    [q, k, v, d_out]: [&View; 4],
    out: &View,
    scale: f64,
    causal: bool,
) -> Result<()> {
    let device = temps.device;
    let (p, dp) = weights(temps, q, k, scale, causal)?;
    let (dq, dk, dv) = (part(out, 0), part(out, 1), part(out, 2));
    // Every operand is read (and checked by the device) before `out` is first written, so
    // an operand the device refuses leaves `out` as it was.
    device.run(&Op::Matmul { lhs: d_out.clone(), rhs: transposed(v), out: dp.clone() })?;
    device.run(&Op::Matmul { lhs: transposed(&p), rhs: d_out.clone(), out: dv })?;
    let dims = scores_dims(q);
    let axis = dims.len() - 1;
    let mut row = dims.clone();
    row[axis] = 1;
    let total = temps.f32(&row)?;
    device.run(&Op::FusedReduce {
        inputs: vec![p.clone(), dp.clone()],
        program: vec![Instr::Input(0), Instr::Input(1), Instr::Binary(BinaryOp::Mul, 0, 1)],
        op: ReduceOp::Sum,
        axis,
        out: total.clone(),
    })?;
    let mut spread = total.layout.clone();
    spread.shape = Shape::new(dims.clone());
    spread.strides[axis] = 0;
    let ds = temps.of(&dims, q.dtype)?;
    device.run(&Op::Fused {
        inputs: vec![p, dp, View::new(total.buffer, spread, DType::F32)],
        program: vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Input(2),
            Instr::Binary(BinaryOp::Sub, 1, 2),
            Instr::Binary(BinaryOp::Mul, 0, 3),
            Instr::Affine(4, scale, 0.0),
        ],
        out: ds.clone(),
    })?;
    device.run(&Op::Matmul { lhs: ds.clone(), rhs: k.clone(), out: dq })?;
    device.run(&Op::Matmul { lhs: transposed(&ds), rhs: q.clone(), out: dk })
}
