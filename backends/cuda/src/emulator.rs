//! A CUDA device in host memory: every kernel of kernels/cuda interpreted on the CPU from the
//! same `McParams`, pointers and launch shape the driver would get, and cuBLAS's strided
//! batched GEMM by its column-major definition.
//!
//! It exists so that everything the backend does above the driver (validation, lowering to
//! launches and GEMMs, buffer bookkeeping, the status words, sticky errors) runs, and is
//! tested by the conformance kit, on machines without a GPU. It is strict where the hardware
//! would be silent: an access outside the allocation a pointer argument names is an illegal
//! address (a sticky error, as on a GPU), a launch shape the kernel cannot take or a
//! parameter block that breaks the ABI's invariants is refused, and overlapping device copies
//! are an error.
//!
//! The per-element arithmetic follows the kernels (f32 math ported from common.cuh, f64
//! sums, the same conversions), but work items run one after another, so summation orders
//! may differ from a GPU's; what this checks is the host side, not the kernels' code.

use std::collections::BTreeMap;

use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::CUresult;
use manychips_api::{BinaryOp, CompareOp, DType, ReduceOp, ScatterOp, UnaryOp, bf16, f16};

use crate::engine::{Engine, GemmArgs, LaunchCall, Ptr};
use crate::error::CuError;
use crate::fused::{self, Constant, FusedKernel, Step};
use crate::gemm;
use crate::kernels::Kernel;
use crate::params::{MAX_RANK, McParams};

/// Where allocations start; far from 0 so that a null or small pointer is never valid.
const FIRST_ADDRESS: u64 = 0x7f00_0000_0000;
/// Allocations are 256-byte aligned (as cuMemAlloc's) with a gap between them.
const ALIGN: u64 = 256;

/// Fault injection and limits, for tests.
#[derive(Clone, Debug)]
pub(crate) struct EmulatorConfig {
    /// Device memory in bytes.
    pub memory: u64,
    /// After this many launches the next one "faults" with this code (asynchronously: the
    /// launch returns, later calls see the error).
    pub fault_after: Option<(usize, CUresult)>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig { memory: 4 << 30, fault_after: None }
    }
}

pub(crate) struct Emulator {
    allocs: BTreeMap<Ptr, Vec<u8>>,
    next: Ptr,
    used: u64,
    config: EmulatorConfig,
    launches: usize,
    /// The sticky error every call returns once a kernel faulted.
    failed: Option<CuError>,
}

fn emulated(code: CUresult, detail: impl Into<String>) -> CuError {
    CuError::Emulated { code, detail: detail.into() }
}

fn invalid(detail: impl Into<String>) -> CuError {
    emulated(CUresult::CUDA_ERROR_INVALID_VALUE, detail)
}

impl Emulator {
    pub(crate) fn new(config: EmulatorConfig) -> Emulator {
        Emulator {
            allocs: BTreeMap::new(),
            next: FIRST_ADDRESS,
            used: 0,
            config,
            launches: 0,
            failed: None,
        }
    }

    fn alive(&self) -> Result<(), CuError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The allocation starting at `base`, and a range inside it.
    fn range(&mut self, base: Ptr, offset: usize, len: usize) -> Result<&mut [u8], CuError> {
        let Some(mem) = self.allocs.get_mut(&base) else {
            return Err(invalid(format!("{base:#x} is not the start of an allocation")));
        };
        let size = mem.len();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(&mut mem[offset..end]),
            _ => Err(invalid(format!(
                "bytes {offset}..{offset}+{len} are outside the allocation of {size} bytes at {base:#x}"
            ))),
        }
    }

    /// Takes the allocations `ptrs` name out of the table (each once), for a kernel to work
    /// on; [`Emulator::put_back`] returns them.
    fn take(&mut self, ptrs: &[Ptr]) -> Result<Memory, CuError> {
        let mut slots: Vec<(Ptr, Vec<u8>)> = Vec::new();
        let mut arg_slot = Vec::with_capacity(ptrs.len());
        for &p in ptrs {
            if let Some(i) = slots.iter().position(|(b, _)| *b == p) {
                arg_slot.push(i);
                continue;
            }
            match self.allocs.remove(&p) {
                Some(mem) => {
                    arg_slot.push(slots.len());
                    slots.push((p, mem));
                }
                None => {
                    self.put_back(Memory { slots, arg_slot: Vec::new(), fault: None });
                    return Err(emulated(
                        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
                        format!("a kernel argument ({p:#x}) is not the start of an allocation"),
                    ));
                }
            }
        }
        Ok(Memory { slots, arg_slot, fault: None })
    }

    fn put_back(&mut self, memory: Memory) {
        for (p, mem) in memory.slots {
            self.allocs.insert(p, mem);
        }
    }

    /// Records a fault found while "running" work: the call that ran it returns, every later
    /// call fails with it.
    fn fault(&mut self, e: CuError) {
        tracing::warn!(error = ?e, "emulated CUDA device faulted");
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }
}

/// The memory one kernel works on: the allocations of its pointer arguments.
struct Memory {
    slots: Vec<(Ptr, Vec<u8>)>,
    /// Pointer argument -> slot.
    arg_slot: Vec<usize>,
    /// The first illegal access, if any.
    fault: Option<String>,
}

impl Memory {
    fn bytes(&mut self, arg: usize, index: u64, size: usize) -> Option<&mut [u8]> {
        let slot = *self.arg_slot.get(arg)?;
        let mem = &mut self.slots[slot].1;
        let start = usize::try_from(index).ok()?.checked_mul(size)?;
        let end = start.checked_add(size)?;
        mem.get_mut(start..end)
    }

    fn illegal(&mut self, arg: usize, index: u64) {
        if self.fault.is_none() {
            self.fault = Some(format!(
                "pointer argument {arg} accessed at element {index}, outside its allocation"
            ));
        }
    }

    /// The raw bits of element `index` of argument `arg` (zero-extended), or 0 after noting
    /// an illegal access.
    fn load(&mut self, arg: usize, index: u64, dtype: DType) -> u64 {
        let size = dtype.size_in_bytes();
        match self.bytes(arg, index, size) {
            Some(b) => {
                let mut w = [0u8; 8];
                w[..size].copy_from_slice(b);
                u64::from_le_bytes(w)
            }
            None => {
                self.illegal(arg, index);
                0
            }
        }
    }

    fn store(&mut self, arg: usize, index: u64, dtype: DType, bits: u64) {
        let size = dtype.size_in_bytes();
        match self.bytes(arg, index, size) {
            Some(b) => b.copy_from_slice(&bits.to_le_bytes()[..size]),
            None => self.illegal(arg, index),
        }
    }

    fn load_f32(&mut self, arg: usize, index: u64, dtype: DType) -> f32 {
        to_f32(self.load(arg, index, dtype), dtype)
    }

    fn store_f32(&mut self, arg: usize, index: u64, dtype: DType, v: f32) {
        self.store(arg, index, dtype, from_f32(v, dtype));
    }

    /// An integer element's value (sign-extended for i32 and i64).
    fn load_int(&mut self, arg: usize, index: u64, dtype: DType) -> i128 {
        int_value(self.load(arg, index, dtype), dtype)
    }

    /// Stores `v` modulo 2^bits (the contract's wrapping rule).
    fn store_int(&mut self, arg: usize, index: u64, dtype: DType, v: i128) {
        self.store(arg, index, dtype, wrap(v, dtype));
    }
}

// ---- Conversions (common.cuh's McElem) ------------------------------------------------------

fn to_f32(bits: u64, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::from_bits(bits as u32),
        DType::F16 => f16::from_bits(bits as u16).to_f32(),
        DType::BF16 => bf16::from_bits(bits as u16).to_f32(),
        // Rust's integer-to-float `as` rounds to nearest even once, as the kernels' cvt.rn.
        _ => int_value(bits, dtype) as f32,
    }
}

fn from_f32(v: f32, dtype: DType) -> u64 {
    match dtype {
        DType::F32 => u64::from(v.to_bits()),
        DType::F16 => u64::from(f16::from_f32(v).to_bits()),
        DType::BF16 => u64::from(bf16::from_f32(v).to_bits()),
        // Truncation towards zero, saturating, NaN -> 0 (`as` does all three).
        _ => saturate(v as i128, dtype),
    }
}

/// The value of an integer dtype's bits (zero-extended in `bits`); 0 for floats.
fn int_value(bits: u64, dtype: DType) -> i128 {
    match dtype {
        DType::U8 => i128::from(bits as u8),
        DType::U32 => i128::from(bits as u32),
        DType::I32 => i128::from(bits as u32 as i32),
        DType::I64 => i128::from(bits as i64),
        DType::F32 | DType::F16 | DType::BF16 => 0,
    }
}

/// `v` modulo 2^bits of `dtype`, as zero-extended bits (two's complement wrapping).
fn wrap(v: i128, dtype: DType) -> u64 {
    let bits = 8 * dtype.size_in_bytes() as u32;
    let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    (v as u64) & mask
}

/// `v` clamped into an integer dtype's range, as its bits.
fn saturate(v: i128, dtype: DType) -> u64 {
    let (lo, hi) = dtype.int_range().unwrap_or((0, 0));
    wrap(v.clamp(lo, hi), dtype)
}

/// An integer as f32 rounded to odd (truncated, the last bit set when inexact): rounding
/// that to f16/bf16 gives the correctly rounded value (common.cuh's mc_i64_to_f32_odd).
fn int_to_f32_odd(v: i128) -> f32 {
    let nearest = v as f32;
    if nearest as i128 == v {
        return nearest;
    }
    let mut bits = nearest.to_bits();
    if (nearest as i128).unsigned_abs() > v.unsigned_abs() {
        bits -= 1; // rounded away from zero: step back towards zero
    }
    f32::from_bits(bits | 1)
}

/// `mc_cast`: float sources through f32 (one rounding), integer sources exactly (to an
/// integer: saturating; to a float: rounded once).
fn cast(bits: u64, from: DType, to: DType) -> u64 {
    if from.is_float() {
        return from_f32(to_f32(bits, from), to);
    }
    let v = int_value(bits, from);
    match to {
        DType::F32 => u64::from((v as f32).to_bits()),
        DType::F16 => u64::from(f16::from_f32(int_to_f32_odd(v)).to_bits()),
        DType::BF16 => u64::from(bf16::from_f32(int_to_f32_odd(v)).to_bits()),
        _ => saturate(v, to),
    }
}

// ---- f32 math, ported from common.cuh (which ports the CPU backend) ------------------------

fn mc_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const EXP_HI: f32 = 88.72284;
    const EXP_LO: f32 = -87.33655;
    const ROUND_MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut q = 1.987_569_1e-4f32;
    q = q * r + 1.398_199_9e-3;
    q = q * r + 8.333_452e-3;
    q = q * r + 4.166_579_6e-2;
    q = q * r + 1.666_666_5e-1;
    q = q * r + 0.5;
    let y = q * r * r + r + 1.0;
    let n1 = ni >> 1;
    let n2 = (ni as u32).wrapping_sub(n1 as u32) as i32;
    let s1 = f32::from_bits(((n1 as u32).wrapping_add(127)) << 23);
    let s2 = f32::from_bits(((n2 as u32).wrapping_add(127)) << 23);
    let mut v = y * s1 * s2;
    if x > EXP_HI {
        v = f32::INFINITY;
    }
    if x < EXP_LO {
        v = 0.0;
    }
    if x.is_nan() { x } else { v }
}

fn mc_tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut q = -5.704_988_7e-3f32;
    q = q * z + 2.063_909e-2;
    q = q * z - 5.373_971_6e-2;
    q = q * z + 1.333_144_2e-1;
    q = q * z - 3.333_328e-1;
    let small = q * z * x + x;
    let big = (1.0 - 2.0 / (mc_exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 { small } else { big }
}

fn mc_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + mc_exp(-x))
}

fn mc_gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x * mc_sigmoid(2.0 * u)
}

fn mc_gelu_erf(x: f32) -> f32 {
    let xc = x.clamp(-15.0, 15.0);
    let a = xc.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut q = 0.170_872_77f32;
    q = q * t - 0.822_152_23;
    q = q * t + 1.488_515_9;
    q = q * t - 1.135_204;
    q = q * t + 0.278_868_07;
    q = q * t - 0.186_288_06;
    q = q * t + 0.096_784_18;
    q = q * t + 0.374_091_96;
    q = q * t + 1.000_023_7;
    q = q * t - 1.265_512_2;
    let c = 4097.0 * xc;
    let xh = c - (c - xc);
    let xl = xc - xh;
    let hi = xc * xc;
    let lo = ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl;
    let r = t * mc_exp(-0.5 * hi) * mc_exp(q - 0.5 * lo);
    let erfc = if x <= 0.0 { r } else { 2.0 - r };
    0.5 * x * erfc
}

fn unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => mc_exp(x),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => mc_tanh(x),
        UnaryOp::Sigmoid => mc_sigmoid(x),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::GeluTanh => mc_gelu_tanh(x),
        UnaryOp::GeluErf => mc_gelu_erf(x),
        UnaryOp::Silu => x * mc_sigmoid(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
    }
}

fn binary(op: BinaryOp, x: f32, y: f32) -> f32 {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Rem => {
            let r = x % y;
            if r != 0.0 && ((r < 0.0) != (y < 0.0)) { r + y } else { r }
        }
    }
}

/// Floor division (rounds towards −∞); `b` is not 0.
fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if q * b != a && ((a < 0) != (b < 0)) { q - 1 } else { q }
}

/// Integer arithmetic on exact values; the caller wraps the result to the dtype (so MIN / -1
/// is MIN). A zero divisor gives 0 for div and remainder.
fn int_binary(op: BinaryOp, a: i128, b: i128) -> i128 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div | BinaryOp::Rem if b == 0 => 0,
        BinaryOp::Div => floor_div(a, b),
        BinaryOp::Rem => a - floor_div(a, b) * b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        // Validation refuses pow on integers; all_kernels has no such kernel.
        BinaryOp::Pow => 0,
    }
}

fn int_unary(op: UnaryOp, a: i128) -> i128 {
    match op {
        UnaryOp::Abs => a.abs(),
        // Neg, and nothing else reaches here (validation, all_kernels).
        _ => -a,
    }
}

fn compare<T: PartialOrd>(op: CompareOp, x: T, y: T) -> bool {
    match op {
        CompareOp::Eq => x == y,
        CompareOp::Ne => x != y,
        CompareOp::Lt => x < y,
        CompareOp::Le => x <= y,
        CompareOp::Gt => x > y,
        CompareOp::Ge => x >= y,
    }
}

// ---- Launch checks ----------------------------------------------------------------------------

/// What cuLaunchKernel (and the kernel's own requirements) would refuse.
fn check_launch(call: &LaunchCall<'_>) -> Result<(), CuError> {
    let k = call.kernel;
    let [gx, gy, gz] = call.grid;
    let [bx, by, bz] = call.block;
    if call.args.len() != k.pointer_args() {
        return Err(invalid(format!(
            "{k} takes {} pointers, the launch passes {}",
            k.pointer_args(),
            call.args.len()
        )));
    }
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    let grid_ok = (1..=i32::MAX as u32).contains(&gx)
        && (1..=65535).contains(&gy)
        && (1..=65535).contains(&gz);
    if !grid_ok || bx == 0 || by == 0 || bz == 0 || threads > 1024 || by > 1024 || bz > 64 {
        return Err(invalid(format!(
            "{k}: invalid launch shape grid {:?} block {:?}",
            call.grid, call.block
        )));
    }
    if k.team().is_some() && (bx % 32 != 0 || by != 1 || bz != 1) {
        return Err(invalid(format!(
            "{k} needs a 1-D block of a multiple of 32 threads, got {:?}",
            call.block
        )));
    }
    if matches!(k, Kernel::MatmulTiled(_)) && call.block != [16, 16, 1] {
        return Err(invalid(format!("{k} needs blockDim (16, 16, 1), got {:?}", call.block)));
    }
    let p = call.params;
    let rank = p.rank as usize;
    let product = p.dims[..rank.min(MAX_RANK)].iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if rank > MAX_RANK || product != Some(p.count) {
        return Err(emulated(
            CUresult::CUDA_ERROR_ASSERT,
            format!(
                "{k}: McParams breaks its invariants: rank {rank}, dims {:?}, count {}",
                p.dims, p.count
            ),
        ));
    }
    Ok(())
}

// ---- The kernels ------------------------------------------------------------------------------

/// Runs one kernel over `m`; its pointer arguments are `m`'s args in order.
fn run_kernel(k: Kernel, p: &McParams, m: &mut Memory) {
    match k {
        Kernel::Unary(op, t) if t.is_int() => each(p, 2, |o| {
            let x = m.load_int(0, o[0], t);
            m.store_int(1, o[1], t, int_unary(op, x));
        }),
        Kernel::Unary(op, t) => each(p, 2, |o| {
            let x = m.load_f32(0, o[0], t);
            m.store_f32(1, o[1], t, unary(op, x));
        }),
        Kernel::Affine(t) => each(p, 2, |o| {
            let x = m.load_f32(0, o[0], t);
            m.store_f32(1, o[1], t, x * p.mul + p.add);
        }),
        Kernel::Binary(op, t) if t.is_int() => each(p, 3, |o| {
            let (x, y) = (m.load_int(0, o[0], t), m.load_int(1, o[1], t));
            m.store_int(2, o[2], t, int_binary(op, x, y));
        }),
        Kernel::Binary(op, t) => each(p, 3, |o| {
            let (x, y) = (m.load_f32(0, o[0], t), m.load_f32(1, o[1], t));
            m.store_f32(2, o[2], t, binary(op, x, y));
        }),
        Kernel::Compare(op, t, out) => each(p, 3, |o| {
            let (x, y) = (m.load(0, o[0], t), m.load(1, o[1], t));
            let r = if t.is_float() {
                compare(op, to_f32(x, t), to_f32(y, t))
            } else {
                compare(op, int_value(x, t), int_value(y, t))
            };
            m.store_f32(2, o[2], out, if r { 1.0 } else { 0.0 });
        }),
        Kernel::Where(t) => each(p, 4, |o| {
            let c = m.load(0, o[0], DType::U8);
            let v = if c != 0 { m.load(1, o[1], t) } else { m.load(2, o[2], t) };
            m.store(3, o[3], t, v);
        }),
        Kernel::Fill(t) => {
            let bits = u64::from(p.bits) | (p.ext[0] << 32);
            each(p, 1, |o| m.store(0, o[0], t, bits))
        }
        Kernel::Copy(t) => each(p, 2, |o| {
            let v = m.load(0, o[0], t);
            m.store(1, o[1], t, v);
        }),
        Kernel::Cast(from, to) => each(p, 2, |o| {
            let v = m.load(0, o[0], from);
            m.store(1, o[1], to, cast(v, from, to));
        }),
        Kernel::Reduce(op, t, _) if t.is_int() => each(p, 2, |o| reduce_int_row(op, t, p, m, o)),
        Kernel::Reduce(op, t, _) => each(p, 2, |o| reduce_row(op, t, p, m, o)),
        Kernel::Softmax { log, dtype, .. } => each(p, 2, |o| softmax_row(log, dtype, p, m, o)),
        Kernel::Gather(t, index) | Kernel::IndexSelect(t, index) => each(p, 3, |o| {
            let (len, stride) = (p.ext[0], p.ext[1]);
            let raw = m.load_int(1, o[1], index);
            match resolve_index(m, raw, len) {
                Some(j) => {
                    let v = m.load(0, at(o[0], j, stride), t);
                    m.store(2, o[2], t, v);
                }
                None => m.store(2, o[2], t, 0),
            }
        }),
        Kernel::ScatterAdd { dtype, index, atomic: false }
        | Kernel::IndexAdd { dtype, index, atomic: false } => each(p, 3, |o| {
            let (len, astride, n, sstride, xstride) =
                (p.ext[0], p.ext[1], p.ext[2], p.ext[3], p.ext[4]);
            for i in 0..n {
                let raw = m.load_int(1, at(o[1], i, xstride), index);
                let Some(t) = resolve_index(m, raw, len) else {
                    continue;
                };
                let a = at(o[2], t, astride);
                let v = m.load_f32(2, a, DType::F32) + m.load_f32(0, at(o[0], i, sstride), dtype);
                m.store_f32(2, a, DType::F32, v);
            }
        }),
        Kernel::ScatterAdd { dtype, index, atomic: true }
        | Kernel::IndexAdd { dtype, index, atomic: true } => each(p, 3, |o| {
            let (len, astride) = (p.ext[0], p.ext[1]);
            let raw = m.load_int(1, o[1], index);
            let Some(t) = resolve_index(m, raw, len) else {
                return;
            };
            let a = at(o[2], t, astride);
            let v = m.load_f32(2, a, DType::F32) + m.load_f32(0, o[0], dtype);
            m.store_f32(2, a, DType::F32, v);
        }),
        Kernel::Scatter { op, dtype, index } => each(p, 3, |o| {
            let (len, astride, n, sstride, xstride) =
                (p.ext[0], p.ext[1], p.ext[2], p.ext[3], p.ext[4]);
            for i in 0..n {
                let raw = m.load_int(1, at(o[1], i, xstride), index);
                let Some(t) = resolve_index(m, raw, len) else {
                    continue;
                };
                let (a, s) = (at(o[2], t, astride), at(o[0], i, sstride));
                scatter_combine(op, dtype, m, a, s);
            }
        }),
        Kernel::ArgSortKeys(t) => each(p, 2, |o| {
            let (n, len, descending) = (p.ext[0], p.ext[1], p.ext[2] != 0);
            let i = o[1] & len.wrapping_sub(1);
            if i < n {
                let key = sort_key(m.load(0, o[0], t), t);
                m.store(1, o[1], DType::I64, if descending { !key } else { key });
                m.store(2, o[1], DType::U32, i);
            } else {
                m.store(1, o[1], DType::I64, u64::MAX);
                m.store(2, o[1], DType::U32, u64::from(u32::MAX));
            }
        }),
        Kernel::ArgSortMerge => {
            let (log_m, k, j) = (p.ext[0], p.ext[1], p.ext[2]);
            if !(1..64).contains(&log_m) {
                m.fault.get_or_insert_with(|| format!("argsort_merge: log2(m) = {log_m}"));
                return;
            }
            let half = (1u64 << (log_m - 1)) - 1;
            for g in 0..p.count {
                let (lane, t) = (g >> (log_m - 1), g & half);
                let i = ((t & !j.wrapping_sub(1)) << 1) | (t & j.wrapping_sub(1));
                let a = (lane << log_m).wrapping_add(i);
                sort_exchange(m, a, a.wrapping_add(j), i & k == 0);
            }
        }
        Kernel::ArgSortTile => {
            let (log_m, k_first, k_last, total) = (p.ext[0], p.ext[1], p.ext[2], p.ext[3]);
            if !(1..64).contains(&log_m) || k_first < 2 || !k_first.is_power_of_two() {
                m.fault.get_or_insert_with(|| {
                    format!("argsort_tile: log2(m) = {log_m}, first k = {k_first}")
                });
                return;
            }
            let tile = crate::lower::SORT_TILE as u64;
            let lane_mask = (1u64 << log_m) - 1;
            for tile_at in 0..p.count {
                let base = tile_at * tile;
                let len = tile.min(total.saturating_sub(base));
                let mut k = k_first;
                while k <= k_last {
                    let mut j = k.min(tile) / 2;
                    while j > 0 {
                        for t in 0..len / 2 {
                            let a = ((t & !(j - 1)) << 1) | (t & (j - 1));
                            let up = (base + a) & lane_mask & k == 0;
                            sort_exchange(m, base + a, base + a + j, up);
                        }
                        j /= 2;
                    }
                    let Some(next) = k.checked_mul(2) else { break };
                    k = next;
                }
            }
        }
        Kernel::Fused(id) => fused_program(&fused::kernel(id), p, m),
        Kernel::FusedReduce(id, _) => fused_reduction(&fused::kernel(id), p, m),
        Kernel::MatmulTiled(t) => each(p, 3, |o| {
            let e = &p.ext;
            let (rows, cols, k) = (e[0], e[1], e[2]);
            for i in 0..rows {
                for j in 0..cols {
                    let mut acc = 0.0f32;
                    for q in 0..k {
                        let a = m.load_f32(0, at(at(o[0], i, e[3]), q, e[4]), t);
                        let b = m.load_f32(1, at(at(o[1], q, e[5]), j, e[6]), t);
                        acc += a * b;
                    }
                    m.store_f32(2, at(at(o[2], i, e[7]), j, e[8]), t, acc);
                }
            }
        }),
    }
}

/// sort.cu's mc_sort_key: an integer whose unsigned order is `dtype`'s ascending order
/// (floats by their f32 bits, −0 as +0, every NaN last; integers offset by their minimum).
fn sort_key(bits: u64, dtype: DType) -> u64 {
    match dtype {
        DType::U8 | DType::U32 => bits,
        DType::I32 => bits ^ 0x8000_0000,
        DType::I64 => bits ^ (1 << 63),
        _ => {
            let v = to_f32(bits, dtype);
            let mut b = v.to_bits();
            if v.is_nan() {
                return u64::from(u32::MAX);
            }
            if b == 0x8000_0000 {
                b = 0;
            }
            u64::from(if b >= 0x8000_0000 { u32::MAX - b } else { b + 0x8000_0000 })
        }
    }
}

/// One compare-exchange of sort.cu's network on the temporaries (argument 0 the u64 keys,
/// argument 1 the u32 positions): pairs `a` and `b` end up ascending when `up`, else
/// descending, by (key, position).
fn sort_exchange(m: &mut Memory, a: u64, b: u64, up: bool) {
    let (ka, kb) = (m.load(0, a, DType::I64), m.load(0, b, DType::I64));
    let (pa, pb) = (m.load(1, a, DType::U32), m.load(1, b, DType::U32));
    if ((ka, pa) > (kb, pb)) == up {
        m.store(0, a, DType::I64, kb);
        m.store(0, b, DType::I64, ka);
        m.store(1, a, DType::U32, pb);
        m.store(1, b, DType::U32, pa);
    }
}

/// scatter.cu's McScatter_<op>: out element `a` (argument 2) = combine(it, src element `s`
/// (argument 0)): assign copies the bits; floats in f32 rounded on store, integers exactly
/// and wrapping, max/min as the binary kernels.
fn scatter_combine(op: ScatterOp, t: DType, m: &mut Memory, a: u64, s: u64) {
    let binary_op = match op {
        ScatterOp::Assign => {
            let v = m.load(0, s, t);
            return m.store(2, a, t, v);
        }
        ScatterOp::Sum => BinaryOp::Add,
        ScatterOp::Prod => BinaryOp::Mul,
        ScatterOp::Max => BinaryOp::Max,
        ScatterOp::Min => BinaryOp::Min,
    };
    if t.is_float() {
        let v = binary(binary_op, m.load_f32(2, a, t), m.load_f32(0, s, t));
        m.store_f32(2, a, t, v);
    } else {
        let v = int_binary(binary_op, m.load_int(2, a, t), m.load_int(0, s, t));
        m.store_int(2, a, t, v);
    }
}

/// A generated fused kernel: its steps per element, in f32, as the generated source does.
fn fused_program(k: &FusedKernel, p: &McParams, m: &mut Memory) {
    let n = k.inputs.len();
    let mut r = vec![0.0f32; k.steps.len()];
    each(p, n + 1, |o| {
        let v = fused_value(k, p, m, &mut r, |q| o[q]);
        m.store_f32(n, o[n], k.out, v);
    });
}

/// The value of `k`'s steps with input `q` read at element `at(q)`, `r` its registers.
fn fused_value(
    k: &FusedKernel,
    p: &McParams,
    m: &mut Memory,
    r: &mut [f32],
    at: impl Fn(usize) -> u64,
) -> f32 {
    let constant = |c: Constant| match c {
        Constant::Slot(i) => f32::from_bits(p.ext[i] as u32),
        Constant::Literal(bits) => f32::from_bits(bits),
    };
    for (k_at, step) in k.steps.iter().enumerate() {
        r[k_at] = match *step {
            Step::Input(q) => m.load_f32(q, at(q), k.inputs[q]),
            Step::Const(c) => constant(c),
            Step::Unary(op, a) => unary(op, r[a]),
            Step::Binary(op, a, b) => binary(op, r[a], r[b]),
            Step::Affine(a, mul, add) => r[a] * constant(mul) + constant(add),
            Step::Compare(op, a, b) => f32::from(u8::from(compare(op, r[a], r[b]))),
        };
    }
    r[k.steps.len() - 1]
}

/// A generated fused reduction: each row's elements computed by the steps, folded as
/// `reduce_row` folds an input's (f64 sums rounded once, NaN-ignoring max and min).
fn fused_reduction(k: &FusedKernel, p: &McParams, m: &mut Memory) {
    let inputs = k.inputs.len();
    let mut r = vec![0.0f32; k.steps.len()];
    let n = p.ext[0];
    each(p, inputs + 1, |o| {
        let (mut sum, mut max, mut min) = (0.0f64, f32::NEG_INFINITY, f32::INFINITY);
        for i in 0..n {
            let v = fused_value(k, p, m, &mut r, |q| at(o[q], i, p.ext[1 + q]));
            sum += f64::from(v);
            max = max.max(v);
            min = min.min(v);
        }
        let value = match k.reduce {
            Some(ReduceOp::Sum) => sum as f32,
            Some(ReduceOp::Mean) => (sum / n as f64) as f32,
            Some(ReduceOp::Min) => min,
            _ => max,
        };
        m.store_f32(inputs, o[inputs], k.out, value);
    });
}

/// `base + i · stride` in elements, wrapping as the GPU's 64-bit arithmetic does (a wild
/// value then lands outside the allocation and is reported, never a panic).
fn at(base: u64, i: u64, stride: u64) -> u64 {
    base.wrapping_add(i.wrapping_mul(stride))
}

/// The position an index `value` names along an axis of `len` (a negative one counts from
/// the end), or `None` after flagging it (common.cuh's mc_resolve_index).
fn resolve_index(m: &mut Memory, value: i128, len: u64) -> Option<u64> {
    let j = if value < 0 { value + i128::from(len) } else { value };
    if (0..i128::from(len)).contains(&j) {
        return Some(j as u64);
    }
    flag(m, value);
    None
}

/// The status words: `status` is the last pointer argument (3 for every indexed kernel).
/// Word 0 |= 1; the value as given raises the u64 at byte 8 (non-negative) or lowers the i64
/// at byte 16 (negative).
fn flag(m: &mut Memory, value: i128) {
    let w0 = m.load(3, 0, DType::U32);
    m.store(3, 0, DType::U32, w0 | 1);
    if value >= 0 {
        let largest = m.load(3, 1, DType::I64);
        m.store(3, 1, DType::I64, largest.max(value as u64));
    } else {
        let smallest = m.load(3, 2, DType::I64) as i64;
        m.store(3, 2, DType::I64, smallest.min(value as i64) as u64);
    }
}

/// Every work item in order, with the element offsets of the first `n` operands.
fn each(p: &McParams, n: usize, mut f: impl FnMut([u64; 4])) {
    for g in 0..p.count {
        f(p.offsets(g, n));
    }
}

/// An integer row (reduce.cu's mc_reduce_int_rows and mc_arg_rows): exact values, the sum
/// wrapping.
fn reduce_int_row(op: ReduceOp, t: DType, p: &McParams, m: &mut Memory, o: [u64; 4]) {
    let (n, st) = (p.ext[0], p.ext[1]);
    let values: Vec<i128> = (0..n).map(|i| m.load_int(0, at(o[0], i, st), t)).collect();
    let first = |better: fn(i128, i128) -> bool| {
        let mut best: Option<(i128, usize)> = None;
        for (i, &v) in values.iter().enumerate() {
            if best.is_none_or(|(b, _)| better(v, b)) {
                best = Some((v, i));
            }
        }
        best.map_or(0, |(_, i)| i as u64)
    };
    match op {
        ReduceOp::ArgMax => m.store(1, o[1], DType::U32, first(|v, b| v > b)),
        ReduceOp::ArgMin => m.store(1, o[1], DType::U32, first(|v, b| v < b)),
        ReduceOp::Max => m.store_int(1, o[1], t, values.iter().copied().max().unwrap_or(0)),
        ReduceOp::Min => m.store_int(1, o[1], t, values.iter().copied().min().unwrap_or(0)),
        // Sum (mean is refused on integers by validation and has no kernel).
        _ => m.store_int(1, o[1], t, values.iter().fold(0i128, |a, &v| a.wrapping_add(v))),
    }
}

fn reduce_row(op: ReduceOp, t: DType, p: &McParams, m: &mut Memory, o: [u64; 4]) {
    let (n, st) = (p.ext[0], p.ext[1]);
    let elem = |i: u64| at(o[0], i, st);
    match op {
        ReduceOp::Sum | ReduceOp::Mean => {
            let mut acc = 0.0f64;
            for i in 0..n {
                acc += f64::from(m.load_f32(0, elem(i), t));
            }
            let v = if op == ReduceOp::Mean { (acc / n as f64) as f32 } else { acc as f32 };
            m.store_f32(1, o[1], t, v);
        }
        ReduceOp::Max | ReduceOp::Min => {
            let mut acc = if op == ReduceOp::Max { f32::NEG_INFINITY } else { f32::INFINITY };
            for i in 0..n {
                let v = m.load_f32(0, elem(i), t);
                acc = if op == ReduceOp::Max { acc.max(v) } else { acc.min(v) };
            }
            m.store_f32(1, o[1], t, acc);
        }
        ReduceOp::ArgMax | ReduceOp::ArgMin => {
            // The first index of the NaN-ignoring maximum (minimum), 0 for an all-NaN row.
            let max = op == ReduceOp::ArgMax;
            let mut best: Option<(f32, u64)> = None;
            for i in 0..n {
                let v = m.load_f32(0, elem(i), t);
                let better = |b: f32| if max { v > b } else { v < b };
                if !v.is_nan() && best.is_none_or(|(b, _)| better(b)) {
                    best = Some((v, i));
                }
            }
            m.store(1, o[1], DType::U32, best.map_or(0, |(_, i)| i));
        }
    }
}

fn softmax_row(log: bool, t: DType, p: &McParams, m: &mut Memory, o: [u64; 4]) {
    let (n, ist, ost) = (p.ext[0], p.ext[1], p.ext[2]);
    let mut mx = f32::NEG_INFINITY;
    for i in 0..n {
        mx = mx.max(m.load_f32(0, at(o[0], i, ist), t));
    }
    let mut s = 0.0f64;
    for i in 0..n {
        s += f64::from(mc_exp(m.load_f32(0, at(o[0], i, ist), t) - mx));
    }
    for i in 0..n {
        let x = m.load_f32(0, at(o[0], i, ist), t);
        let v = if log { (x - mx) - s.ln() as f32 } else { mc_exp(x - mx) * (1.0 / s) as f32 };
        m.store_f32(1, at(o[1], i, ost), t, v);
    }
}

/// f32 rounded to TF32 (10 mantissa bits, nearest even), what tensor cores multiply.
fn tf32(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    let b = v.to_bits();
    let round = 0xfff + ((b >> 13) & 1);
    f32::from_bits((b.wrapping_add(round)) & !0x1fff)
}

impl Engine for Emulator {
    fn alloc(&mut self, bytes: usize) -> Result<Ptr, CuError> {
        self.alive()?;
        let size = bytes as u64;
        if self.used.saturating_add(size) > self.config.memory {
            return Err(CuError::driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc_v2"));
        }
        let base = self.next;
        self.next = (base + size.max(1) + ALIGN).div_ceil(ALIGN) * ALIGN + ALIGN;
        self.used += size;
        // Fresh memory holds junk, as on a GPU.
        self.allocs.insert(base, vec![0xa5; bytes]);
        Ok(base)
    }

    fn free(&mut self, ptr: Ptr) -> Result<(), CuError> {
        self.alive()?;
        match self.allocs.remove(&ptr) {
            Some(mem) => {
                self.used -= mem.len() as u64;
                Ok(())
            }
            None => Err(invalid(format!("free of {ptr:#x}, which is not an allocation"))),
        }
    }

    fn upload(&mut self, base: Ptr, offset: usize, src: &[u8]) -> Result<(), CuError> {
        self.alive()?;
        self.range(base, offset, src.len())?.copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, base: Ptr, offset: usize, dst: &mut [u8]) -> Result<(), CuError> {
        self.alive()?;
        dst.copy_from_slice(self.range(base, offset, dst.len())?);
        Ok(())
    }

    fn copy(&mut self, src: (Ptr, usize), dst: (Ptr, usize), bytes: usize) -> Result<(), CuError> {
        self.alive()?;
        let overlap = src.0 == dst.0 && src.1 < dst.1 + bytes && dst.1 < src.1 + bytes;
        if overlap && bytes > 0 {
            return Err(invalid("cuMemcpyDtoDAsync between overlapping ranges"));
        }
        let data = self.range(src.0, src.1, bytes)?.to_vec();
        self.range(dst.0, dst.1, bytes)?.copy_from_slice(&data);
        Ok(())
    }

    fn zero(&mut self, base: Ptr, offset: usize, bytes: usize) -> Result<(), CuError> {
        self.alive()?;
        self.range(base, offset, bytes)?.fill(0);
        Ok(())
    }

    fn launch(&mut self, call: &LaunchCall<'_>) -> Result<(), CuError> {
        self.alive()?;
        check_launch(call)?;
        self.launches += 1;
        if let Some((after, code)) = self.config.fault_after
            && self.launches > after
        {
            self.fault(emulated(code, format!("injected fault in {}", call.kernel)));
            return Ok(());
        }
        let mut memory = self.take(call.args)?;
        run_kernel(call.kernel, call.params, &mut memory);
        let fault = memory.fault.take();
        self.put_back(memory);
        if let Some(detail) = fault {
            self.fault(emulated(
                CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
                format!("{}: {detail}", call.kernel),
            ));
        }
        Ok(())
    }

    fn gemm(&mut self, args: &GemmArgs) -> Result<(), CuError> {
        self.alive()?;
        let c = &args.call;
        let rows_a = if c.trans_a { c.k } else { c.m };
        let rows_b = if c.trans_b { c.n } else { c.k };
        let lds_ok = c.a.ld >= rows_a.max(1) && c.b.ld >= rows_b.max(1) && c.c.ld >= c.m.max(1);
        let fits = [c.m, c.n, c.k, c.a.ld, c.b.ld, c.c.ld, c.batch]
            .iter()
            .all(|&v| i32::try_from(v).is_ok());
        if !lds_ok || !fits || !c.dtype.is_float() {
            return Err(CuError::Blas {
                status: cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE,
                call: "cublasGemmStridedBatchedEx",
            });
        }
        let mut memory = self.take(&args.ptrs)?;
        let t = c.dtype;
        let round = |v: f32| if args.tf32 && t == DType::F32 { tf32(v) } else { v };
        for batch in 0..c.batch {
            for i in 0..c.m {
                for j in 0..c.n {
                    let mut acc = 0.0f32;
                    for p in 0..c.k {
                        let [a, b, _] = gemm::addresses(c, batch, i, j, p);
                        let x = round(memory.load_f32(c.a.view, a as u64, t));
                        let y = round(memory.load_f32(c.b.view, b as u64, t));
                        acc += x * y;
                    }
                    let [_, _, at] = gemm::addresses(c, batch, i, j, 0);
                    memory.store_f32(c.c.view, at as u64, t, acc);
                }
            }
        }
        let fault = memory.fault.take();
        self.put_back(memory);
        if let Some(detail) = fault {
            self.fault(emulated(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS, format!("GEMM: {detail}")));
        }
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), CuError> {
        self.alive()
    }

    fn memory(&mut self) -> Result<(u64, u64), CuError> {
        self.alive()?;
        Ok((self.config.memory - self.used, self.config.memory))
    }

    fn has_blas(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Team;

    #[test]
    fn ported_math_matches_the_reference_closely() {
        for &x in &[-100.0f32, -20.0, -1.5, -0.3, 0.0, 0.2, 1.0, 3.7, 40.0, 88.0] {
            let e = mc_exp(x);
            let want = f64::from(x).exp();
            assert!(
                ((f64::from(e) - want) / want.max(1e-300)).abs() < 1e-6 || (want < 1e-38),
                "exp({x})"
            );
            assert!((f64::from(mc_tanh(x)) - f64::from(x).tanh()).abs() < 1e-6, "tanh({x})");
        }
        assert_eq!(mc_exp(-100.0), 0.0);
        assert_eq!(mc_exp(100.0), f32::INFINITY);
        assert!(mc_exp(f32::NAN).is_nan());
        assert!((mc_gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((mc_gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(tf32(1.0), 1.0);
        assert_eq!(tf32(1.0 + f32::EPSILON), 1.0);
    }

    #[test]
    fn casts_follow_the_contract() {
        let c = |v: u32, a, b| cast(u64::from(v), a, b) as u32;
        assert_eq!(c((-3.7f32).to_bits(), DType::F32, DType::U32), 0);
        assert_eq!(c(300.5f32.to_bits(), DType::F32, DType::U8), 255);
        assert_eq!(c(f32::NAN.to_bits(), DType::F32, DType::U8), 0);
        assert_eq!(c(1000, DType::U32, DType::U8), 255);
        assert_eq!(c(200, DType::U8, DType::U32), 200);
        assert_eq!(f32::from_bits(c(7, DType::U8, DType::F32)), 7.0);
        // 2049 is not an f16: ties to even gives 2048, as `Element::from_f64`.
        assert_eq!(f16::from_bits(c(2049, DType::U32, DType::F16) as u16).to_f32(), 2048.0);
        assert_eq!(c(0x3c00, DType::F16, DType::BF16), 0x3f80);
        // The spec's integer examples: saturating int -> int, truncating float -> int.
        let i64_bits = |v: i64| v as u64;
        assert_eq!(c((-5i32) as u32, DType::I32, DType::U32), 0);
        assert_eq!(cast(i64_bits(1 << 40), DType::I64, DType::I32), i32::MAX as u64);
        assert_eq!(c(4_000_000_000, DType::U32, DType::I32), i32::MAX as u32);
        assert_eq!(c((-3.7f32).to_bits(), DType::F32, DType::I32), (-3i32) as u32);
        assert_eq!(cast(u64::from(f32::NAN.to_bits()), DType::F32, DType::I64), 0);
        assert_eq!(cast(u64::from((-1e30f32).to_bits()), DType::F32, DType::I64), 1 << 63);
        // i64 -> f32 rounds once: 2^60 + 2^36 + 1 is above the tie between two f32s.
        let x = (1i64 << 60) + (1 << 36) + 1;
        let want = u64::from(((1u64 << 60) as f32 + 2f32.powi(37)).to_bits());
        assert_eq!(cast(i64_bits(x), DType::I64, DType::F32), want);
        // ...and to bf16 through round-to-odd: still once.
        let y = (1i64 << 60) + (1 << 52) + 1;
        let bf = bf16::from_bits(cast(i64_bits(y), DType::I64, DType::BF16) as u16);
        assert_eq!(bf.to_f32(), (1u64 << 60) as f32 + 2f32.powi(53));
    }

    #[test]
    fn integer_arithmetic_wraps_and_floors() {
        let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
        assert_eq!(wrap(int_binary(BinaryOp::Add, 200, 100), DType::U8), 44);
        assert_eq!(wrap(int_binary(BinaryOp::Add, max, 1), DType::I64), i64::MIN as u64);
        assert_eq!(int_binary(BinaryOp::Div, -7, 2), -4);
        assert_eq!(int_binary(BinaryOp::Div, 7, -2), -4);
        assert_eq!(int_binary(BinaryOp::Div, 7, 0), 0);
        assert_eq!(wrap(int_binary(BinaryOp::Div, min, -1), DType::I64), i64::MIN as u64);
        assert_eq!(int_binary(BinaryOp::Rem, -7, 2), 1);
        assert_eq!(int_binary(BinaryOp::Rem, 7, -2), -1);
        assert_eq!(int_binary(BinaryOp::Rem, min, -1), 0);
        assert_eq!(int_binary(BinaryOp::Rem, 7, 0), 0);
        assert_eq!(wrap(int_unary(UnaryOp::Neg, min), DType::I64), i64::MIN as u64);
        assert_eq!(wrap(int_unary(UnaryOp::Abs, min), DType::I64), i64::MIN as u64);
        assert_eq!(binary(BinaryOp::Rem, -7.0, 2.0), 1.0);
        assert_eq!(binary(BinaryOp::Rem, 7.0, -2.0), -1.0);
        assert!(binary(BinaryOp::Rem, 7.0, 0.0).is_nan());
    }

    #[test]
    fn illegal_accesses_are_sticky_faults() {
        let mut e = Emulator::new(EmulatorConfig::default());
        let a = e.alloc(16).unwrap();
        let mut p = McParams { count: 8, rank: 1, ..McParams::default() };
        p.dims[0] = 8;
        p.ops[0].strides[0] = 1;
        let call = LaunchCall {
            kernel: Kernel::Fill(DType::F32),
            params: &p,
            args: &[a],
            grid: [1, 1, 1],
            block: [256, 1, 1],
        };
        // The launch itself returns (as an asynchronous fault would)...
        e.launch(&call).unwrap();
        // ...and everything after fails with the illegal address.
        let err = e.synchronize().unwrap_err();
        assert!(err.is_sticky(), "{err:?}");
        assert!(e.alloc(4).is_err());
        // Bad shapes are refused at launch, without poisoning the device.
        let mut e = Emulator::new(EmulatorConfig::default());
        let a = e.alloc(64).unwrap();
        let mut p4 = p;
        p4.count = 4;
        p4.dims[0] = 4;
        let bad = LaunchCall { block: [2048, 1, 1], params: &p4, args: &[a], ..call };
        assert!(!e.launch(&bad).unwrap_err().is_sticky());
        let team = LaunchCall {
            kernel: Kernel::Reduce(ReduceOp::Sum, DType::F32, Team::Warp),
            args: &[a, a],
            block: [48, 1, 1],
            ..bad
        };
        assert!(e.launch(&team).is_err());
        assert!(e.synchronize().is_ok());
    }
}
