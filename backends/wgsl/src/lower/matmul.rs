//! Batched matmul: the kernels of kernels/wgsl/matmul.wgsl, picked by
//! [`Features::matmul`](crate::Features) (and, for register blocking, by the output's size).

use manychips_api::{DType, Op, Result};

use super::{MAX_LOOP_ITERATIONS, too_long};
use crate::kernel::{Kernel, Operand};
use crate::params::{Params, Strided, word};
use crate::{Dispatch, Features, MatmulKernel};

const SOURCE: &str = include_str!("../../../../kernels/wgsl/matmul.wgsl");
const EXTRA: usize = 52;

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    let Op::Matmul { lhs, rhs, out } = op else { return Ok(Vec::new()) };
    let rank = out.dims().len();
    let b = rank - 2;
    let (m, k, n) = (lhs.dims()[b], lhs.dims()[b + 1], rhs.dims()[b + 1]);
    let batch: usize = out.dims()[..b].iter().product();
    let ops: Vec<Strided> = [lhs, rhs, out]
        .iter()
        .map(|v| Strided::new(v.layout.offset, v.layout.strides[..b].to_vec()))
        .collect();
    let mut params = Params::strided(op, batch, &out.dims()[..b], &ops)?;
    for (i, (what, v)) in [("m", m), ("n", n), ("k", k)].into_iter().enumerate() {
        params.set(2 + i, word(op, what, v)?)?;
    }
    for (i, v) in [lhs, rhs, out].into_iter().enumerate() {
        params.set(EXTRA + 2 * i, word(op, "stride", v.layout.strides[b])?)?;
        params.set(EXTRA + 2 * i + 1, word(op, "stride", v.layout.strides[b + 1])?)?;
    }
    // Each kernel's block of outputs per workgroup, rows × columns.
    let (entry, tile) = match f.matmul {
        MatmulKernel::Naive => ("naive", [16, 16]),
        MatmulKernel::RegisterBlocked if fills_wide_blocks(m, n) => ("blocked_wide", [128, 128]),
        MatmulKernel::RegisterBlocked => ("blocked", [32, 32]),
        MatmulKernel::SharedTiles => ("tiled", [128, 256]),
    };
    // k steps per loop iteration of each kernel.
    let per_iteration = if entry == "tiled" { 8 } else { 4 };
    let limit = per_iteration * MAX_LOOP_ITERATIONS;
    if k > limit {
        return Err(too_long(op, "an inner dimension", k, limit));
    }
    let max = f.max_workgroups_per_dim.max(1) as usize;
    let workgroups =
        [n_groups(n, tile[1], max), n_groups(m, tile[0], max), batch.clamp(1, max) as u32];
    // The naive kernel loads one element at a time; the others four where the layout lets.
    let vectors = entry != "naive";
    let vec_a = vectors && vector_k(lhs);
    let vec_b = vectors && vector_rows(rhs);
    let mut lhs_operand = Operand::input(lhs);
    lhs_operand.vector = vec_a;
    let mut rhs_operand = Operand::input(rhs);
    rhs_operand.vector = vec_b;
    let whole_tiles = m.is_multiple_of(tile[0]) && n.is_multiple_of(tile[1]) && k.is_multiple_of(8);
    let subs = [
        (
            "TILE_LOADS",
            if whole_tiles && vec_a && vec_b { "tile_loads_whole" } else { "tile_loads_checked" },
        ),
        ("LOAD_A4", if vec_a { "mm_a4_vector" } else { "mm_a4_scalar" }),
        ("LOAD_B4", if vec_b { "mm_b4_vector" } else { "mm_b4_scalar" }),
        ("TILE_A4", if vec_a { "mm_a4_vector" } else { "mm_a4_scalar" }),
        ("TILE_B4", if vec_b { "mm_b4_vector" } else { "mm_b4_scalar" }),
        ("A4_VECTOR", if vec_a { "bitcast<vec4<f32>>(b0[at >> 2u])" } else { "mm_a4_scalar(at)" }),
        (
            "B4_VECTOR",
            if vec_b {
                "bitcast<vec4<f32>>(b1[(bc.x + bk) >> 2u])"
            } else {
                "mm_b4_scalar(bc, bk)"
            },
        ),
    ];
    let kernel = Kernel {
        family: "matmul",
        source: &[SOURCE],
        entry,
        operands: vec![lhs_operand, rhs_operand, Operand::output(out)],
        status: false,
        subs: &subs,
    };
    Ok(vec![kernel.dispatch(params, workgroups)?])
}

/// Whether an `m`×`n` output is large enough for `blocked_wide`'s 128×128 blocks: it idles
/// at most half of each block's rows or columns and has at least one whole block's worth of
/// outputs (smaller products run more of `blocked`'s 32×32 blocks side by side).
fn fills_wide_blocks(m: usize, n: usize) -> bool {
    m >= 64 && n >= 64 && m * n >= 128 * 128
}

/// Whether every group of four rhs columns the blocked kernel loads is one aligned `vec4`:
/// f32, unit column stride, row stride, offset and n multiples of 4.
fn vector_rows(rhs: &manychips_api::View) -> bool {
    let r = rhs.dims().len();
    let l = &rhs.layout;
    rhs.dtype == DType::F32
        && l.strides[r - 1] == 1
        && l.strides[r - 2].is_multiple_of(4)
        && l.offset.is_multiple_of(4)
        && rhs.dims()[r - 1].is_multiple_of(4)
        && l.strides[..r - 2].iter().all(|s| s.is_multiple_of(4))
}

/// Whether four consecutive k of an lhs row (starting at a multiple of 4) are one aligned
/// `vec4`: f32, unit k stride, row stride, batch strides and offset multiples of 4.
fn vector_k(lhs: &manychips_api::View) -> bool {
    let r = lhs.dims().len();
    let l = &lhs.layout;
    lhs.dtype == DType::F32
        && l.strides[r - 1] == 1
        && l.strides[r - 2].is_multiple_of(4)
        && l.offset.is_multiple_of(4)
        && l.strides[..r - 2].iter().all(|s| s.is_multiple_of(4))
}

fn n_groups(items: usize, tile: usize, max: usize) -> u32 {
    items.div_ceil(tile).clamp(1, max) as u32
}
