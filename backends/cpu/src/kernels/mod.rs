//! Kernels: one entry point, [`execute`], that turns an [`Op`] over raw buffers into a typed
//! kernel call.
//!
//! Ops arrive validated (`Op::validate` plus the device's buffer checks), so the kernels
//! trust shapes and dtypes; slice indexing still bounds-checks every access, and the two
//! raw-pointer users (gemm, from `matmul` and `attention`) re-check their views.

pub(crate) mod attention;
pub(crate) mod copy;
pub(crate) mod elementwise;
pub(crate) mod fused;
pub(crate) mod fused_reduce;
pub(crate) mod index;
pub(crate) mod math;
pub(crate) mod matmul;
pub(crate) mod plan;
pub(crate) mod reduce;
pub(crate) mod simd;
pub(crate) mod softmax;
pub(crate) mod sort;
pub(crate) mod stream;

use rustc_hash::FxHashMap;

use half::{bf16, f16};
use manychips_api::{DType, Element, Error, Layout, Op, ReduceOp, Result, View};

use crate::storage::{Scratch, Storage};
use index::IndexError;

/// What a kernel may use besides its operands.
pub(crate) struct Env<'a> {
    /// The device label, for error messages.
    pub label: &'a str,
    pub scratch: &'a mut Scratch,
}

impl Env<'_> {
    fn fault(&self, op: &Op, detail: impl std::fmt::Display) -> Error {
        Error::Fault {
            op: op.name(),
            device: self.label.into(),
            detail: format!("{detail}; {}", op.describe()),
        }
    }

    fn oom(&self, op: &Op) -> Error {
        Error::OutOfMemory {
            op: op.name(),
            device: self.label.into(),
            detail: format!("no memory for kernel scratch; {}", op.describe()),
        }
    }

    fn index_error(&self, op: &Op, e: IndexError) -> Error {
        match e {
            IndexError::OutOfRange { value, len } => Error::IndexOutOfRange {
                op: op.name(),
                device: self.label.into(),
                detail: format!(
                    "index value {value} is out of range for an axis of length {len}; {}",
                    op.describe()
                ),
            },
            IndexError::Oom => self.oom(op),
        }
    }
}

fn typed<T: bytemuck::Pod>(words: &[u64]) -> &[T] {
    bytemuck::cast_slice(words)
}

fn typed_mut<T: bytemuck::Pod>(words: &mut [u64]) -> &mut [T] {
    bytemuck::cast_slice_mut(words)
}

/// Binds `$T` to the Rust type of a float dtype.
macro_rules! with_float {
    ($dtype:expr, $T:ident => $body:expr, $otherwise:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::U32 | DType::U8 | DType::I32 | DType::I64 => $otherwise,
        }
    };
}

/// Binds `$T` to the Rust type of an integer dtype.
macro_rules! with_int {
    ($dtype:expr, $T:ident => $body:expr, $otherwise:expr) => {
        match $dtype {
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::F32 | DType::F16 | DType::BF16 => $otherwise,
        }
    };
}

/// Binds `$X` to the Rust type of an index dtype (validation allows no other).
macro_rules! with_index {
    ($dtype:expr, $X:ident => $body:expr) => {
        match $dtype {
            DType::I32 => {
                type $X = i32;
                $body
            }
            DType::I64 => {
                type $X = i64;
                $body
            }
            _ => {
                type $X = u32;
                $body
            }
        }
    };
}

/// Binds `$T` to the Rust type of any dtype.
macro_rules! with_any {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
        }
    };
}

/// Binds `$W` to the unsigned word as wide as the dtype (for copies).
macro_rules! with_word {
    ($dtype:expr, $W:ident => $body:expr) => {
        match $dtype.size_in_bytes() {
            8 => {
                type $W = u64;
                $body
            }
            4 => {
                type $W = u32;
                $body
            }
            2 => {
                type $W = u16;
                $body
            }
            _ => {
                type $W = u8;
                $body
            }
        }
    };
}

/// Runs `op`, reading inputs from `buffers` and writing `out` (the output view's storage,
/// taken out of the table by the caller, since it is never also an input).
pub(crate) fn execute(
    op: &Op,
    buffers: &FxHashMap<u64, Storage>,
    out: &mut [u64],
    env: &mut Env<'_>,
) -> Result<()> {
    let ov = op.output();
    if ov.numel() == 0 {
        return Ok(());
    }
    // An empty input may share the output's buffer (validation allows it), which is not in
    // the table right now: never look such a view up.
    let get = |v: &View| -> Result<&[u64]> {
        if v.numel() == 0 {
            return Ok(&[]);
        }
        buffers.get(&v.buffer.index).map(|s| &*s.words).ok_or_else(|| env_missing(env.label, op, v))
    };
    let not_float = |dt: DType| Error::UnsupportedDType {
        op: op.name(),
        device: env.label.into(),
        dtype: dt,
        detail: format!("; {}", op.describe()),
    };
    let ol = &ov.layout;
    match op {
        Op::Matmul { lhs, rhs, out: _ } => {
            let (a, b) = (get(lhs)?, get(rhs)?);
            let geometry_err = |e: matmul::GeometryError| env.fault(op, e);
            let staged_err = |env: &Env<'_>, e: matmul::StagedError| match e {
                matmul::StagedError::Geometry(g) => env.fault(op, g),
                matmul::StagedError::Oom => env.oom(op),
            };
            match ov.dtype {
                DType::F32 => matmul::native(
                    (typed(a), &lhs.layout),
                    (typed(b), &rhs.layout),
                    (typed_mut(out), ol),
                )
                .map_err(geometry_err),
                DType::F16 => matmul::staged::<f16>(
                    (typed(a), &lhs.layout),
                    (typed(b), &rhs.layout),
                    (typed_mut(out), ol),
                    env.scratch,
                )
                .map_err(|e| staged_err(env, e)),
                DType::BF16 => matmul::staged::<bf16>(
                    (typed(a), &lhs.layout),
                    (typed(b), &rhs.layout),
                    (typed_mut(out), ol),
                    env.scratch,
                )
                .map_err(|e| staged_err(env, e)),
                dt => Err(not_float(dt)),
            }
        }
        Op::Binary { op: bop, lhs, rhs, out: _ } => {
            let (a, b) = (get(lhs)?, get(rhs)?);
            with_float!(ov.dtype, T => {
                elementwise::binary::<T>(
                    *bop,
                    (typed(a), &lhs.layout),
                    (typed(b), &rhs.layout),
                    (typed_mut(out), ol),
                );
                Ok(())
            }, with_int!(ov.dtype, T => {
                elementwise::binary_int::<T>(
                    *bop,
                    (typed(a), &lhs.layout),
                    (typed(b), &rhs.layout),
                    (typed_mut(out), ol),
                );
                Ok(())
            }, Err(not_float(ov.dtype))))
        }
        Op::FusedReduce { inputs, program, op: rop, axis, out: _ } => {
            let srcs = fused_sources(inputs, &get, &not_float)?;
            with_float!(ov.dtype, T => {
                fused_reduce::run::<T>(program, *rop, *axis, &srcs, (typed_mut(out), ol));
                Ok(())
            }, Err(not_float(ov.dtype)))
        }
        Op::Fused { inputs, program, out: _ } => {
            let srcs = fused_sources(inputs, &get, &not_float)?;
            with_float!(ov.dtype, T => {
                fused::run::<T>(program, &srcs, (typed_mut(out), ol));
                Ok(())
            }, Err(not_float(ov.dtype)))
        }
        Op::Unary { op: uop, input, out: _ } => {
            let a = get(input)?;
            with_float!(ov.dtype, T => {
                elementwise::map::<T, T>(
                    elementwise::Map::Unary(*uop),
                    (typed(a), &input.layout),
                    (typed_mut(out), ol),
                );
                Ok(())
            }, with_int!(ov.dtype, T => {
                elementwise::unary_int::<T>(*uop, (typed(a), &input.layout), (typed_mut(out), ol));
                Ok(())
            }, Err(not_float(ov.dtype))))
        }
        Op::Affine { input, out: _, mul, add } => {
            let a = get(input)?;
            let m = elementwise::Map::Affine { mul: *mul as f32, add: *add as f32 };
            with_float!(ov.dtype, T => {
                elementwise::map::<T, T>(m, (typed(a), &input.layout), (typed_mut(out), ol));
                Ok(())
            }, Err(not_float(ov.dtype)))
        }
        Op::Compare { op: cop, lhs, rhs, out: _ } => {
            let (a, b) = (get(lhs)?, get(rhs)?);
            let (a, b) = ((a, &lhs.layout), (b, &rhs.layout));
            with_any!(lhs.dtype, T => {
                if ov.dtype == DType::U8 {
                    let out = (typed_mut::<u8>(out), ol);
                    elementwise::compare::<T, u8>(*cop, (typed(a.0), a.1), (typed(b.0), b.1), out);
                } else {
                    let out = (typed_mut::<T>(out), ol);
                    elementwise::compare::<T, T>(*cop, (typed(a.0), a.1), (typed(b.0), b.1), out);
                }
            });
            Ok(())
        }
        Op::Cast { input, out: _ } => {
            let a = get(input)?;
            with_any!(input.dtype, S => {
                with_any!(ov.dtype, D => {
                    elementwise::cast::<S, D>((typed(a), &input.layout), (typed_mut(out), ol))
                })
            });
            Ok(())
        }
        Op::Where { cond, on_true, on_false, out: _ } => {
            let (c, t, f) = (get(cond)?, get(on_true)?, get(on_false)?);
            with_any!(ov.dtype, T => elementwise::select::<T>(
                (typed(c), &cond.layout),
                (typed(t), &on_true.layout),
                (typed(f), &on_false.layout),
                (typed_mut(out), ol),
            ));
            Ok(())
        }
        Op::Copy { input, out: _ } => {
            let a = get(input)?;
            with_word!(ov.dtype, W => copy::copy::<W>((typed(a), &input.layout), (typed_mut(out), ol)));
            Ok(())
        }
        Op::Concat { inputs, out: _, axis } => {
            let mut srcs = Vec::with_capacity(inputs.len());
            for v in inputs {
                srcs.push((get(v)?, &v.layout));
            }
            with_word!(ov.dtype, W => {
                let srcs: Vec<(&[W], &Layout)> = srcs.iter().map(|&(w, l)| (typed(w), l)).collect();
                copy::concat::<W>(&srcs, (typed_mut(out), ol), *axis)
            });
            Ok(())
        }
        Op::Fill { out: _, value } => {
            // The api's conversions (`Element::from_f64`), not `half`'s inherent ones: those
            // define `Fill` (correctly rounded, where `half` may round twice).
            fn bits<T: Element + bytemuck::NoUninit, W: bytemuck::AnyBitPattern>(v: f64) -> W {
                bytemuck::cast(T::from_f64(v))
            }
            let v = *value;
            match ov.dtype {
                DType::F32 => copy::fill::<u32>((typed_mut(out), ol), bits::<f32, u32>(v)),
                DType::F16 => copy::fill::<u16>((typed_mut(out), ol), bits::<f16, u16>(v)),
                DType::BF16 => copy::fill::<u16>((typed_mut(out), ol), bits::<bf16, u16>(v)),
                DType::U32 => copy::fill::<u32>((typed_mut(out), ol), bits::<u32, u32>(v)),
                DType::U8 => copy::fill::<u8>((typed_mut(out), ol), bits::<u8, u8>(v)),
                DType::I32 => copy::fill::<u32>((typed_mut(out), ol), bits::<i32, u32>(v)),
                DType::I64 => copy::fill::<u64>((typed_mut(out), ol), bits::<i64, u64>(v)),
            }
            Ok(())
        }
        Op::Reduce { op: rop, input, out: _, axis } => {
            let a = get(input)?;
            let max = *rop == ReduceOp::ArgMax;
            with_float!(input.dtype, T => {
                let a = (typed::<T>(a), &input.layout);
                let done = if rop.is_arg() {
                    reduce::arg_extremum::<T>(max, a, (typed_mut(out), ol), *axis, env.scratch)
                } else {
                    reduce::reduce::<T>(*rop, a, (typed_mut(out), ol), *axis, env.scratch)
                };
                done.map_err(|_| env.oom(op))
            }, with_int!(input.dtype, T => {
                let a = (typed::<T>(a), &input.layout);
                if rop.is_arg() {
                    reduce::arg_extremum_int::<T>(max, a, (typed_mut(out), ol), *axis);
                } else {
                    reduce::reduce_int::<T>(*rop, a, (typed_mut(out), ol), *axis);
                }
                Ok(())
            }, Err(not_float(input.dtype))))
        }
        Op::Attention { q, k, v, out: _, scale, causal } => {
            let (a, b, c) = (get(q)?, get(k)?, get(v)?);
            with_float!(ov.dtype, T => {
                attention::forward::<T>(
                    [(typed(a), &q.layout), (typed(b), &k.layout), (typed(c), &v.layout)],
                    (typed_mut(out), ol),
                    *scale as f32,
                    *causal,
                )
                .map_err(|_| env.oom(op))
            }, Err(not_float(ov.dtype)))
        }
        Op::AttentionBackward { q, k, v, d_out, out: _, scale, causal } => {
            let (a, b, c, g) = (get(q)?, get(k)?, get(v)?, get(d_out)?);
            with_float!(ov.dtype, T => {
                attention::backward::<T>(
                    [
                        (typed(a), &q.layout),
                        (typed(b), &k.layout),
                        (typed(c), &v.layout),
                        (typed(g), &d_out.layout),
                    ],
                    (typed_mut(out), ol),
                    *scale as f32,
                    *causal,
                )
                .map_err(|_| env.oom(op))
            }, Err(not_float(ov.dtype)))
        }
        Op::Softmax { input, out: _, axis, log } => {
            let a = get(input)?;
            with_float!(ov.dtype, T => softmax::softmax::<T>(
                (typed(a), &input.layout),
                (typed_mut(out), ol),
                *axis,
                *log,
                env.scratch,
            )
            .map_err(|_| env.oom(op)), Err(not_float(ov.dtype)))
        }
        Op::IndexSelect { input, indices, out: _, axis } => {
            let (a, x) = (get(input)?, get(indices)?);
            let xl = index::broadcast_indices(&indices.layout, ol.dims(), *axis);
            with_any!(ov.dtype, T => with_index!(indices.dtype, X => index::gather::<T, X>(
                (typed(a), &input.layout),
                (typed(x), &xl),
                (typed_mut(out), ol),
                *axis,
            )))
            .map_err(|e| env.index_error(op, e))
        }
        Op::Gather { input, indices, out: _, axis } => {
            let (a, x) = (get(input)?, get(indices)?);
            with_any!(ov.dtype, T => with_index!(indices.dtype, X => index::gather::<T, X>(
                (typed(a), &input.layout),
                (typed(x), &indices.layout),
                (typed_mut(out), ol),
                *axis,
            )))
            .map_err(|e| env.index_error(op, e))
        }
        Op::IndexAdd { src, indices, out: _, axis } => {
            if src.numel() == 0 {
                return Ok(());
            }
            let (s, x) = (get(src)?, get(indices)?);
            let xl = index::broadcast_indices(&indices.layout, src.dims(), *axis);
            with_float!(ov.dtype, T => with_index!(indices.dtype, X => index::scatter_add::<T, X>(
                (typed(s), &src.layout),
                (typed(x), &xl),
                (typed_mut(out), ol),
                *axis,
                env.scratch,
            ))
            .map_err(|e| env.index_error(op, e)), Err(not_float(ov.dtype)))
        }
        Op::ArgSort { input, out: _, axis, descending } => {
            let a = get(input)?;
            with_any!(input.dtype, T => sort::argsort::<T>(
                (typed(a), &input.layout),
                (typed_mut(out), ol),
                *axis,
                *descending,
            ));
            Ok(())
        }
        Op::Scatter { op: sop, src, indices, out: _, axis } => {
            if src.numel() == 0 {
                return Ok(());
            }
            let (s, x) = (get(src)?, get(indices)?);
            let (sl, xl) = (&src.layout, &indices.layout);
            with_float!(ov.dtype, T => with_index!(indices.dtype, X => index::scatter::<T, X>(
                (typed(s), sl),
                (typed(x), xl),
                (typed_mut(out), ol),
                *axis,
                index::float_combine::<T>(*sop),
            )), with_int!(ov.dtype, T => with_index!(indices.dtype, X => index::scatter::<T, X>(
                (typed(s), sl),
                (typed(x), xl),
                (typed_mut(out), ol),
                *axis,
                index::int_combine::<T>(*sop),
            )), Ok(())))
            .map_err(|e| env.index_error(op, e))
        }
        Op::ScatterAdd { src, indices, out: _, axis } => {
            if src.numel() == 0 {
                return Ok(());
            }
            let (s, x) = (get(src)?, get(indices)?);
            with_float!(ov.dtype, T => with_index!(indices.dtype, X => index::scatter_add::<T, X>(
                (typed(s), &src.layout),
                (typed(x), &indices.layout),
                (typed_mut(out), ol),
                *axis,
                env.scratch,
            ))
            .map_err(|e| env.index_error(op, e)), Err(not_float(ov.dtype)))
        }
    }
}

/// A fused program's inputs as their stored float types.
fn fused_sources<'v, 'b>(
    inputs: &'v [View],
    get: &impl Fn(&View) -> Result<&'b [u64]>,
    not_float: &impl Fn(DType) -> Error,
) -> Result<Vec<(fused::Src<'b>, &'v Layout)>> {
    inputs
        .iter()
        .map(|v| {
            let src = fused::Src::new(get(v)?, v.dtype).ok_or_else(|| not_float(v.dtype))?;
            Ok((src, &v.layout))
        })
        .collect()
}

fn env_missing(label: &str, op: &Op, v: &View) -> Error {
    Error::Fault {
        op: op.name(),
        device: label.into(),
        detail: format!(
            "buffer {} has no storage (freed, or its allocation failed); {}",
            v.buffer.index,
            op.describe()
        ),
    }
}
