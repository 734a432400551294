//! index_select / gather, index_add / scatter_add and scatter (kernels/wgsl/index.wgsl). A
//! 1-D index vector is an index tensor broadcast (stride 0) over the other dims, so each pair
//! shares one kernel; the indexed operand is addressed as `base + index · axis_stride`.

use manychips_api::{BinaryOp, DType, Error, Layout, Op, Result, ScatterOp, View};

use super::elementwise::{Value, binary, dispatch, int_binary};
use super::strided;
use crate::kernel::{Kernel, Operand, WG, grid_1d};
use crate::params::{Params, Strided, word};
use crate::template::section;
use crate::{Features, Lowered, Slot};

const SOURCE: &str = include_str!("../../../../kernels/wgsl/index.wgsl");

/// The template of the kernel with entry point `entry`: index.wgsl's head (what every index
/// kernel shares) and that entry's section, so no kernel compiles the others.
fn source(entry: &str) -> Result<[&'static str; 2]> {
    let head = SOURCE.find("\n//# ").map_or(SOURCE, |end| &SOURCE[..=end]);
    Ok([head, section(SOURCE, entry)?])
}

/// The body of index.wgsl's `resolve` for indices of `dtype` (an axis has fewer than 2^32
/// elements, so NONE is never a position).
fn resolve(op: &Op, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::U32 => Ok("if raw >= len { flag_index(raw, len); return NONE; } return raw;"),
        // -len..-1 wraps (u32 arithmetic) to 0..len-1; anything more negative stays past len.
        DType::I32 => Ok("let t = raw + select(0u, len, raw >= 0x80000000u); \
                          if t >= len { flag_signed_index(raw, len); return NONE; } return t;"),
        _ => Err(Error::UnsupportedDType {
            op: op.name(),
            device: "wgsl".into(),
            dtype,
            detail: format!(" (indices must be u32 or i32 here); {}", op.describe()),
        }),
    }
}

/// `v` with its stride on `axis` zeroed.
fn base(v: &View, axis: usize) -> Strided {
    let mut s = strided(v);
    s.strides[axis] = 0;
    s
}

/// A 1-D `indices` seen over `rank` dims: its stride on `axis`, 0 elsewhere.
fn broadcast(indices: &View, rank: usize, axis: usize) -> Strided {
    let mut strides = vec![0; rank];
    strides[axis] = indices.layout.strides.first().copied().unwrap_or(0);
    Strided::new(indices.layout.offset, strides)
}

/// `v`'s layout without `axis`.
fn without(offset: usize, strides: &[usize], axis: usize) -> Strided {
    let mut strides = strides.to_vec();
    strides.remove(axis);
    Strided::new(offset, strides)
}

pub(super) fn lower(op: &Op, f: &Features) -> Result<Lowered> {
    match op {
        Op::IndexSelect { input, indices, out, axis }
        | Op::Gather { input, indices, out, axis } => {
            let rank = out.dims().len();
            let idx = match op {
                Op::IndexSelect { .. } => broadcast(indices, rank, *axis),
                _ => strided(indices),
            };
            let ops = [base(input, *axis), idx, strided(out)];
            let n = out.numel();
            let mut p = Params::strided(op, n, out.dims(), &ops)?;
            p.set(3, word(op, "axis length", input.dims()[*axis])?)?;
            p.set(4, word(op, "stride", input.layout.strides[*axis])?)?;
            let operands =
                vec![Operand::input(input), Operand::input(indices), Operand::output(out)];
            let k = Kernel {
                family: "index",
                source: &source("gather")?,
                entry: "gather",
                operands,
                status: true,
                subs: &[("RESOLVE", resolve(op, indices.dtype)?)],
            };
            let dispatches = vec![k.dispatch(p, grid_1d(op, n, WG, f)?)?];
            Ok(Lowered { temporaries: Vec::new(), dispatches })
        }
        Op::IndexAdd { src, indices, out, axis } | Op::ScatterAdd { src, indices, out, axis } => {
            scatter(op, src, indices, out, *axis, f)
        }
        Op::Scatter { op: how, src, indices, out, axis } => {
            scatter_op(op, *how, src, indices, out, *axis, f)
        }
        _ => Ok(Lowered::default()),
    }
}

/// Source elements one scatter dispatch walks per column: llvmpipe ends loops after 65535
/// iterations per invocation, so longer axes take several dispatches.
const CHUNK: usize = 32768;

fn scatter(
    op: &Op,
    src: &View,
    indices: &View,
    out: &View,
    axis: usize,
    f: &Features,
) -> Result<Lowered> {
    let rank = out.dims().len();
    let (idx, idx_stride) = match op {
        Op::IndexAdd { .. } => {
            (Strided::new(indices.layout.offset, vec![0; rank - 1]), indices.layout.strides[0])
        }
        _ => (
            without(indices.layout.offset, &indices.layout.strides, axis),
            indices.layout.strides[axis],
        ),
    };
    let mut dims = src.dims().to_vec();
    dims.remove(axis);
    let columns: usize = dims.iter().product();
    if columns == 0 || src.dims()[axis] == 0 {
        return Ok(Lowered::default());
    }
    // Half types add into an f32 copy of `out` (contiguous), rounded once at the end.
    let direct = out.dtype == DType::F32;
    let acc_layout = Layout::contiguous(out.dims());
    let (acc, acc_strides) = if direct {
        (Operand::output(out), (out.layout.offset, out.layout.strides.clone()))
    } else {
        let temp = Operand {
            slot: Slot::Temporary(0),
            dtype: DType::F32,
            writable: true,
            vector: false,
            words: false,
            quad: false,
        };
        (temp, (0, acc_layout.strides.clone()))
    };
    let ops = [
        without(src.layout.offset, &src.layout.strides, axis),
        idx,
        without(acc_strides.0, &acc_strides.1, axis),
    ];
    let mut p = Params::strided(op, columns, &dims, &ops)?;
    let n = src.dims()[axis];
    p.set(3, word(op, "axis length", out.dims()[axis])?)?;
    p.set(4, word(op, "stride", src.layout.strides[axis])?)?;
    p.set(5, word(op, "stride", idx_stride)?)?;
    p.set(6, word(op, "stride", acc_strides.1[axis])?)?;
    let k = Kernel {
        family: "index",
        source: &source("scatter_add")?,
        entry: "scatter_add",
        operands: vec![Operand::input(src), Operand::input(indices), acc],
        status: true,
        subs: &[("RESOLVE", resolve(op, indices.dtype)?)],
    };
    let grid = grid_1d(op, columns, WG, f)?;
    let mut adds = Vec::new();
    for start in (0..n).step_by(CHUNK) {
        let mut p = p.clone();
        p.set(2, word(op, "source length", (start + CHUNK).min(n))?)?;
        p.set(7, word(op, "source start", start)?)?;
        adds.push(k.dispatch(p, grid)?);
    }
    if direct {
        return Ok(Lowered { temporaries: Vec::new(), dispatches: adds });
    }
    let temp_ro = Operand {
        slot: Slot::Temporary(0),
        dtype: DType::F32,
        writable: false,
        vector: false,
        words: false,
        quad: false,
    };
    let temp_rw = Operand { writable: true, ..temp_ro };
    let acc_strided = Strided::new(0, acc_layout.strides.clone());
    let widen = dispatch(
        op,
        vec![Operand::input(out), temp_rw],
        &[strided(out), acc_strided.clone()],
        &acc_layout,
        Value::plain("return out_bits(ldf0(o.x));"),
        &[],
        f,
    )?;
    let narrow = dispatch(
        op,
        vec![temp_ro, Operand::output(out)],
        &[acc_strided, strided(out)],
        &out.layout,
        Value::plain("return out_bits(ldf0(o.x));"),
        &[],
        f,
    )?;
    let bytes = out.numel() as u64 * 4;
    let mut dispatches = vec![widen];
    dispatches.extend(adds);
    dispatches.push(narrow);
    Ok(Lowered { temporaries: vec![bytes], dispatches })
}

/// The body of index.wgsl's `update` for `Op::Scatter`: combines the source element at `s`
/// (operand 0) into the output element at `at` (operand 2). Chosen here, not by a branch in
/// the kernel: an assignment copies the bits (any dtype); an integer reduction works on the
/// bits as the integer `Binary` op does (wrapping; a u8 is masked to its byte when stored);
/// a float one in f32, rounded to the dtype by the store.
fn update(op: &Op, how: ScatterOp, dtype: DType) -> Result<String> {
    let binop = match how {
        ScatterOp::Assign => return Ok("st2(at, ld0(s));".into()),
        ScatterOp::Sum => BinaryOp::Add,
        ScatterOp::Prod => BinaryOp::Mul,
        ScatterOp::Max => BinaryOp::Max,
        ScatterOp::Min => BinaryOp::Min,
    };
    if dtype.is_float() {
        return Ok(format!("let x = ldf2(at); let y = ldf0(s); stf2(at, {});", binary(binop)));
    }
    let e = int_binary(binop, dtype).ok_or_else(|| Error::UnsupportedDType {
        op: op.name(),
        device: "wgsl".into(),
        dtype,
        detail: format!(" (no integer {binop:?}); {}", op.describe()),
    })?;
    Ok(format!("let x = ld2(at); let y = ld0(s); st2(at, {e});"))
}

/// `Op::Scatter`: one invocation per lane (every position of `src` off the axis), walking
/// the axis in order and combining each element into the output where its index points, in
/// place: the order the op defines, with no other invocation touching that lane's targets.
/// Packed outputs (16- and 8-bit) are bound atomic, each store clearing and setting only its
/// own element's bits, so lanes whose elements share a word do not race.
fn scatter_op(
    op: &Op,
    how: ScatterOp,
    src: &View,
    indices: &View,
    out: &View,
    axis: usize,
    f: &Features,
) -> Result<Lowered> {
    let mut dims = src.dims().to_vec();
    dims.remove(axis);
    let lanes: usize = dims.iter().product();
    let n = src.dims()[axis];
    if lanes == 0 || n == 0 {
        return Ok(Lowered::default());
    }
    let ops = [
        without(src.layout.offset, &src.layout.strides, axis),
        without(indices.layout.offset, &indices.layout.strides, axis),
        without(out.layout.offset, &out.layout.strides, axis),
    ];
    let mut p = Params::strided(op, lanes, &dims, &ops)?;
    p.set(3, word(op, "axis length", out.dims()[axis])?)?;
    p.set(4, word(op, "stride", src.layout.strides[axis])?)?;
    p.set(5, word(op, "stride", indices.layout.strides[axis])?)?;
    p.set(6, word(op, "stride", out.layout.strides[axis])?)?;
    let update = update(op, how, out.dtype)?;
    let k = Kernel {
        family: "index",
        source: &source("scatter")?,
        entry: "scatter",
        operands: vec![Operand::input(src), Operand::input(indices), Operand::output(out)],
        status: true,
        subs: &[("RESOLVE", resolve(op, indices.dtype)?), ("UPDATE", &update)],
    };
    let grid = grid_1d(op, lanes, WG, f)?;
    let mut dispatches = Vec::new();
    for start in (0..n).step_by(CHUNK) {
        let mut p = p.clone();
        p.set(2, word(op, "source length", (start + CHUNK).min(n))?)?;
        p.set(7, word(op, "source start", start)?)?;
        dispatches.push(k.dispatch(p, grid)?);
    }
    Ok(Lowered { temporaries: Vec::new(), dispatches })
}
