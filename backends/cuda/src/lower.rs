//! Lowering: an [`Op`] becomes a [`Plan`], the kernel launches (with their `McParams`,
//! pointer arguments and grid) and cuBLAS calls that compute it, following the per-family
//! conventions at the top of kernels/cuda/common.cuh. Pure: the device only resolves buffers
//! to pointers and hands the steps to the driver (or to the emulator in the tests).

use manychips_api::{BufferId, DType, Element, Layout, Op, Result, ScatterOp, View, bf16, f16};

use crate::fused;
use crate::gemm::{self, GemmCall};
use crate::kernels::{Kernel, Team};
use crate::params::{self, McParams, Strided};

/// Threads per block of every 1-D kernel.
pub(crate) const BLOCK: u32 = 256;
/// Rows at least this long get a block each (and so do all rows when there are few).
const WIDE_ROW: usize = 1024;

/// How a device runs matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// `cublasGemmStridedBatchedEx` where the layout allows it, else the tiled kernel.
    Cublas,
    /// Always the tiled kernel of kernels/cuda/matmul.cu.
    Tiled,
}

/// Which kernels run `index_add` and `scatter_add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScatterKernel {
    /// The deterministic kernels, unless there are few columns and long axes, where the
    /// atomic ones are far more parallel.
    Auto,
    /// One work item per column, summing in source order: the CPU backend's sums bit for bit.
    Deterministic,
    /// One work item per source element with an f32 `atomicAdd`: the summation order (and so
    /// the last bits) vary from run to run.
    Atomic,
}

/// What lowering needs to know about the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Streaming multiprocessors, to size grids.
    pub sm_count: u32,
    /// Whether matmul goes to cuBLAS (available and chosen).
    pub cublas: bool,
    /// f32 GEMMs on tensor cores in TF32 (an opt-in: about 10 bits of mantissa).
    pub tf32: bool,
    pub scatter: ScatterKernel,
}

/// A pointer argument of a launch or GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    Buffer(BufferId),
    /// The plan's temporary number `i`.
    Temp(usize),
    /// The device's status words (out-of-range index values).
    Status,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Launch {
    pub kernel: Kernel,
    pub params: McParams,
    pub args: Vec<Arg>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Gemm {
    pub call: GemmCall,
    /// The buffers of lhs, rhs and out (indexed by `GemmOperand::view`).
    pub buffers: [BufferId; 3],
    pub tf32: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Launch(Box<Launch>),
    Gemm(Gemm),
}

/// Everything one op does, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Bytes of each temporary buffer the steps use (allocated before, freed after).
    pub temps: Vec<usize>,
    pub steps: Vec<Step>,
}

impl Plan {
    fn single(launch: Launch) -> Plan {
        Plan { temps: Vec::new(), steps: vec![Step::Launch(Box::new(launch))] }
    }

    /// Whether a step flags out-of-range index values in the status words.
    pub fn uses_status(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Launch(l) => l.args.contains(&Arg::Status),
            Step::Gemm(_) => false,
        })
    }
}

/// The lowering of `op` (validated by the device) on a device configured as `cfg`.
pub(crate) fn lower(op: &Op, cfg: &Config) -> Result<Plan> {
    if op.output().numel() == 0 {
        return Ok(Plan::default());
    }
    match op {
        Op::Matmul { lhs, rhs, out } => matmul(op, lhs, rhs, out, cfg),
        Op::Binary { .. }
        | Op::Compare { .. }
        | Op::Unary { .. }
        | Op::Affine { .. }
        | Op::Cast { .. }
        | Op::Where { .. }
        | Op::Copy { .. }
        | Op::Fill { .. } => elementwise(op, cfg).map(Plan::single),
        Op::Fused { .. } if runs_natively(op) => elementwise(op, cfg).map(Plan::single),
        Op::FusedReduce { inputs, program, op: r, axis, out } if runs_natively(op) => {
            fused_rows(op, (inputs, program, *r), out, *axis, cfg).map(Plan::single)
        }
        // No attention kernel yet: the device runs `manychips_api::attention::decompose`.
        Op::Attention { .. } | Op::AttentionBackward { .. } => {
            Err(manychips_api::Error::InvalidArgument {
                op: op.name(),
                device: "cuda".into(),
                detail: format!("no CUDA kernel for attention; {}", op.describe()),
            })
        }
        // No CUDA kernel: the device runs it as its decomposition
        // (`manychips_api::fused::decompose`) before it gets here.
        Op::Fused { .. } | Op::FusedReduce { .. } => Err(manychips_api::Error::InvalidArgument {
            op: op.name(),
            device: "cuda".into(),
            detail: format!(
                "no CUDA kernel for fused programs of more than {} inputs; {}",
                fused::MAX_INPUTS,
                op.describe()
            ),
        }),
        Op::Concat { inputs, out, axis } => {
            let mut at = 0;
            let mut steps = Vec::new();
            for v in inputs {
                let len = v.dims()[*axis];
                let part = out.layout.narrowed(*axis, at, len);
                at += len;
                if v.numel() > 0 {
                    steps.push(Step::Launch(Box::new(copy(op, v, &part, out.buffer, cfg)?)));
                }
            }
            Ok(Plan { temps: Vec::new(), steps })
        }
        Op::Reduce { input, out, axis, .. } | Op::Softmax { input, out, axis, .. } => {
            rows(op, input, out, *axis, cfg).map(Plan::single)
        }
        Op::IndexSelect { input, indices, out, axis }
        | Op::Gather { input, indices, out, axis } => {
            gather(op, input, indices, out, *axis, cfg).map(Plan::single)
        }
        Op::IndexAdd { src, indices, out, axis } | Op::ScatterAdd { src, indices, out, axis } => {
            scatter(op, src, indices, out, *axis, cfg)
        }
        Op::Scatter { op: combine, src, indices, out, axis } => {
            scatter_lanes(op, *combine, (src, indices, out), *axis, cfg)
        }
        Op::ArgSort { input, out, axis, descending } => {
            argsort(op, input, out, *axis, *descending, cfg)
        }
    }
}

/// Whether `op` has a kernel here; else the device runs its decomposition (fused programs
/// and reductions of more than [`fused::MAX_INPUTS`] inputs).
pub(crate) fn runs_natively(op: &Op) -> bool {
    match op {
        Op::Fused { inputs, .. } | Op::FusedReduce { inputs, .. } => {
            inputs.len() <= fused::MAX_INPUTS
        }
        Op::Attention { .. } | Op::AttentionBackward { .. } => false,
        _ => true,
    }
}

/// A view's place in an iteration space of its own dims.
fn strided(v: &View) -> Strided {
    Strided::new(v.layout.offset, v.layout.strides.clone())
}

/// `v`'s layout without `axis`.
fn without(offset: usize, strides: &[usize], axis: usize) -> Strided {
    let mut strides = strides.to_vec();
    strides.remove(axis);
    Strided::new(offset, strides)
}

/// Blocks for `items` work items at `per_block` items per block: enough to cover them, at
/// most a few waves over the device (the kernels loop grid-stride over the rest).
pub(crate) fn blocks(items: usize, per_block: usize, cfg: &Config) -> u32 {
    let cap = (cfg.sm_count.max(1) as usize).saturating_mul(32).min(i32::MAX as usize);
    items.div_ceil(per_block.max(1)).clamp(1, cap) as u32
}

fn launch_1d(kernel: Kernel, params: McParams, args: Vec<Arg>, cfg: &Config) -> Launch {
    let grid = blocks(params.count as usize, BLOCK as usize, cfg);
    Launch { kernel, params, args, grid: [grid, 1, 1], block: [BLOCK, 1, 1] }
}

/// The bits of `value` stored as `dtype` (zero-extended), converted as `Cast` converts
/// (`Element::from_f64`).
pub(crate) fn bits_of(value: f64, dtype: DType) -> u64 {
    match dtype {
        DType::F32 => u64::from(<f32 as Element>::from_f64(value).to_bits()),
        DType::F16 => u64::from(<f16 as Element>::from_f64(value).to_bits()),
        DType::BF16 => u64::from(<bf16 as Element>::from_f64(value).to_bits()),
        DType::U32 => u64::from(<u32 as Element>::from_f64(value)),
        DType::U8 => u64::from(<u8 as Element>::from_f64(value)),
        DType::I32 => u64::from(<i32 as Element>::from_f64(value) as u32),
        DType::I64 => <i64 as Element>::from_f64(value) as u64,
    }
}

/// Unary, binary, compare, affine, cast, where, copy, fill and fused programs: one work item
/// per output element, operands in `views_mut` order.
fn elementwise(op: &Op, cfg: &Config) -> Result<Launch> {
    let out = op.output();
    let mut layouts: Vec<Strided> = op.inputs().into_iter().map(strided).collect();
    layouts.push(strided(out));
    let mut args: Vec<Arg> = op.inputs().into_iter().map(|v| Arg::Buffer(v.buffer)).collect();
    args.push(Arg::Buffer(out.buffer));
    let mut p = params::strided(op, out.dims(), &layouts)?;
    let kernel = match op {
        Op::Unary { op: u, out, .. } => Kernel::Unary(*u, out.dtype),
        Op::Binary { op: b, out, .. } => Kernel::Binary(*b, out.dtype),
        Op::Compare { op: c, lhs, out, .. } => Kernel::Compare(*c, lhs.dtype, out.dtype),
        Op::Affine { out, mul, add, .. } => {
            p.mul = *mul as f32;
            p.add = *add as f32;
            Kernel::Affine(out.dtype)
        }
        Op::Cast { input, out } => Kernel::Cast(input.dtype, out.dtype),
        Op::Where { out, .. } => Kernel::Where(out.dtype),
        Op::Copy { out, .. } => Kernel::Copy(out.dtype),
        Op::Fill { out, value } => {
            // fill_<t> reads the low 32 bits from `bits`, the high 32 (i64) from ext[0].
            let bits = bits_of(*value, out.dtype);
            p.bits = bits as u32;
            p.ext[0] = bits >> 32;
            Kernel::Fill(out.dtype)
        }
        Op::Fused { inputs, program, out } => {
            let dtypes: Vec<DType> = inputs.iter().map(|v| v.dtype).collect();
            let (id, constants) = fused::register(program, &dtypes, out.dtype, None);
            for (word, c) in constants {
                p.ext[word] = u64::from(c.to_bits());
            }
            Kernel::Fused(id)
        }
        _ => unreachable_op(op)?,
    };
    Ok(launch_1d(kernel, p, args, cfg))
}

/// The error for an op routed to the wrong lowering: a bug of this crate, reported rather
/// than panicking.
fn unreachable_op<T>(op: &Op) -> Result<T> {
    Err(manychips_api::Error::Fault {
        op: op.name(),
        device: "cuda".into(),
        detail: format!("internal: no lowering for this op here; {}", op.describe()),
    })
}

/// Copies `input` into the part `dst` of buffer `out` (Concat, one per input).
fn copy(op: &Op, input: &View, dst: &Layout, out: BufferId, cfg: &Config) -> Result<Launch> {
    let ops = [strided(input), Strided::new(dst.offset, dst.strides.clone())];
    let p = params::strided(op, input.dims(), &ops)?;
    let args = vec![Arg::Buffer(input.buffer), Arg::Buffer(out)];
    Ok(launch_1d(Kernel::Copy(input.dtype), p, args, cfg))
}

/// Reductions and (log-)softmax: one work item per row (the input along `axis`), a block per
/// row for long rows or few rows, a warp per row otherwise.
fn rows(op: &Op, input: &View, out: &View, axis: usize, cfg: &Config) -> Result<Launch> {
    let mut dims = input.dims().to_vec();
    let n = dims.remove(axis);
    let ops = [
        without(input.layout.offset, &input.layout.strides, axis),
        without(out.layout.offset, &out.layout.strides, axis),
    ];
    let mut p = params::strided(op, &dims, &ops)?;
    p.ext[0] = n as u64;
    p.ext[1] = input.layout.strides[axis] as u64;
    p.ext[2] = out.layout.strides[axis] as u64;
    let count = p.count as usize;
    let few_rows = count <= 2 * cfg.sm_count.max(1) as usize;
    let team = if n >= WIDE_ROW || few_rows { Team::Block } else { Team::Warp };
    let kernel = match op {
        Op::Reduce { op: r, .. } => Kernel::Reduce(*r, input.dtype, team),
        Op::Softmax { log, .. } => Kernel::Softmax { log: *log, dtype: input.dtype, team },
        _ => unreachable_op(op)?,
    };
    let rows_per_block = match team {
        Team::Block => 1,
        Team::Warp => (BLOCK / 32) as usize,
    };
    let grid = blocks(count, rows_per_block, cfg);
    let args = vec![Arg::Buffer(input.buffer), Arg::Buffer(out.buffer)];
    Ok(Launch { kernel, params: p, args, grid: [grid, 1, 1], block: [BLOCK, 1, 1] })
}

/// A fused reduction: [`rows`]' launch, each row's elements computed by the program from
/// its inputs (`ext[1 + m]` input `m`'s stride along the axis, constants after them).
fn fused_rows(
    op: &Op,
    (inputs, program, r): (&[View], &[manychips_api::Instr], manychips_api::ReduceOp),
    out: &View,
    axis: usize,
    cfg: &Config,
) -> Result<Launch> {
    let mut dims = inputs[0].dims().to_vec();
    let n = dims.remove(axis);
    let ops: Vec<Strided> = inputs
        .iter()
        .chain([out])
        .map(|v| without(v.layout.offset, &v.layout.strides, axis))
        .collect();
    let mut p = params::strided(op, &dims, &ops)?;
    p.ext[0] = n as u64;
    for (m, v) in inputs.iter().enumerate() {
        p.ext[1 + m] = v.layout.strides[axis] as u64;
    }
    let dtypes: Vec<DType> = inputs.iter().map(|v| v.dtype).collect();
    let (id, constants) = fused::register(program, &dtypes, out.dtype, Some(r));
    for (word, c) in constants {
        p.ext[word] = u64::from(c.to_bits());
    }
    let count = p.count as usize;
    let few_rows = count <= 2 * cfg.sm_count.max(1) as usize;
    let team = if n >= WIDE_ROW || few_rows { Team::Block } else { Team::Warp };
    let rows_per_block = match team {
        Team::Block => 1,
        Team::Warp => (BLOCK / 32) as usize,
    };
    let grid = blocks(count, rows_per_block, cfg);
    let mut args: Vec<Arg> = inputs.iter().map(|v| Arg::Buffer(v.buffer)).collect();
    args.push(Arg::Buffer(out.buffer));
    let kernel = Kernel::FusedReduce(id, team);
    Ok(Launch { kernel, params: p, args, grid: [grid, 1, 1], block: [BLOCK, 1, 1] })
}

/// A 1-D `indices` seen over `rank` dims: its stride on `axis`, 0 elsewhere.
fn broadcast_indices(indices: &View, rank: usize, axis: usize) -> Strided {
    let mut strides = vec![0; rank];
    strides[axis] = indices.layout.strides.first().copied().unwrap_or(0);
    Strided::new(indices.layout.offset, strides)
}

/// Gather and index_select: one work item per output element; the input is addressed as
/// `base + index · axis_stride` with `base` its layout with the axis stride zeroed.
fn gather(
    op: &Op,
    input: &View,
    indices: &View,
    out: &View,
    axis: usize,
    cfg: &Config,
) -> Result<Launch> {
    let rank = out.dims().len();
    let (idx, kernel) = match op {
        Op::IndexSelect { .. } => (
            broadcast_indices(indices, rank, axis),
            Kernel::IndexSelect(input.dtype, indices.dtype),
        ),
        _ => (strided(indices), Kernel::Gather(input.dtype, indices.dtype)),
    };
    let mut base = strided(input);
    base.strides[axis] = 0;
    let mut p = params::strided(op, out.dims(), &[base, idx, strided(out)])?;
    p.ext[0] = input.dims()[axis] as u64;
    p.ext[1] = input.layout.strides[axis] as u64;
    let args = vec![
        Arg::Buffer(input.buffer),
        Arg::Buffer(indices.buffer),
        Arg::Buffer(out.buffer),
        Arg::Status,
    ];
    Ok(launch_1d(kernel, p, args, cfg))
}

/// Whether index_add / scatter_add use the atomic kernels: few columns (so the
/// deterministic kernel would leave most of the device idle) and an axis long enough for the
/// atomics to pay.
pub(crate) fn use_atomic(
    choice: ScatterKernel,
    columns: usize,
    axis_len: usize,
    cfg: &Config,
) -> bool {
    match choice {
        ScatterKernel::Deterministic => false,
        ScatterKernel::Atomic => true,
        ScatterKernel::Auto => {
            let resident = cfg.sm_count.max(1) as usize * 1024;
            columns < resident && axis_len >= 64
        }
    }
}

/// index_add and scatter_add: into `out` itself for f32; for f16/bf16 into an f32 copy of
/// `out` (temporary 0, contiguous) made before and rounded back after, so each sum rounds
/// once however many duplicates there are.
fn scatter(
    op: &Op,
    src: &View,
    indices: &View,
    out: &View,
    axis: usize,
    cfg: &Config,
) -> Result<Plan> {
    let rank = out.dims().len();
    let n = src.dims()[axis];
    let mut col_dims = src.dims().to_vec();
    col_dims.remove(axis);
    let columns: usize = col_dims.iter().product();
    if columns == 0 || n == 0 {
        return Ok(Plan::default());
    }
    let direct = out.dtype == DType::F32;
    let contiguous = Layout::contiguous(out.dims());
    let (acc_offset, acc_strides, acc_arg) = if direct {
        (out.layout.offset, out.layout.strides.clone(), Arg::Buffer(out.buffer))
    } else {
        (0, contiguous.strides.clone(), Arg::Temp(0))
    };
    let index_add = matches!(op, Op::IndexAdd { .. });
    let atomic = use_atomic(cfg.scatter, columns, n, cfg);
    let (dtype, index) = (src.dtype, indices.dtype);
    let kernel = if index_add {
        Kernel::IndexAdd { dtype, index, atomic }
    } else {
        Kernel::ScatterAdd { dtype, index, atomic }
    };
    let mut p = if atomic {
        let idx = if index_add { broadcast_indices(indices, rank, axis) } else { strided(indices) };
        let mut acc = Strided::new(acc_offset, acc_strides.clone());
        acc.strides[axis] = 0;
        params::strided(op, src.dims(), &[strided(src), idx, acc])?
    } else {
        let (idx, idx_stride) = if index_add {
            (
                Strided::new(indices.layout.offset, vec![0; rank - 1]),
                indices.layout.strides.first().copied().unwrap_or(0),
            )
        } else {
            (
                without(indices.layout.offset, &indices.layout.strides, axis),
                indices.layout.strides[axis],
            )
        };
        let ops = [
            without(src.layout.offset, &src.layout.strides, axis),
            idx,
            without(acc_offset, &acc_strides, axis),
        ];
        let mut p = params::strided(op, &col_dims, &ops)?;
        p.ext[2] = n as u64;
        p.ext[3] = src.layout.strides[axis] as u64;
        p.ext[4] = idx_stride as u64;
        p
    };
    p.ext[0] = out.dims()[axis] as u64;
    p.ext[1] = acc_strides[axis] as u64;
    let args = vec![Arg::Buffer(src.buffer), Arg::Buffer(indices.buffer), acc_arg, Arg::Status];
    let add = Step::Launch(Box::new(launch_1d(kernel, p, args, cfg)));
    if direct {
        return Ok(Plan { temps: Vec::new(), steps: vec![add] });
    }
    let acc = Strided::new(0, contiguous.strides.clone());
    let widen = params::strided(op, out.dims(), &[strided(out), acc.clone()])?;
    let narrow = params::strided(op, out.dims(), &[acc, strided(out)])?;
    let widen = launch_1d(
        Kernel::Cast(out.dtype, DType::F32),
        widen,
        vec![Arg::Buffer(out.buffer), Arg::Temp(0)],
        cfg,
    );
    let narrow = launch_1d(
        Kernel::Cast(DType::F32, out.dtype),
        narrow,
        vec![Arg::Temp(0), Arg::Buffer(out.buffer)],
        cfg,
    );
    Ok(Plan {
        temps: vec![out.numel() * 4],
        steps: vec![Step::Launch(Box::new(widen)), add, Step::Launch(Box::new(narrow))],
    })
}

/// Op::Scatter (`scatter_<op>_<t>_<i>`): one work item per lane (a position of `src` off the
/// axis) walking the axis in order and combining into `out` itself, in its dtype. The layout
/// is scatter_add's deterministic one with `out` as the accumulator.
fn scatter_lanes(
    op: &Op,
    combine: ScatterOp,
    (src, indices, out): (&View, &View, &View),
    axis: usize,
    cfg: &Config,
) -> Result<Plan> {
    let n = src.dims()[axis];
    let mut lane_dims = src.dims().to_vec();
    lane_dims.remove(axis);
    if n == 0 || lane_dims.contains(&0) {
        return Ok(Plan::default());
    }
    let ops = [
        without(src.layout.offset, &src.layout.strides, axis),
        without(indices.layout.offset, &indices.layout.strides, axis),
        without(out.layout.offset, &out.layout.strides, axis),
    ];
    let mut p = params::strided(op, &lane_dims, &ops)?;
    p.ext[0] = out.dims()[axis] as u64;
    p.ext[1] = out.layout.strides[axis] as u64;
    p.ext[2] = n as u64;
    p.ext[3] = src.layout.strides[axis] as u64;
    p.ext[4] = indices.layout.strides[axis] as u64;
    let kernel = Kernel::Scatter { op: combine, dtype: out.dtype, index: indices.dtype };
    let args = vec![
        Arg::Buffer(src.buffer),
        Arg::Buffer(indices.buffer),
        Arg::Buffer(out.buffer),
        Arg::Status,
    ];
    Ok(Plan::single(launch_1d(kernel, p, args, cfg)))
}

/// Elements of the temporaries one block of `argsort_tile` sorts in shared memory
/// (`MC_SORT_TILE` in kernels/cuda/sort.cu).
pub(crate) const SORT_TILE: usize = 2048;
/// Threads per block of `argsort_tile` (each takes two of the tile's pairs per stage).
const SORT_BLOCK: u32 = 512;

/// Op::ArgSort (kernels/cuda/sort.cu): `argsort_keys_<t>` writes each lane's (key, position)
/// pairs, padded to m = n rounded up to a power of two, into temporaries 0 (u64 keys) and 1
/// (u32 positions), lane after lane; a bitonic network sorts them (`argsort_tile` for the
/// stages inside a tile of [`SORT_TILE`] elements, one `argsort_merge` per (k, j) stage
/// above); `copy_u32` writes the first n positions of each lane to `out`. Lanes of one
/// element are a fill of 0.
fn argsort(
    op: &Op,
    input: &View,
    out: &View,
    axis: usize,
    descending: bool,
    cfg: &Config,
) -> Result<Plan> {
    let n = input.dims()[axis];
    if n == 1 {
        let fill = Op::Fill { out: out.clone(), value: 0.0 };
        return elementwise(&fill, cfg).map(Plan::single);
    }
    let mut lane_dims = input.dims().to_vec();
    lane_dims.remove(axis);
    let lanes: usize = lane_dims.iter().product();
    let m = n.checked_next_power_of_two();
    let elements = m.and_then(|m| lanes.checked_mul(m));
    let bytes = elements.and_then(|e| e.checked_mul(12));
    let (Some(m), Some(elements), Some(_)) = (m, elements, bytes) else {
        return Err(manychips_api::Error::OutOfMemory {
            op: op.name(),
            device: "cuda".into(),
            detail: format!(
                "{lanes} lanes of {n} padded to a power of two need more than usize::MAX \
                 bytes of temporaries; {}",
                op.describe()
            ),
        });
    };
    let log_m = u64::from(m.trailing_zeros());

    // Keys: iteration = lane dims, then the padded axis (innermost).
    let mut dims = lane_dims.clone();
    dims.push(m);
    let mut src = without(input.layout.offset, &input.layout.strides, axis);
    src.strides.push(input.layout.strides[axis]);
    let temp = Strided::new(0, Layout::contiguous(&dims[..]).strides);
    let mut p = params::strided(op, &dims, &[src, temp])?;
    p.ext[0] = n as u64;
    p.ext[1] = m as u64;
    p.ext[2] = u64::from(descending);
    let args = vec![Arg::Buffer(input.buffer), Arg::Temp(0), Arg::Temp(1)];
    let mut steps =
        vec![Step::Launch(Box::new(launch_1d(Kernel::ArgSortKeys(input.dtype), p, args, cfg)))];

    // The network.
    let tiles = elements.div_ceil(SORT_TILE);
    let tile = |k_first: usize, k_last: usize| {
        let mut p = McParams { count: tiles as u64, rank: 1, ..McParams::default() };
        p.dims[0] = tiles as u64;
        p.ext[0] = log_m;
        p.ext[1] = k_first as u64;
        p.ext[2] = k_last as u64;
        p.ext[3] = elements as u64;
        let grid = blocks(tiles, 1, cfg);
        Step::Launch(Box::new(Launch {
            kernel: Kernel::ArgSortTile,
            params: p,
            args: vec![Arg::Temp(0), Arg::Temp(1)],
            grid: [grid, 1, 1],
            block: [SORT_BLOCK, 1, 1],
        }))
    };
    steps.push(tile(2, m.min(SORT_TILE)));
    let mut k = 2 * SORT_TILE;
    while k <= m {
        let mut j = k / 2;
        while j >= SORT_TILE {
            let pairs = (elements / 2) as u64;
            let mut p = McParams { count: pairs, rank: 1, ..McParams::default() };
            p.dims[0] = pairs;
            p.ext[0] = log_m;
            p.ext[1] = k as u64;
            p.ext[2] = j as u64;
            let args = vec![Arg::Temp(0), Arg::Temp(1)];
            steps.push(Step::Launch(Box::new(launch_1d(Kernel::ArgSortMerge, p, args, cfg))));
            j /= 2;
        }
        steps.push(tile(k, k));
        k *= 2;
    }

    // The first n positions of each lane into `out`.
    let mut strides: Vec<usize> =
        Layout::contiguous(&lane_dims[..]).strides.iter().map(|s| s * m).collect();
    strides.insert(axis, 1);
    let p = params::strided(op, out.dims(), &[Strided::new(0, strides), strided(out)])?;
    let args = vec![Arg::Temp(1), Arg::Buffer(out.buffer)];
    steps.push(Step::Launch(Box::new(launch_1d(Kernel::Copy(DType::U32), p, args, cfg))));
    Ok(Plan { temps: vec![elements * 8, elements * 4], steps })
}

/// Batched matmul: cuBLAS where it takes the layout, else the tiled kernel. With k = 0 the
/// product is zeros: a fill on the cuBLAS path (the tiled kernel writes them itself).
fn matmul(op: &Op, lhs: &View, rhs: &View, out: &View, cfg: &Config) -> Result<Plan> {
    let rank = out.dims().len();
    let b = rank - 2;
    let k = lhs.dims()[b + 1];
    if cfg.cublas {
        if k == 0 {
            let fill = Op::Fill { out: out.clone(), value: 0.0 };
            return elementwise(&fill, cfg).map(Plan::single);
        }
        if let Some(calls) = gemm::plan(lhs, rhs, out) {
            let buffers = [lhs.buffer, rhs.buffer, out.buffer];
            let steps = calls
                .into_iter()
                .map(|call| Step::Gemm(Gemm { call, buffers, tf32: cfg.tf32 }))
                .collect();
            return Ok(Plan { temps: Vec::new(), steps });
        }
    }
    tiled(op, lhs, rhs, out).map(Plan::single)
}

/// The tiled kernel: one work item per batch; 16×16 blocks over (n, m) tiles and batches.
fn tiled(op: &Op, lhs: &View, rhs: &View, out: &View) -> Result<Launch> {
    let rank = out.dims().len();
    let b = rank - 2;
    let (m, k, n) = (lhs.dims()[b], lhs.dims()[b + 1], rhs.dims()[b + 1]);
    let ops: Vec<Strided> = [lhs, rhs, out]
        .iter()
        .map(|v| Strided::new(v.layout.offset, v.layout.strides[..b].to_vec()))
        .collect();
    let mut p = params::strided(op, &out.dims()[..b], &ops)?;
    let ext = [
        m,
        n,
        k,
        lhs.layout.strides[b],
        lhs.layout.strides[b + 1],
        rhs.layout.strides[b],
        rhs.layout.strides[b + 1],
        out.layout.strides[b],
        out.layout.strides[b + 1],
    ];
    for (slot, v) in p.ext.iter_mut().zip(ext) {
        *slot = v as u64;
    }
    let tiles = |len: usize| len.div_ceil(16).clamp(1, 65535) as u32;
    let grid = [tiles(n), tiles(m), (p.count as usize).clamp(1, 65535) as u32];
    let args = vec![Arg::Buffer(lhs.buffer), Arg::Buffer(rhs.buffer), Arg::Buffer(out.buffer)];
    Ok(Launch { kernel: Kernel::MatmulTiled(out.dtype), params: p, args, grid, block: [16, 16, 1] })
}

#[cfg(test)]
mod tests;
