//! Pure tests of the lowering: every op lowers, every placeholder is filled, keys follow
//! the specialisation. (The kernels themselves run in the wgpu backend's conformance test.)

use manychips_api::{
    BinaryOp, BufferId, CompareOp, DType, DeviceId, Layout, Op, ReduceOp, ScatterOp, UnaryOp, View,
};

use super::elementwise::cast_expr;
use super::movement::bits_of;
use crate::{Features, MatmulKernel, Slot, lower};

fn features(matmul: MatmulKernel) -> Features {
    Features {
        shader_f16: false,
        max_storage_binding: 128 << 20,
        max_workgroups_per_dim: 65535,
        matmul,
        cpu_backed: false,
    }
}

fn view(index: u64, dims: &[usize], dtype: DType) -> View {
    let device = DeviceId::fresh();
    View::new(BufferId { device, index }, Layout::contiguous(dims), dtype)
}

fn every_op(dtype: DType) -> Vec<Op> {
    let a = view(0, &[3, 5], dtype);
    let b = view(1, &[3, 5], dtype);
    let o = view(2, &[3, 5], dtype);
    let idx = view(3, &[4], DType::U32);
    vec![
        Op::Matmul { lhs: a.clone(), rhs: view(1, &[5, 4], dtype), out: view(2, &[3, 4], dtype) },
        Op::Binary { op: BinaryOp::Add, lhs: a.clone(), rhs: b.clone(), out: o.clone() },
        Op::Compare {
            op: CompareOp::Lt,
            lhs: a.clone(),
            rhs: b.clone(),
            out: view(2, &[3, 5], DType::U8),
        },
        Op::Unary { op: UnaryOp::GeluErf, input: a.clone(), out: o.clone() },
        Op::Affine { input: a.clone(), out: o.clone(), mul: 2.0, add: 1.0 },
        Op::Reduce {
            op: ReduceOp::ArgMax,
            input: a.clone(),
            out: view(2, &[3, 1], DType::U32),
            axis: 1,
        },
        Op::Reduce { op: ReduceOp::Mean, input: a.clone(), out: view(2, &[1, 5], dtype), axis: 0 },
        Op::Softmax { input: a.clone(), out: o.clone(), axis: 1, log: true },
        Op::Cast { input: a.clone(), out: view(2, &[3, 5], DType::U8) },
        Op::Copy { input: a.clone(), out: o.clone() },
        Op::Concat { inputs: vec![a.clone(), b.clone()], out: view(2, &[6, 5], dtype), axis: 0 },
        Op::IndexSelect {
            input: a.clone(),
            indices: idx.clone(),
            out: view(2, &[4, 5], dtype),
            axis: 0,
        },
        Op::Gather {
            input: a.clone(),
            indices: view(3, &[3, 5], DType::U32),
            out: o.clone(),
            axis: 1,
        },
        Op::IndexAdd { src: view(0, &[4, 5], dtype), indices: idx, out: o.clone(), axis: 0 },
        Op::ScatterAdd {
            src: a.clone(),
            indices: view(3, &[3, 5], DType::U32),
            out: o.clone(),
            axis: 1,
        },
        Op::Scatter {
            op: ScatterOp::Max,
            src: view(0, &[3, 4], dtype),
            indices: view(3, &[3, 4], DType::I32),
            out: o.clone(),
            axis: 1,
        },
        Op::ArgSort {
            input: a.clone(),
            out: view(2, &[3, 5], DType::U32),
            axis: 1,
            descending: true,
        },
        Op::Where { cond: view(0, &[3, 5], DType::U8), on_true: a, on_false: b, out: o.clone() },
        Op::Fill { out: o, value: 1.5 },
    ]
}

#[test]
fn every_op_lowers_for_every_float_dtype_and_kernel() {
    for dtype in DType::FLOATS {
        for mm in [MatmulKernel::Naive, MatmulKernel::RegisterBlocked, MatmulKernel::SharedTiles] {
            for op in every_op(dtype) {
                assert!(op.validate("test").is_ok(), "{}", op.describe());
                let lowered = lower(&op, &features(mm));
                let lowered = match lowered {
                    Ok(l) => l,
                    Err(e) => panic!("{}: {e}", op.describe()),
                };
                assert!(!lowered.dispatches.is_empty(), "{}", op.describe());
                let mut statuses = 0;
                for d in &lowered.dispatches {
                    assert!(!d.source.contains("{{"), "{}", op.describe());
                    assert!(d.source.contains(&format!("fn {}(", d.entry)));
                    assert_eq!(d.params.len(), crate::PARAM_WORDS);
                    statuses += d.bindings.iter().filter(|b| b.slot == Slot::Status).count();
                    for b in &d.bindings {
                        if let Slot::Temporary(i) = b.slot {
                            assert!(i < lowered.temporaries.len());
                        }
                    }
                }
                let indexed = matches!(
                    op,
                    Op::IndexSelect { .. }
                        | Op::Gather { .. }
                        | Op::IndexAdd { .. }
                        | Op::ScatterAdd { .. }
                        | Op::Scatter { .. }
                );
                assert_eq!(statuses, usize::from(indexed));
            }
        }
    }
}

#[test]
fn keys_follow_the_specialisation() {
    let f = features(MatmulKernel::RegisterBlocked);
    let key = |op: &Op| lower(op, &f).map(|l| l.dispatches[0].key.clone()).ok();
    let add = |dtype, dims: &[usize]| Op::Binary {
        op: BinaryOp::Add,
        lhs: view(0, dims, dtype),
        rhs: view(1, dims, dtype),
        out: view(2, dims, dtype),
    };
    // Shapes travel in the params, dtypes in the source.
    assert_eq!(key(&add(DType::F32, &[3])), key(&add(DType::F32, &[7, 9])));
    assert_ne!(key(&add(DType::F32, &[3])), key(&add(DType::F16, &[3])));
}

#[test]
fn empty_outputs_lower_to_nothing() {
    let op = Op::Fill { out: view(0, &[0, 3], DType::F32), value: 1.0 };
    let lowered = lower(&op, &features(MatmulKernel::Naive));
    assert!(lowered.is_ok_and(|l| l.dispatches.is_empty()));
}

#[test]
fn oversized_views_are_refused() {
    let op = Op::Fill { out: view(0, &[64 << 20], DType::F32), value: 1.0 };
    let err = lower(&op, &features(MatmulKernel::Naive));
    assert!(err.is_err_and(|e| e.to_string().contains("fill")));
}

#[test]
fn fill_bits_round_like_cast() {
    let bits = |v: f64, d: DType| bits_of(v, d).ok();
    assert_eq!(bits(1.5, DType::F32), Some(1.5f32.to_bits()));
    assert_eq!(bits(2049.0, DType::F16), Some(0x6800));
    assert_eq!(bits(-1.0, DType::BF16), Some(0xbf80));
    assert_eq!(bits(300.0, DType::U8), Some(255));
    assert_eq!(bits(-3.0, DType::U32), Some(0));
    assert_eq!(bits(-3.7, DType::I32), Some((-3i32) as u32));
    assert_eq!(bits(-1e12, DType::I32), Some(i32::MIN as u32));
    assert_eq!(bits(f64::NAN, DType::I32), Some(0));
    assert!(bits(1.0, DType::I64).is_none());
}

#[test]
fn cast_expressions_cover_every_pair() {
    for from in crate::DTYPES {
        for to in crate::DTYPES {
            let e = cast_expr(from, to).unwrap_or_default();
            assert!(e.contains('v'), "{from}->{to}: {e}");
        }
    }
    let cast = |from, to| cast_expr(from, to).ok();
    assert_eq!(cast(DType::U32, DType::U8).as_deref(), Some("min(v, 255u)"));
    assert_eq!(cast(DType::F16, DType::BF16).as_deref(), Some("f32_to_bf16(f16_to_f32(v))"));
    // Saturating: a negative i32 is 0 as unsigned; a large u32 is i32::MAX.
    let neg = Some("select(min(v, 255u), 0u, v >= 0x80000000u)");
    assert_eq!(cast(DType::I32, DType::U8).as_deref(), neg);
    assert_eq!(cast(DType::U32, DType::I32).as_deref(), Some("min(v, 2147483647u)"));
    assert_eq!(cast(DType::U8, DType::I32).as_deref(), Some("v"));
    assert!(cast(DType::I64, DType::I32).is_none() && cast(DType::F32, DType::I64).is_none());
}

#[test]
fn contiguous_packed_outputs_are_written_by_whole_words() {
    let f = features(MatmulKernel::Naive);
    let add = |out: View| Op::Binary {
        op: BinaryOp::Add,
        lhs: view(0, &[3, 5], DType::F16),
        rhs: view(1, &[3, 5], DType::F16),
        out,
    };
    let dense = lower(&add(view(2, &[3, 5], DType::F16)), &f).ok().map(|l| l.dispatches);
    let dense = dense.unwrap_or_default();
    assert!(dense[0].source.contains("var<storage, read_write> b2: array<u32>;"));
    assert!(!dense[0].source.contains("array<atomic"));
    // 15 halves from element 0: 8 words.
    assert_eq!(dense[0].params[5], 2);
    let mut strided = view(2, &[3, 5], DType::F16);
    strided.layout = strided.layout.transposed(0, 1).transposed(0, 1);
    strided.layout.strides = vec![10, 2];
    let sparse = lower(&add(strided), &f).ok().map(|l| l.dispatches).unwrap_or_default();
    assert!(sparse[0].source.contains("array<atomic<u32>>"));
}

#[test]
fn dense_and_scalar_operands_take_the_flat_kernel() {
    let f = features(MatmulKernel::Naive);
    let add = |lhs: View, rhs: View| Op::Binary {
        op: BinaryOp::Add,
        lhs,
        rhs,
        out: view(2, &[3, 5], DType::F32),
    };
    let first = |op: &Op| lower(op, &f).ok().and_then(|l| l.dispatches.into_iter().next());
    let dense = view(0, &[3, 5], DType::F32);
    // A narrowed operand (offset 5) is still dense; the step mask has both inputs and the
    // output; 15 elements at 4 per invocation: 4 invocations.
    let mut shifted = view(1, &[3, 5], DType::F32);
    shifted.layout.offset = 5;
    let d = first(&add(dense.clone(), shifted)).expect("lowers");
    assert!(d.source.contains("let apart = pw(2u);"));
    assert_eq!((d.params[7], d.params[2], d.workgroups), (0b111, 4, [1, 1, 1]));
    // One element broadcast over the whole output: it does not advance.
    let mut scalar = view(1, &[3, 5], DType::F32);
    scalar.layout.strides = vec![0, 0];
    let d = first(&add(dense.clone(), scalar)).expect("lowers");
    assert_eq!(d.params[7], 0b101);
    // A row repeated down the rows (a bias): dense with a period of one row.
    let mut row = view(1, &[3, 5], DType::F32);
    row.layout.strides = vec![0, 1];
    let d = first(&add(dense.clone(), row)).expect("lowers");
    assert!(d.source.contains("let apart = pw(2u);"));
    assert_eq!((d.params[7], d.params[52], d.params[53]), (0b111, 0, 5));
    // A column repeated along the rows, or a transposed operand: the strided kernel.
    for strides in [vec![1, 0], vec![1, 3]] {
        let mut other = view(1, &[3, 5], DType::F32);
        other.layout.strides = strides;
        let d = first(&add(dense.clone(), other)).expect("lowers");
        assert!(!d.source.contains("let apart = pw(2u);"), "{:?}", d.params);
    }
}

#[test]
fn aligned_32_bit_operands_take_a_vec4_at_a_time() {
    let f = features(MatmulKernel::Naive);
    let first = |op: &Op| lower(op, &f).ok().and_then(|l| l.dispatches.into_iter().next());
    let add = |lhs: View, rhs: View, dims: &[usize]| Op::Binary {
        op: BinaryOp::Add,
        lhs,
        rhs,
        out: view(2, dims, DType::F32),
    };
    let quad = |d: &crate::Dispatch| d.source.contains("var<private> c0: vec4<u32>;");
    // 4×8 dense f32, one input 8 elements in: one vec4 per invocation, 8 invocations; the
    // advancing inputs are loaded once, the output stored whole.
    let mut shifted = view(1, &[4, 8], DType::F32);
    shifted.layout.offset = 8;
    let d = first(&add(view(0, &[4, 8], DType::F32), shifted, &[4, 8])).expect("lowers");
    assert!(quad(&d) && d.source.contains("c1 = b1[(base.y >> 2u) + q];"), "{}", d.source);
    assert_eq!((d.params[7], d.params[2]), (0b111, 8));
    // A broadcast element is read as it is; only the dense input is a vec4.
    let mut scalar = view(1, &[4, 8], DType::F32);
    scalar.layout.strides = vec![0, 0];
    let d = first(&add(view(0, &[4, 8], DType::F32), scalar, &[4, 8])).expect("lowers");
    assert!(quad(&d) && !d.source.contains("c1 ="), "{}", d.source);
    // A bias row of 8 repeated down the rows: its vec4 is `q` modulo the row's 2 vec4s.
    let mut row = view(1, &[4, 8], DType::F32);
    row.layout.strides = vec![0, 1];
    let d = first(&add(view(0, &[4, 8], DType::F32), row, &[4, 8])).expect("lowers");
    assert!(d.source.contains("c1 = b1[(base.y >> 2u) + q % (pw(53u) >> 2u)];"), "{}", d.source);
    assert_eq!((d.params[7], d.params[53]), (0b111, 8));
    // Not a multiple of 4 elements, an offset off the vec4 grid, a row of 5 or a 16-bit
    // operand: the scalar `flat` kernel.
    let mut odd = view(1, &[4, 8], DType::F32);
    odd.layout.offset = 2;
    let mut row5 = view(1, &[4, 5], DType::F32);
    row5.layout.strides = vec![0, 1];
    let cases = [
        add(view(0, &[3, 5], DType::F32), view(1, &[3, 5], DType::F32), &[3, 5]),
        add(view(0, &[4, 8], DType::F32), odd, &[4, 8]),
        add(view(0, &[4, 5], DType::F32), row5, &[4, 5]),
        Op::Cast { input: view(0, &[4, 8], DType::F16), out: view(2, &[4, 8], DType::F32) },
    ];
    for op in cases {
        let d = first(&op).expect("lowers");
        assert!(!quad(&d) && d.source.contains("let apart = pw(2u);"), "{op:?}");
    }
}

#[test]
fn cpu_backed_drivers_give_many_moderate_rows_one_invocation_each() {
    let softmax = |rows: usize, len: usize| Op::Softmax {
        input: view(0, &[rows, len], DType::F32),
        out: view(1, &[rows, len], DType::F32),
        axis: 1,
        log: false,
    };
    let entry = |op: &Op, cpu_backed: bool| {
        let f = Features { cpu_backed, ..features(MatmulKernel::Naive) };
        lower(op, &f).ok().and_then(|l| l.dispatches.first().map(|d| d.entry)).unwrap_or("-")
    };
    let many = softmax(4096, 1024);
    assert_eq!((entry(&many, false), entry(&many, true)), ("wide", "short"));
    // Few rows keep their workgroups (the cores would idle), and so do rows longer than one
    // invocation's loop budget.
    assert_eq!(entry(&softmax(8, 1024), true), "wide");
    assert_eq!(entry(&softmax(1024, 30_000), true), "wide");
}

#[test]
fn loops_longer_than_llvmpipe_runs_are_refused() {
    let f = features(MatmulKernel::RegisterBlocked);
    let k = 300_000;
    let op = Op::Matmul {
        lhs: view(0, &[1, k], DType::F32),
        rhs: view(1, &[k, 1], DType::F32),
        out: view(2, &[1, 1], DType::F32),
    };
    assert!(lower(&op, &f).is_err_and(|e| e.to_string().contains("split the op")));
    let ok = Op::Matmul {
        lhs: view(0, &[1, 65537], DType::F32),
        rhs: view(1, &[65537, 1], DType::F32),
        out: view(2, &[1, 1], DType::F32),
    };
    assert!(lower(&ok, &f).is_ok());
    // Scatter-add cuts a long axis into several dispatches instead.
    let n = 100_000;
    let op = Op::IndexAdd {
        src: view(0, &[n], DType::F32),
        indices: view(1, &[n], DType::U32),
        out: view(2, &[3], DType::F32),
        axis: 0,
    };
    assert_eq!(lower(&op, &f).map(|l| l.dispatches.len()).ok(), Some(4));
}

#[test]
fn fused_programs_of_up_to_three_inputs_get_one_kernel() {
    use manychips_api::{BinaryOp, Instr, UnaryOp};
    let f = features(MatmulKernel::RegisterBlocked);
    let program = vec![
        Instr::Input(0),
        Instr::Input(1),
        Instr::Binary(BinaryOp::Mul, 0, 1),
        Instr::Unary(UnaryOp::Tanh, 2),
        Instr::Affine(3, 0.5, 0.5),
        Instr::Const(2.0),
        Instr::Binary(BinaryOp::Pow, 4, 5),
    ];
    let op = |inputs: usize| Op::Fused {
        inputs: (0..inputs as u64).map(|i| view(i, &[5, 7], DType::F32)).collect(),
        program: program.clone(),
        out: view(9, &[5, 7], DType::BF16),
    };
    let lowered = lower(&op(3), &f).expect("three inputs lower");
    assert_eq!(lowered.dispatches.len(), 1);
    let source = &lowered.dispatches[0].source;
    println!("{source}");
    assert!(source.contains("r6 = pow(x, y)"), "{source}");
    assert!(crate::fuses(&op(3)));
    assert!(!crate::fuses(&op(4)));
    assert!(lower(&op(4), &f).is_err());
}

/// An optimizer's update changes its constants every step (learning rate, bias
/// corrections): they travel as parameters, so every step reuses one compiled kernel.
#[test]
fn fused_constants_are_parameters_not_part_of_the_kernel() {
    use manychips_api::{BinaryOp, Instr};
    let f = features(MatmulKernel::RegisterBlocked);
    let op = |lr: f64| Op::Fused {
        inputs: vec![view(0, &[4, 6], DType::F32), view(1, &[4, 6], DType::F32)],
        program: vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Affine(1, lr, 0.0),
            Instr::Const(1.0 - lr),
            Instr::Binary(BinaryOp::Mul, 0, 3),
            Instr::Binary(BinaryOp::Sub, 4, 2),
        ],
        out: view(2, &[4, 6], DType::F32),
    };
    let (a, b) = (lower(&op(0.01), &f).unwrap(), lower(&op(0.02), &f).unwrap());
    let (a, b) = (&a.dispatches[0], &b.dispatches[0]);
    assert_eq!(a.key, b.key);
    assert_eq!(a.source, b.source);
    assert_ne!(a.params, b.params);
    assert!(a.params.contains(&0.01f32.to_bits()) && a.params.contains(&0.99f32.to_bits()));
    // More constants than free parameter words: the rest are literals, still one kernel.
    let many = Op::Fused {
        inputs: vec![view(0, &[3], DType::F32)],
        program: std::iter::once(Instr::Input(0))
            .chain((0..20).map(|k| Instr::Affine(k, 1.0 + k as f64, 0.5)))
            .collect(),
        out: view(1, &[3], DType::F32),
    };
    let lowered = lower(&many, &f).unwrap();
    assert!(lowered.dispatches[0].source.contains("bitcast<f32>"));
}

/// A fused reduction of up to three inputs is one reduce kernel that computes each element
/// from the program (constants as parameters); more inputs go to the decomposition.
#[test]
fn fused_reductions_of_up_to_three_inputs_get_one_kernel() {
    use manychips_api::{BinaryOp, Instr, ReduceOp};
    let f = features(MatmulKernel::RegisterBlocked);
    let op = |inputs: usize| Op::FusedReduce {
        inputs: (0..inputs as u64).map(|i| view(i, &[6, 300], DType::F32)).collect(),
        program: vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Binary(BinaryOp::Sub, 0, 1),
            Instr::Affine(2, 0.25, 0.0),
        ],
        op: ReduceOp::Mean,
        axis: 1,
        out: view(9, &[6, 1], DType::F32),
    };
    let lowered = lower(&op(3), &f).expect("three inputs lower");
    assert_eq!(lowered.dispatches.len(), 1);
    let d = &lowered.dispatches[0];
    assert!(d.source.contains("r2 = x - y") || d.source.contains("let y = r1"), "{}", d.source);
    assert!(d.params.contains(&0.25f32.to_bits()));
    assert_eq!(d.bindings.len(), 4, "three inputs and the output");
    assert!(crate::fuses(&op(3)));
    assert!(!crate::fuses(&op(4)));
    assert!(lower(&op(4), &f).is_err());
}

/// Every op an integer dtype takes, on `dtype` data (U8, U32 or I32).
fn every_integer_op(dtype: DType) -> Vec<Op> {
    let v = |index, dims: &[usize], d| view(index, dims, d);
    let (a, b, o) = (v(0, &[3, 5], dtype), v(1, &[3, 5], dtype), v(2, &[3, 5], dtype));
    let mut ops: Vec<Op> = BinaryOp::ALL
        .into_iter()
        .filter(|&op| op != BinaryOp::Pow)
        .map(|op| Op::Binary { op, lhs: a.clone(), rhs: b.clone(), out: o.clone() })
        .collect();
    for op in ReduceOp::ALL.into_iter().filter(|&op| op != ReduceOp::Mean) {
        let out = v(2, &[3, 1], if op.is_arg() { DType::U32 } else { dtype });
        ops.push(Op::Reduce { op, input: a.clone(), out, axis: 1 });
    }
    let mask = v(2, &[3, 5], DType::U8);
    ops.push(Op::Compare { op: CompareOp::Ge, lhs: a.clone(), rhs: b.clone(), out: mask });
    ops.push(Op::Cast { input: a.clone(), out: v(2, &[3, 5], DType::F16) });
    ops.push(Op::Fill { out: o.clone(), value: -2.0 });
    ops.push(Op::Concat { inputs: vec![a.clone(), b.clone()], out: v(2, &[6, 5], dtype), axis: 0 });
    let cond = v(0, &[3, 5], DType::U8);
    ops.push(Op::Where { cond, on_true: a.clone(), on_false: b, out: o.clone() });
    if dtype.is_index() {
        let f = |index, dims: &[usize]| v(index, dims, DType::F32);
        let idx = v(3, &[4], dtype);
        let out = v(2, &[4, 5], dtype);
        ops.push(Op::IndexSelect { input: a.clone(), indices: idx.clone(), out, axis: 0 });
        ops.push(Op::Gather {
            input: f(0, &[3, 5]),
            indices: a.clone(),
            out: f(2, &[3, 5]),
            axis: 1,
        });
        ops.push(Op::IndexAdd { src: f(0, &[4, 5]), indices: idx, out: f(2, &[3, 5]), axis: 0 });
        ops.push(Op::ScatterAdd { src: f(0, &[3, 5]), indices: a, out: f(2, &[3, 5]), axis: 1 });
    }
    for op in ScatterOp::ALL {
        let (src, out) = (v(0, &[3, 4], dtype), v(2, &[3, 5], dtype));
        ops.push(Op::Scatter { op, src, indices: v(1, &[3, 4], DType::U32), out, axis: 1 });
    }
    if dtype.is_signed_int() {
        for op in [UnaryOp::Neg, UnaryOp::Abs] {
            ops.push(Op::Unary { op, input: v(0, &[3, 5], dtype), out: o.clone() });
        }
    }
    ops
}

#[test]
fn every_integer_op_lowers_without_float_arithmetic() {
    let f = features(MatmulKernel::RegisterBlocked);
    for dtype in [DType::U8, DType::U32, DType::I32] {
        for op in every_integer_op(dtype) {
            assert!(op.validate("test").is_ok(), "{}", op.describe());
            let lowered = lower(&op, &f).unwrap_or_else(|e| panic!("{}: {e}", op.describe()));
            assert!(!lowered.dispatches.is_empty(), "{}", op.describe());
            for d in &lowered.dispatches {
                assert!(!d.source.contains("{{"), "{}", op.describe());
                // Integers stay integers: no element goes through f32.
                let exact = match op {
                    Op::Binary { .. } => d.source.contains("let x = ld0(o.x); let y = ld1(o.y);"),
                    Op::Reduce { .. } => d.source.contains("alias V = u32;"),
                    Op::Scatter { .. } => !d.source.contains("ldf2(at)"),
                    _ => true,
                };
                assert!(exact, "{}", op.describe());
            }
        }
    }
}

#[test]
fn integer_semantics_are_chosen_when_lowering() {
    let f = features(MatmulKernel::RegisterBlocked);
    let source = |op: &Op| lower(op, &f).map(|l| l.dispatches[0].source.to_string()).unwrap();
    let bin = |op, d| Op::Binary {
        op,
        lhs: view(0, &[4], d),
        rhs: view(1, &[4], d),
        out: view(2, &[4], d),
    };
    // Floor division and remainder by helpers; signed or unsigned by dtype; floats' own
    // helpers stay out of integer kernels.
    let s = source(&bin(BinaryOp::Div, DType::I32));
    assert!(s.contains("return div_i32(x, y);") && !s.contains("fn gelu_erf"), "{s}");
    assert!(source(&bin(BinaryOp::Rem, DType::U8)).contains("return rem_u32(x, y);"));
    assert!(source(&bin(BinaryOp::Max, DType::I32)).contains("max(bitcast<i32>(x)"));
    assert!(source(&bin(BinaryOp::Rem, DType::F32)).contains("out_bits(rem_f32(x, y))"));
    let lt = |d| Op::Compare {
        op: CompareOp::Lt,
        lhs: view(0, &[4], d),
        rhs: view(1, &[4], d),
        out: view(2, &[4], DType::U8),
    };
    assert!(source(&lt(DType::I32)).contains("bitcast<i32>(ld0(o.x)) < bitcast<i32>(ld1(o.y))"));
    assert!(source(&lt(DType::U32)).contains("ld0(o.x) < ld1(o.y)"));
    // Signed indices count from the end and are flagged as signed.
    let select = |d| Op::IndexSelect {
        input: view(0, &[5, 2], DType::F32),
        indices: view(1, &[3], d),
        out: view(2, &[3, 2], DType::F32),
        axis: 0,
    };
    assert!(source(&select(DType::I32)).contains("flag_signed_index(raw, len)"));
    assert!(!source(&select(DType::U32)).contains("flag_signed_index(raw, len);"));
    // Argmin is argmax's mirror: NaN passed over, the smaller value wins.
    let argmin = Op::Reduce {
        op: ReduceOp::ArgMin,
        input: view(0, &[3, 5], DType::F32),
        out: view(2, &[3, 1], DType::U32),
        axis: 1,
    };
    let s = source(&argmin);
    assert!(s.contains("return b < a;") && s.contains("return is_nan(v);"), "{s}");
}

#[test]
fn scatter_combines_as_the_op_and_dtype_say() {
    let f = features(MatmulKernel::RegisterBlocked);
    let scatter = |op, d, ix| Op::Scatter {
        op,
        src: view(0, &[3, 4], d),
        indices: view(1, &[3, 4], ix),
        out: view(2, &[3, 5], d),
        axis: 1,
    };
    let source = |op: &Op| {
        let l = lower(op, &f).unwrap_or_else(|e| panic!("{}: {e}", op.describe()));
        assert_eq!(l.dispatches.len(), 1, "{}", op.describe());
        assert!(l.temporaries.is_empty(), "{}", op.describe());
        assert_eq!(l.dispatches[0].entry, "scatter");
        l.dispatches[0].source.to_string()
    };
    // Only the scatter entry point, with one combination and no runtime choice of it.
    let s = source(&scatter(ScatterOp::Sum, DType::F16, DType::U32));
    assert!(s.contains("stf2(at, x + y);") && !s.contains("fn gather("), "{s}");
    assert!(s.contains("array<atomic<u32>>"), "packed outputs store atomically: {s}");
    let s = source(&scatter(ScatterOp::Assign, DType::BF16, DType::I32));
    assert!(s.contains("st2(at, ld0(s));") && s.contains("flag_signed_index(raw, len)"), "{s}");
    assert!(!s.contains("ld2(at)"), "an assignment reads no target: {s}");
    let s = source(&scatter(ScatterOp::Max, DType::I32, DType::U32));
    assert!(s.contains("st2(at, bitcast<u32>(max(bitcast<i32>(x), bitcast<i32>(y))));"), "{s}");
    let s = source(&scatter(ScatterOp::Prod, DType::U8, DType::U32));
    assert!(s.contains("let x = ld2(at); let y = ld0(s); st2(at, x * y);"), "{s}");
    assert!(source(&scatter(ScatterOp::Min, DType::F32, DType::U32)).contains("min(x, y)"));
    // Long axes take consecutive dispatches; empty sources none; I64 indices an error.
    let long = Op::Scatter {
        op: ScatterOp::Sum,
        src: view(0, &[2, 70_000], DType::U32),
        indices: view(1, &[2, 70_000], DType::U32),
        out: view(2, &[2, 5], DType::U32),
        axis: 1,
    };
    assert_eq!(lower(&long, &f).map(|l| l.dispatches.len()).ok(), Some(3));
    let empty = Op::Scatter {
        op: ScatterOp::Sum,
        src: view(0, &[3, 0], DType::F32),
        indices: view(1, &[3, 0], DType::U32),
        out: view(2, &[3, 5], DType::F32),
        axis: 1,
    };
    assert!(lower(&empty, &f).is_ok_and(|l| l.dispatches.is_empty()));
    let e = lower(&scatter(ScatterOp::Min, DType::F32, DType::I64), &f).unwrap_err();
    assert!(e.to_string().contains("scatter.min"), "{e}");
}

#[test]
fn i64_is_refused_with_the_op_named() {
    let f = features(MatmulKernel::RegisterBlocked);
    let add = Op::Binary {
        op: BinaryOp::Add,
        lhs: view(0, &[4], DType::I64),
        rhs: view(1, &[4], DType::I64),
        out: view(2, &[4], DType::I64),
    };
    let e = lower(&add, &f).unwrap_err();
    assert!(e.to_string().contains("binary.add") && e.to_string().contains("64-bit"), "{e}");
    let select = Op::IndexSelect {
        input: view(0, &[5, 2], DType::F32),
        indices: view(1, &[3], DType::I64),
        out: view(2, &[3, 2], DType::F32),
        axis: 0,
    };
    assert!(lower(&select, &f).is_err());
}

#[test]
fn bad_index_status_names_the_value_as_given() {
    let words = |w: [u32; 4]| -> Vec<u8> { w.iter().flat_map(|v| v.to_le_bytes()).collect() };
    assert_eq!(crate::bad_index(&words([0, 0, 0, 0])), None);
    let signed = crate::bad_index(&words([2, 0, (-7i32 as u32) ^ 0x8000_0000, 5]));
    let signed = signed.unwrap_or_default();
    assert!(signed.contains("-7") && signed.contains("length 5"), "{signed}");
    let both = crate::bad_index(&words([3, 9, (-7i32 as u32) ^ 0x8000_0000, 5]));
    assert!(both.is_some_and(|m| m.contains("9 and -7")));
}

#[test]
fn argsort_is_keys_then_bitonic_stages_then_write() {
    let f = features(MatmulKernel::Naive);
    let sort = |dims: &[usize], axis, dtype| {
        let op = Op::ArgSort {
            input: view(0, dims, dtype),
            out: view(1, dims, DType::U32),
            axis,
            descending: false,
        };
        assert!(op.validate("test").is_ok(), "{}", op.describe());
        lower(&op, &f)
    };
    // 5 lanes of 13, padded to 16: every stage in one tile dispatch.
    let l = sort(&[5, 13], 1, DType::F16).unwrap_or_default();
    assert_eq!(l.temporaries, vec![5 * 16 * 4; 2]);
    let entries: Vec<_> = l.dispatches.iter().map(|d| d.entry).collect();
    assert_eq!(entries, ["keys", "tile", "write"]);
    assert!(l.dispatches[0].source.contains("float_key(b << 16u, 0x7c000000u)"));
    // 3 lanes of 1500, padded to 2048: partners 512 or more apart take a dispatch each.
    let long = sort(&[1500, 3], 0, DType::I32).unwrap_or_default();
    let entries: Vec<_> = long.dispatches.iter().map(|d| d.entry).collect();
    assert_eq!(entries, ["keys", "tile", "stage", "tile", "stage", "stage", "tile", "write"]);
    assert_eq!(
        [4, 5].map(|i| (long.dispatches[i].params[4], long.dispatches[i].params[3])),
        [(2048, 1024), (2048, 512)]
    );
    // One stage kernel and one tile kernel for every dtype; the keys follow the dtype.
    assert_eq!(long.dispatches[2].key, long.dispatches[4].key);
    assert!(long.dispatches[0].source.contains("b ^ 0x80000000u"));
    let f32s = sort(&[1500, 3], 0, DType::F32).unwrap_or_default();
    assert_ne!(f32s.dispatches[0].key, long.dispatches[0].key);
    assert_eq!(f32s.dispatches[1].key, long.dispatches[1].key);
    assert_eq!(f32s.dispatches[2].key, long.dispatches[2].key);
    // CPU-backed drivers: no barriers, every stage a dispatch (4·5/2 for 16).
    let cpu = Features { cpu_backed: true, ..f.clone() };
    let op = Op::ArgSort {
        input: view(0, &[5, 13], DType::U8),
        out: view(1, &[5, 13], DType::U32),
        axis: 1,
        descending: true,
    };
    let l = lower(&op, &cpu).unwrap_or_default();
    let entries: Vec<_> = l.dispatches.iter().map(|d| d.entry).collect();
    assert_eq!(entries.len(), 12);
    assert_eq!((entries[0], entries[11]), ("keys", "write"));
    assert!(entries[1..11].iter().all(|&e| e == "stage"));
    assert_eq!(l.dispatches[0].params[4], u32::MAX);
    // Lanes of one: no stage.
    let one = sort(&[4, 1], 1, DType::F32).unwrap_or_default();
    assert_eq!(one.dispatches.iter().map(|d| d.entry).collect::<Vec<_>>(), ["keys", "write"]);
    // Empty lanes: nothing.
    assert!(sort(&[0, 5], 1, DType::F32).is_ok_and(|l| l.dispatches.is_empty()));
    // Scratch past the binding limit is an error naming the op.
    let e = sort(&[40, 1 << 20], 1, DType::U8).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("argsort") && e.contains("split"), "{e}");
}
