//! Data movement on raw element bits: strided copy, concatenation (one copy per input into
//! its slice of the output), fill.

use manychips_api::{DType, Element, Layout, Op, Result, View, bf16, f16};

use super::elementwise::{Value, dispatch};
use super::strided;
use crate::kernel::Operand;
use crate::params::Strided;
use crate::{Dispatch, Features};

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    match op {
        Op::Copy { input, out } => Ok(vec![copy(op, input, &out.layout, out, f)?]),
        Op::Concat { inputs, out, axis } => {
            let mut at = 0;
            let mut ds = Vec::new();
            for v in inputs {
                let len = v.dims()[*axis];
                let part = out.layout.narrowed(*axis, at, len);
                at += len;
                if v.numel() > 0 {
                    ds.push(copy(op, v, &part, out, f)?);
                }
            }
            Ok(ds)
        }
        Op::Fill { out, value } => Ok(vec![fill(op, out, *value, f)?]),
        _ => Ok(Vec::new()),
    }
}

/// Copies `input` into the part of `out`'s buffer that `dst` describes.
fn copy(op: &Op, input: &View, dst: &Layout, out: &View, f: &Features) -> Result<Dispatch> {
    let ops = [strided(input), Strided::new(dst.offset, dst.strides.clone())];
    let operands = vec![Operand::input(input), Operand::output(out)];
    dispatch(op, operands, &ops, dst, Value::plain("return ld0(o.x);"), &[], f)
}

/// The bits of `value` stored as `dtype`, converted as `Cast` converts.
pub(crate) fn bits_of(value: f64, dtype: DType) -> Result<u32> {
    Ok(match dtype {
        DType::F32 => <f32 as Element>::from_f64(value).to_bits(),
        DType::F16 => <f16 as Element>::from_f64(value).to_bits() as u32,
        DType::BF16 => <bf16 as Element>::from_f64(value).to_bits() as u32,
        DType::U32 => <u32 as Element>::from_f64(value),
        DType::I32 => <i32 as Element>::from_f64(value) as u32,
        DType::U8 => <u8 as Element>::from_f64(value) as u32,
        DType::I64 => return Err(crate::kernel::no_64_bit()),
    })
}

fn fill(op: &Op, out: &View, value: f64, f: &Features) -> Result<Dispatch> {
    let scalars = [(3, bits_of(value, out.dtype)?)];
    let operands = vec![Operand::output(out)];
    dispatch(
        op,
        operands,
        &[strided(out)],
        &out.layout,
        Value::plain("return pw(3u);"),
        &scalars,
        f,
    )
}
