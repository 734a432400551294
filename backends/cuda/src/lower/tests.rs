//! Every op of the contract, in every dtype it allows, lowers to entry points that exist
//! (the table the NVRTC test checks against the PTX), with the ABI's arity, the status words
//! last where the kernel takes them, and launch shapes the kernels accept; and every entry
//! point is reached by some op.

use std::collections::HashSet;

use manychips_api::{
    BinaryOp, BufferId, CompareOp, DType, DeviceId, Layout, Op, ReduceOp, ScatterOp, UnaryOp, View,
};

use super::*;
use crate::kernels::{all_kernels, signed_unary};

fn v(index: u64, dims: &[usize], dtype: DType) -> View {
    View::new(BufferId { device: DeviceId::fresh(), index }, Layout::contiguous(dims), dtype)
}

/// Every op variant with every dtype its contract allows, in shapes that exercise both
/// reduction teams.
fn every_op() -> Vec<Op> {
    let mut ops = Vec::new();
    for t in DType::ALL {
        let x = |i| v(i, &[4, 8], t);
        for c in CompareOp::ALL {
            ops.push(Op::Compare { op: c, lhs: x(0), rhs: x(1), out: x(2) });
            ops.push(Op::Compare { op: c, lhs: x(0), rhs: x(1), out: v(2, &[4, 8], DType::U8) });
        }
        for d in DType::ALL {
            ops.push(Op::Cast { input: x(0), out: v(1, &[4, 8], d) });
        }
        ops.push(Op::Copy { input: x(0), out: x(1) });
        ops.push(Op::Concat {
            inputs: vec![x(0), v(1, &[4, 2], t)],
            out: v(2, &[4, 10], t),
            axis: 1,
        });
        ops.push(Op::Where {
            cond: v(0, &[4, 8], DType::U8),
            on_true: x(1),
            on_false: x(2),
            out: x(3),
        });
        ops.push(Op::Fill { out: x(0), value: 2.5 });
        for i in DType::INDICES {
            let idx = v(1, &[3], i);
            ops.push(Op::IndexSelect { input: x(0), indices: idx, out: v(2, &[3, 8], t), axis: 0 });
            ops.push(Op::Gather { input: x(0), indices: v(1, &[4, 8], i), out: x(2), axis: 1 });
            for op in ScatterOp::ALL {
                let (src, indices) = (v(0, &[3, 8], t), v(1, &[3, 8], i));
                ops.push(Op::Scatter { op, src, indices, out: x(2), axis: 0 });
            }
        }
        for u in UnaryOp::ALL.into_iter().filter(|&u| t.is_float() || signed_unary(u, t)) {
            ops.push(Op::Unary { op: u, input: x(0), out: x(1) });
        }
        for b in BinaryOp::ALL.into_iter().filter(|&b| t.is_float() || b != BinaryOp::Pow) {
            ops.push(Op::Binary { op: b, lhs: x(0), rhs: x(1), out: x(2) });
        }
        for (dims, axis) in [(vec![1000, 8], 1), (vec![2, 5000], 1)] {
            let mut out_dims = dims.clone();
            out_dims[axis] = 1;
            for r in ReduceOp::ALL.into_iter().filter(|&r| t.is_float() || r != ReduceOp::Mean) {
                let o = if r.is_arg() { DType::U32 } else { t };
                ops.push(Op::Reduce {
                    op: r,
                    input: v(0, &dims, t),
                    out: v(1, &out_dims, o),
                    axis,
                });
            }
            if !t.is_float() {
                continue;
            }
            for log in [false, true] {
                ops.push(Op::Softmax { input: v(0, &dims, t), out: v(1, &dims, t), axis, log });
            }
        }
        for (dims, axis) in [(vec![4, 8], 1), (vec![4, 1], 1), (vec![2, 5000], 1)] {
            for descending in [false, true] {
                let (input, out) = (v(0, &dims, t), v(1, &dims, DType::U32));
                ops.push(Op::ArgSort { input, out, axis, descending });
            }
        }
        if !t.is_float() {
            continue;
        }
        ops.push(Op::Affine { input: x(0), out: x(1), mul: 2.0, add: 1.0 });
        let src = v(0, &[3, 8], t);
        for i in DType::INDICES {
            let indices = v(1, &[3], i);
            ops.push(Op::IndexAdd { src: src.clone(), indices, out: x(2), axis: 0 });
            let indices = v(1, &[3, 8], i);
            ops.push(Op::ScatterAdd { src: src.clone(), indices, out: x(2), axis: 0 });
        }
        ops.push(Op::Matmul {
            lhs: v(0, &[4, 5], t),
            rhs: v(1, &[5, 6], t),
            out: v(2, &[4, 6], t),
        });
    }
    ops
}

fn configs() -> Vec<Config> {
    let mut all = Vec::new();
    for cublas in [true, false] {
        for scatter in [ScatterKernel::Deterministic, ScatterKernel::Atomic, ScatterKernel::Auto] {
            all.push(Config { sm_count: 132, cublas, tf32: false, scatter });
        }
    }
    all
}

#[test]
fn every_op_and_dtype_lowers_to_known_entry_points_with_the_abi() {
    let known: HashSet<String> = all_kernels().iter().map(Kernel::name).collect();
    let mut reached: HashSet<String> = HashSet::new();
    let mut gemms = 0;
    for op in every_op() {
        op.validate("test").unwrap_or_else(|e| panic!("{e}"));
        for cfg in configs() {
            let plan = lower(&op, &cfg).unwrap_or_else(|e| panic!("{e}"));
            assert!(!plan.steps.is_empty(), "{}", op.describe());
            for step in &plan.steps {
                let Step::Launch(l) = step else {
                    gemms += 1;
                    assert!(cfg.cublas && matches!(op, Op::Matmul { .. }));
                    continue;
                };
                let name = l.kernel.name();
                assert!(known.contains(&name), "{name} is not an entry point; {}", op.describe());
                reached.insert(name.clone());
                assert_eq!(l.args.len(), l.kernel.pointer_args(), "{name}");
                assert_eq!(l.args.last() == Some(&Arg::Status), l.kernel.uses_status(), "{name}");
                let [bx, by, bz] = l.block;
                assert!(bx * by * bz <= 1024 && l.grid.iter().all(|&g| g >= 1), "{name}");
                assert!(l.grid[1] <= 65535 && l.grid[2] <= 65535, "{name}");
                if l.kernel.team().is_some() {
                    assert_eq!((bx % 32, by, bz), (0, 1, 1), "{name}");
                }
                let rank = l.params.rank as usize;
                assert!(rank <= 8);
                assert_eq!(l.params.dims[..rank].iter().product::<u64>(), l.params.count, "{name}");
                for a in &l.args {
                    if let Arg::Temp(i) = a {
                        assert!(*i < plan.temps.len(), "{name}");
                    }
                }
            }
            assert_eq!(
                plan.uses_status(),
                matches!(
                    op,
                    Op::Gather { .. }
                        | Op::IndexSelect { .. }
                        | Op::IndexAdd { .. }
                        | Op::ScatterAdd { .. }
                        | Op::Scatter { .. }
                )
            );
        }
    }
    assert!(gemms > 0);
    let unreached: Vec<&String> = known.difference(&reached).collect();
    assert!(unreached.is_empty(), "entry points no op reaches: {unreached:?}");
}

#[test]
fn names_follow_the_readme_convention() {
    let cfg = Config { sm_count: 8, cublas: false, tf32: false, scatter: ScatterKernel::Auto };
    let name = |op: &Op| match &lower(op, &cfg).unwrap().steps[0] {
        Step::Launch(l) => l.kernel.name(),
        Step::Gemm(_) => "gemm".into(),
    };
    let x = |t| v(0, &[2, 3], t);
    assert_eq!(
        name(&Op::Unary { op: UnaryOp::GeluTanh, input: x(DType::BF16), out: x(DType::BF16) }),
        "unary_gelu_tanh_bf16"
    );
    assert_eq!(
        name(&Op::Binary {
            op: BinaryOp::Max,
            lhs: x(DType::F16),
            rhs: x(DType::F16),
            out: x(DType::F16)
        }),
        "binary_maximum_f16"
    );
    assert_eq!(
        name(&Op::Compare {
            op: CompareOp::Le,
            lhs: x(DType::U32),
            rhs: x(DType::U32),
            out: x(DType::U8)
        }),
        "compare_le_u32_u8"
    );
    assert_eq!(name(&Op::Cast { input: x(DType::BF16), out: x(DType::U8) }), "cast_bf16_u8");
    assert_eq!(
        name(&Op::Matmul {
            lhs: x(DType::F32),
            rhs: v(1, &[3, 2], DType::F32),
            out: v(2, &[2, 2], DType::F32)
        }),
        "matmul_tiled_f32"
    );
    let r = Op::Reduce {
        op: ReduceOp::ArgMax,
        input: x(DType::F16),
        out: v(1, &[2, 1], DType::U32),
        axis: 1,
    };
    assert_eq!(name(&r), "reduce_argmax_f16");
    let s = Op::Softmax {
        input: v(0, &[4096, 3], DType::F32),
        out: v(1, &[4096, 3], DType::F32),
        axis: 1,
        log: true,
    };
    assert_eq!(name(&s), "log_softmax_f32_warp");
    let sc = Op::Scatter {
        op: ScatterOp::Prod,
        src: v(0, &[2, 3], DType::I64),
        indices: v(1, &[2, 3], DType::I32),
        out: v(2, &[4, 3], DType::I64),
        axis: 0,
    };
    assert_eq!(name(&sc), "scatter_prod_i64_i32");
}

#[test]
fn scatter_is_one_launch_per_lane_into_out_itself() {
    let cfg = Config { sm_count: 8, cublas: true, tf32: false, scatter: ScatterKernel::Atomic };
    let op = Op::Scatter {
        op: ScatterOp::Sum,
        src: v(0, &[5, 3], DType::BF16),
        indices: v(1, &[5, 3], DType::I64),
        out: v(2, &[7, 3], DType::BF16),
        axis: 0,
    };
    let plan = lower(&op, &cfg).unwrap();
    assert!(plan.temps.is_empty());
    let [Step::Launch(l)] = &plan.steps[..] else { panic!("{plan:?}") };
    assert_eq!(l.kernel.name(), "scatter_sum_bf16_i64");
    // Three lanes; ext: out's axis length and stride, src's length and stride, indices' stride.
    assert_eq!(l.params.count, 3);
    assert_eq!(l.params.ext[..5], [7, 3, 5, 3, 3]);
    assert_eq!(l.args[2], Arg::Buffer(op.output().buffer));
    // An empty source does nothing.
    let empty = Op::Scatter {
        op: ScatterOp::Assign,
        src: v(0, &[0, 3], DType::U8),
        indices: v(1, &[0, 3], DType::U32),
        out: v(2, &[7, 3], DType::U8),
        axis: 0,
    };
    assert!(lower(&empty, &cfg).unwrap().steps.is_empty());
}

#[test]
fn fill_bits_are_cast_conversions_and_affine_scalars_are_f32() {
    assert_eq!(bits_of(1.5, DType::F32), u64::from(1.5f32.to_bits()));
    assert_eq!(bits_of(1.0, DType::F16), 0x3c00);
    assert_eq!(bits_of(1.0, DType::BF16), 0x3f80);
    assert_eq!(bits_of(-3.0, DType::U32), 0);
    assert_eq!(bits_of(300.0, DType::U8), 255);
    assert_eq!(bits_of(-3.7, DType::I32), u64::from((-3i32) as u32));
    assert_eq!(bits_of(-1e30, DType::I64), i64::MIN as u64);
    let cfg = Config { sm_count: 8, cublas: true, tf32: false, scatter: ScatterKernel::Auto };
    let op = Op::Affine {
        input: v(0, &[3], DType::F32),
        out: v(1, &[3], DType::F32),
        mul: 0.1,
        add: -2.0,
    };
    let Step::Launch(l) = &lower(&op, &cfg).unwrap().steps[0] else { panic!() };
    assert_eq!((l.params.mul, l.params.add), (0.1f32, -2.0f32));
}

#[test]
fn half_scatters_accumulate_in_an_f32_temporary() {
    let cfg =
        Config { sm_count: 8, cublas: true, tf32: false, scatter: ScatterKernel::Deterministic };
    let out = v(2, &[6, 4], DType::BF16);
    let op = Op::IndexAdd {
        src: v(0, &[3, 4], DType::BF16),
        indices: v(1, &[3], DType::U32),
        out,
        axis: 0,
    };
    let plan = lower(&op, &cfg).unwrap();
    assert_eq!(plan.temps, vec![6 * 4 * 4]);
    let names: Vec<String> = plan
        .steps
        .iter()
        .map(|s| match s {
            Step::Launch(l) => l.kernel.name(),
            Step::Gemm(_) => "gemm".into(),
        })
        .collect();
    assert_eq!(names, ["cast_bf16_f32", "index_add_bf16_u32", "cast_f32_bf16"]);
    // k = 0 on the cuBLAS path is a fill of zeros.
    let mm = Op::Matmul {
        lhs: v(0, &[2, 0], DType::F32),
        rhs: v(1, &[0, 3], DType::F32),
        out: v(2, &[2, 3], DType::F32),
    };
    let Step::Launch(l) = &lower(&mm, &cfg).unwrap().steps[0] else { panic!() };
    assert_eq!((l.kernel, l.params.bits), (Kernel::Fill(DType::F32), 0));
}

#[test]
fn argsort_is_keys_then_the_network_then_a_copy() {
    let cfg = Config { sm_count: 8, cublas: true, tf32: false, scatter: ScatterKernel::Auto };
    let names = |plan: &Plan| -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::Launch(l) => l.kernel.name(),
                Step::Gemm(_) => "gemm".into(),
            })
            .collect()
    };
    let sort = |dims: &[usize], axis: usize, t: DType| Op::ArgSort {
        input: v(0, dims, t),
        out: v(1, dims, DType::U32),
        axis,
        descending: true,
    };
    // 3 lanes of 100 along axis 0: m = 128, every stage inside one tile.
    let op = sort(&[100, 3], 0, DType::I64);
    let plan = lower(&op, &cfg).unwrap();
    assert_eq!(names(&plan), ["argsort_keys_i64", "argsort_tile", "copy_u32"]);
    assert_eq!(plan.temps, vec![3 * 128 * 8, 3 * 128 * 4]);
    let Step::Launch(keys) = &plan.steps[0] else { panic!() };
    assert_eq!(keys.params.count, 3 * 128);
    assert_eq!(keys.params.ext[..3], [100, 128, 1]);
    assert_eq!(keys.args, [Arg::Buffer(op.inputs()[0].buffer), Arg::Temp(0), Arg::Temp(1)]);
    let Step::Launch(tile) = &plan.steps[1] else { panic!() };
    assert_eq!(tile.params.ext[..4], [7, 2, 128, 3 * 128]);
    // m = 8192: the tile stages to 2048, then for k = 4096 and 8192 the global stages
    // j >= 2048 (one and two) each followed by a tile launch.
    let plan = lower(&sort(&[2, 5000], 1, DType::BF16), &cfg).unwrap();
    let want = [
        "argsort_keys_bf16",
        "argsort_tile",
        "argsort_merge",
        "argsort_tile",
        "argsort_merge",
        "argsort_merge",
        "argsort_tile",
        "copy_u32",
    ];
    assert_eq!(names(&plan), want);
    // Lanes of one element: a fill of zeros.
    assert_eq!(names(&lower(&sort(&[4, 1], 1, DType::U8), &cfg).unwrap()), ["fill_u32"]);
}
