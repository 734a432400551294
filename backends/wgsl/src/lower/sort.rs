//! argsort (kernels/wgsl/sort.wgsl): a bitonic network over each lane padded to a power of
//! two, every lane at once. Each padded element gets a u32 key whose unsigned order is the
//! wanted one (chosen per dtype here, complemented when descending) and its position; the
//! (key, position) pairs sort ascending, so the order is exact and stable for every dtype.
//! Dispatches: one building the keys; the bitonic stages, in workgroup memory where the
//! partners lie within a tile of 512 (one dispatch runs all such stages that follow each
//! other), else one dispatch per (k, j) stage (one kernel, k and j in the params); one writing
//! the first n positions of each lane to the output. For m = 65536: 36 stage dispatches
//! instead of 136. CPU-backed drivers (lavapipe), where barriers cost more than dispatches,
//! run every stage as a dispatch of its own.

use manychips_api::{DType, Error, Op, Result, View};

use crate::kernel::{Kernel, Operand, WG, grid_1d};
use crate::params::{Params, Strided, word};
use crate::template::section;
use crate::{Features, Lowered, Slot};

const SOURCE: &str = include_str!("../../../../kernels/wgsl/sort.wgsl");

/// Padded elements a `tile` workgroup sorts in workgroup memory (sort.wgsl's 512).
const TILE: usize = 512;

/// The body of sort.wgsl's `key_of` for elements of `dtype`: unsigned order of the result is
/// the ascending order of the values (`float_key` for floats: −0 = +0, NaN last).
fn key(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "return float_key(b, 0x7f800000u);",
        DType::F16 => "return float_key(b << 16u, 0x7c000000u);",
        DType::BF16 => "return float_key(b << 16u, 0x7f800000u);",
        DType::U32 | DType::U8 => "return b;",
        DType::I32 => "return b ^ 0x80000000u;",
        DType::I64 => return Err(crate::kernel::no_64_bit()),
    })
}

/// A u32 temporary operand.
fn temp(i: usize, writable: bool) -> Operand {
    Operand {
        slot: Slot::Temporary(i),
        dtype: DType::U32,
        writable,
        vector: false,
        words: false,
        quad: false,
    }
}

/// `v`'s layout with `axis` moved last (the lanes, then the axis).
fn axis_last(v: &View, axis: usize) -> Strided {
    let mut strides = v.layout.strides.clone();
    let s = strides.remove(axis);
    strides.push(s);
    Strided::new(v.layout.offset, strides)
}

/// Row-major strides of `lanes` then an axis of `m` (the temporaries' layout).
fn temp_layout(lanes: &[usize], m: usize) -> Strided {
    let mut strides = vec![1; lanes.len() + 1];
    let mut step = m;
    for d in (0..lanes.len()).rev() {
        strides[d] = step;
        step *= lanes[d];
    }
    Strided::new(0, strides)
}

pub(super) fn lower(op: &Op, f: &Features) -> Result<Lowered> {
    let Op::ArgSort { input, out, axis, descending } = op else {
        return Ok(Lowered::default());
    };
    let axis = *axis;
    let n = input.dims()[axis];
    let mut lane_dims = input.dims().to_vec();
    lane_dims.remove(axis);
    let lanes: usize = lane_dims.iter().product();
    if lanes == 0 || n == 0 {
        return Ok(Lowered::default());
    }
    let m = n.next_power_of_two();
    let padded = lanes.checked_mul(m);
    let bytes = padded.and_then(|p| p.checked_mul(4));
    let limit = f.max_storage_binding.min(u32::MAX as u64 + 1);
    let (padded, bytes) = match (padded, bytes) {
        (Some(p), Some(b)) if b as u64 <= limit => (p, b as u64),
        _ => {
            return Err(Error::InvalidArgument {
                op: op.name(),
                device: "wgsl".into(),
                detail: format!(
                    "{lanes} lanes of {n} padded to {m} need two scratch buffers of 4 bytes \
                     per padded element, more than the device binds at once ({limit} bytes); \
                     split the op; {}",
                    op.describe()
                ),
            });
        }
    };
    let mut dims = lane_dims.clone();
    dims.push(m);
    let temps = temp_layout(&lane_dims, m);

    // Keys and positions.
    let mut p = Params::strided(op, padded, &dims, &[axis_last(input, axis)])?;
    p.set(2, word(op, "padded axis length", m - 1)?)?;
    p.set(3, word(op, "axis length", n)?)?;
    p.set(4, if *descending { u32::MAX } else { 0 })?;
    let keys = Kernel {
        family: "sort",
        source: &[section(SOURCE, "keys")?],
        entry: "keys",
        operands: vec![Operand::input(input), temp(0, true), temp(1, true)],
        status: false,
        subs: &[("KEY", key(input.dtype)?)],
    };
    let mut dispatches = vec![keys.dispatch(p, grid_1d(op, padded, WG, f)?)?];

    // The bitonic stages: partners at least a tile apart one dispatch each, the others in
    // workgroup memory, as many as follow each other.
    if m > 1 {
        let (stage_source, tile_source) = ([section(SOURCE, "stage")?], [section(SOURCE, "tile")?]);
        let kernel = |entry, source| Kernel {
            family: "sort",
            source,
            entry,
            operands: vec![temp(0, true), temp(1, true)],
            status: false,
            subs: &[],
        };
        let (stage, tile) = (kernel("stage", &stage_source), kernel("tile", &tile_source));
        let pairs = padded / 2;
        let stage_grid = grid_1d(op, pairs, WG, f)?;
        let tile_grid = grid_1d(op, padded, TILE, f)?;
        let mut stage_params = Params::strided(op, pairs, &[], &[])?;
        let log = m.trailing_zeros() as usize;
        stage_params.set(2, word(op, "log2 of the padded axis", log - 1)?)?;
        let mut tile_params = Params::strided(op, padded, &[], &[])?;
        tile_params.set(5, word(op, "padded axis length", m - 1)?)?;
        let tiled = |k_first: usize, k_last: usize, j_first: usize| -> Result<_> {
            let mut p = tile_params.clone();
            p.set(2, word(op, "stage length", k_first)?)?;
            p.set(3, word(op, "stage length", k_last)?)?;
            p.set(4, word(op, "stage distance", j_first)?)?;
            tile.dispatch(p, tile_grid)
        };
        // On CPU-backed drivers a workgroup barrier costs more than a dispatch (lavapipe,
        // f32 [8, 50257]: 1.34 s with tiles, 0.54 s without): every stage a dispatch there.
        let reach = if f.cpu_backed { 1 } else { TILE };
        if reach > 1 {
            dispatches.push(tiled(2, m.min(reach), 1)?);
        }
        let mut k = 2 * reach;
        while k <= m {
            let mut j = k / 2;
            while j >= reach {
                let mut p = stage_params.clone();
                p.set(3, word(op, "stage distance", j)?)?;
                p.set(4, word(op, "stage length", k)?)?;
                dispatches.push(stage.dispatch(p, stage_grid)?);
                j /= 2;
            }
            if reach > 1 {
                dispatches.push(tiled(k, k, reach / 2)?);
            }
            k *= 2;
        }
    }

    // The first n positions of each lane.
    let count = lanes * n;
    dims[lane_dims.len()] = n;
    let p = Params::strided(op, count, &dims, &[temps, axis_last(out, axis)])?;
    let write = Kernel {
        family: "sort",
        source: &[section(SOURCE, "write")?],
        entry: "write",
        operands: vec![temp(1, false), Operand::output(out)],
        status: false,
        subs: &[],
    };
    dispatches.push(write.dispatch(p, grid_1d(op, count, WG, f)?)?);
    Ok(Lowered { temporaries: vec![bytes, bytes], dispatches })
}
