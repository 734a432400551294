//! Fused elementwise programs (`Op::Fused`): every register is one block of f32 that stays
//! in L1, so a chain of steps reads each input and writes the output once.
//!
//! Each step calls the same SIMD loop as the primitive op of its name (`simd::unary`,
//! `simd::binary_vv`, `simd::affine`), so a program computes what its decomposition into
//! primitive ops computes.

use std::cell::RefCell;

use half::{bf16, f16};
use manychips_api::{CompareOp, DType, Instr, Layout};

use super::elementwise::{BLOCK, load, store};
use super::plan::{MIN_CHUNK, MIN_CHUNK_HEAVY, Plan};
use super::simd;
use crate::element::Elem;

/// One input as its stored type.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl Src<'_> {
    pub fn new(words: &[u64], dtype: DType) -> Option<Src<'_>> {
        match dtype {
            DType::F32 => Some(Src::F32(bytemuck::cast_slice(words))),
            DType::F16 => Some(Src::F16(bytemuck::cast_slice(words))),
            DType::BF16 => Some(Src::BF16(bytemuck::cast_slice(words))),
            DType::U32 | DType::U8 | DType::I32 | DType::I64 => None,
        }
    }

    fn load(&self, off: usize, stride: usize, dst: &mut [f32]) {
        match self {
            Src::F32(s) => load(s, off, stride, dst),
            Src::F16(s) => load(s, off, stride, dst),
            Src::BF16(s) => load(s, off, stride, dst),
        }
    }
}

/// `out = program(inputs)`; the inputs have `out`'s shape (validated).
pub(crate) fn run<D: Elem>(
    program: &[Instr],
    inputs: &[(Src<'_>, &Layout)],
    out: (&mut [D], &Layout),
) {
    run_with(program, inputs, out, min_chunk(program))
}

/// Elements per parallel task for `program`: a task should hold about as much work as
/// [`MIN_CHUNK`] elements of one cheap step. A bias and a ReLU over a 64×128 batch is then
/// one task: split in two, its hand-off cost more than the whole op (11.6 against 7.3 µs).
fn min_chunk(program: &[Instr]) -> usize {
    let steps: usize = program
        .iter()
        .map(|instr| match *instr {
            Instr::Input(_) | Instr::Const(_) => 0,
            Instr::Unary(op, _) if simd::unary_is_heavy(op) => HEAVY_STEP,
            _ => 1,
        })
        .sum();
    (MIN_CHUNK / steps.max(1)).max(MIN_CHUNK_HEAVY)
}

/// What one transcendental step (exp, tanh) costs in cheap steps (add, mul).
const HEAVY_STEP: usize = 8;

thread_local! {
    /// Register memory kept from op to op on each thread: allocating and zeroing it per task
    /// cost a short program more than its arithmetic.
    static REGISTERS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A task's registers (`count` blocks of [`BLOCK`]) and scalar values (`count`), taken from
/// this thread's [`REGISTERS`] and given back when dropped. Every register is written
/// before it is read, so stale contents from an earlier op are never seen.
struct Registers {
    memory: Vec<f32>,
    count: usize,
}

impl Registers {
    fn take(count: usize) -> Registers {
        let mut memory = REGISTERS.with(|r| r.take());
        let len = count * (BLOCK + 1);
        if memory.len() < len {
            memory.resize(len, 0.0);
        }
        Registers { memory, count }
    }

    /// (blocks, scalar values).
    fn split(&mut self) -> (&mut [f32], &mut [f32]) {
        let (blocks, rest) = self.memory.split_at_mut(self.count * BLOCK);
        (blocks, &mut rest[..self.count])
    }
}

impl Drop for Registers {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        REGISTERS.with(|r| {
            if let Ok(mut kept) = r.try_borrow_mut()
                && kept.capacity() < memory.capacity()
            {
                *kept = memory;
            }
        });
    }
}

/// [`run`] on this thread alone, for a caller that is itself one of several parallel
/// tasks (a fused reduction's block of rows): splitting again only adds hand-offs.
pub(crate) fn run_here<D: Elem>(
    program: &[Instr],
    inputs: &[(Src<'_>, &Layout)],
    out: (&mut [D], &Layout),
) {
    run_with(program, inputs, out, usize::MAX)
}

/// [`run`] with parallel tasks of at least `min_chunk` elements.
fn run_with<D: Elem>(
    program: &[Instr],
    inputs: &[(Src<'_>, &Layout)],
    (out, ol): (&mut [D], &Layout),
    min_chunk: usize,
) {
    macro_rules! with_arity {
        ($($n:literal),*) => {
            match inputs.len() {
                $($n => run_n::<D, { $n + 1 }>(program, inputs, out, ol, min_chunk),)*
                _ => unreachable!("validated: 1 to {} inputs", manychips_api::fused::MAX_INPUTS),
            }
        };
    }
    with_arity!(1, 2, 3, 4, 5, 6, 7, 8)
}

fn run_n<D: Elem, const N: usize>(
    program: &[Instr],
    inputs: &[(Src<'_>, &Layout)],
    out: &mut [D],
    ol: &Layout,
    min_chunk: usize,
) {
    let layouts: [&Layout; N] = std::array::from_fn(|k| if k == 0 { ol } else { inputs[k - 1].1 });
    let plan = Plan::new(ol.dims(), layouts);
    if let Some((rows, len, inner)) = plan.rows()
        && len <= BLOCK / 2
        && rows.numel() > 1
    {
        return run_rows(program, inputs, out, (&rows, len, inner), min_chunk);
    }
    let strides = plan.inner_strides();
    let last = program.len() - 1;
    // An f32 input read with unit stride is used where it lies: no copy into a register.
    let in_place = |m: usize| match inputs[m].0 {
        Src::F32(s) if strides[m + 1] == 1 => Some(s),
        _ => None,
    };
    let aliased: Vec<Option<(&[f32], usize)>> = program
        .iter()
        .map(|instr| match *instr {
            Instr::Input(m) => in_place(m).map(|s| (s, m)),
            _ => None,
        })
        .collect();
    // Registers that hold one value along a segment (a broadcast input such as a row's mean,
    // a constant, and whatever only they feed): computed once per segment, and combined
    // with full registers by the vector-scalar loops instead of being filled out first.
    let mut scalar = vec![false; program.len()];
    for (k, instr) in program.iter().enumerate() {
        scalar[k] = match *instr {
            Instr::Input(m) => strides[m + 1] == 0,
            Instr::Const(_) => true,
            Instr::Unary(_, a) | Instr::Affine(a, _, _) => scalar[a],
            Instr::Binary(_, a, b) | Instr::Compare(_, a, b) => scalar[a] && scalar[b],
        };
    }
    // The last step writes straight into an f32 output read with unit stride.
    let computes_last = !matches!(program[last], Instr::Input(_) | Instr::Const(_));
    plan.run(
        out,
        min_chunk,
        || Registers::take(program.len()),
        |registers, out, offsets, len| {
            let (regs, values) = registers.split();
            let direct = computes_last && !scalar[last] && strides[0] == 1;
            // The segment's scalar registers, each computed by the same loop as a full one.
            for (k, instr) in program.iter().enumerate().filter(|(k, _)| scalar[*k]) {
                let (before, rest) = values.split_at_mut(k);
                let dst = &mut rest[..1];
                match *instr {
                    Instr::Input(m) => inputs[m].0.load(offsets[m + 1], 0, dst),
                    Instr::Const(c) => dst[0] = c as f32,
                    Instr::Unary(op, a) => simd::unary(op, &before[a..=a], dst),
                    Instr::Binary(op, a, b) => {
                        simd::binary_vv(op, &before[a..=a], &before[b..=b], dst)
                    }
                    Instr::Affine(a, mul, add) => {
                        simd::affine(&before[a..=a], dst, mul as f32, add as f32)
                    }
                    Instr::Compare(op, a, b) => {
                        dst[0] = if compare(op, before[a], before[b]) { 1.0 } else { 0.0 }
                    }
                }
            }
            let mut i = 0;
            while i < len {
                let n = BLOCK.min(len - i);
                let o = offsets[0] + i;
                let mut out_f32 = if direct { D::as_f32_mut(out) } else { None };
                for (k, instr) in program.iter().enumerate() {
                    if aliased[k].is_some() || scalar[k] {
                        continue;
                    }
                    let (before, rest) = regs.split_at_mut(k * BLOCK);
                    let reg = |r: usize| match aliased[r] {
                        Some((s, m)) => &s[offsets[m + 1] + i..offsets[m + 1] + i + n],
                        None => &before[r * BLOCK..r * BLOCK + n],
                    };
                    let dst = match out_f32.as_deref_mut() {
                        Some(o32) if k == last => &mut o32[o..o + n],
                        _ => &mut rest[..n],
                    };
                    match *instr {
                        Instr::Input(m) => {
                            let stride = strides[m + 1];
                            inputs[m].0.load(offsets[m + 1] + i * stride, stride, dst);
                        }
                        _ => compute(instr, reg, values, &scalar, dst),
                    }
                }
                if out_f32.is_none() {
                    let value: &[f32] = match aliased[last] {
                        Some((s, m)) => &s[offsets[m + 1] + i..offsets[m + 1] + i + n],
                        None if scalar[last] => {
                            regs[..n].fill(values[last]);
                            &regs[..n]
                        }
                        None => &regs[last * BLOCK..last * BLOCK + n],
                    };
                    store(value, out, offsets[0] + i * strides[0], strides[0]);
                }
                i += n;
            }
        },
    );
}

/// [`run_n`] over short rows (a layer norm's 96 features, a bias row of 384): each step
/// covers a group of whole rows at once, so the per-step cost of a call is paid per group
/// rather than per row. `rows` walks the rows; each is `len` long, its elements `inner`
/// apart in each operand.
fn run_rows<D: Elem, const N: usize>(
    program: &[Instr],
    inputs: &[(Src<'_>, &Layout)],
    out: &mut [D],
    (rows, len, inner): (&Plan<N>, usize, [usize; N]),
    min_chunk: usize,
) {
    let outer = rows.inner_strides();
    let per_group = BLOCK / len;
    let last = program.len() - 1;
    // One value for the whole group: constants, inputs broadcast along rows and elements
    // alike, and what only they feed. (A row's own value, as a mean, is a full register here.)
    let mut scalar = vec![false; program.len()];
    for (k, instr) in program.iter().enumerate() {
        scalar[k] = match *instr {
            Instr::Input(m) => inner[m + 1] == 0 && outer[m + 1] == 0,
            Instr::Const(_) => true,
            Instr::Unary(_, a) | Instr::Affine(a, _, _) => scalar[a],
            Instr::Binary(_, a, b) | Instr::Compare(_, a, b) => scalar[a] && scalar[b],
        };
    }
    // Operands whose rows lie back to back: an f32 input is read where it lies, and the
    // last step writes such an f32 output directly.
    let dense = |k: usize| inner[k] == 1 && outer[k] == len;
    let aliased: Vec<Option<(&[f32], usize)>> = program
        .iter()
        .map(|instr| match *instr {
            Instr::Input(m) => match inputs[m].0 {
                Src::F32(s) if dense(m + 1) => Some((s, m)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let computes_last = !matches!(program[last], Instr::Input(_) | Instr::Const(_));
    let direct = computes_last && !scalar[last] && dense(0);
    rows.run(
        out,
        min_chunk.div_ceil(len),
        || Registers::take(program.len()),
        |registers, out, offsets, count| {
            let (regs, values) = registers.split();
            for (k, instr) in program.iter().enumerate().filter(|(k, _)| scalar[*k]) {
                let (before, rest) = values.split_at_mut(k);
                let dst = &mut rest[..1];
                match *instr {
                    Instr::Input(m) => inputs[m].0.load(offsets[m + 1], 0, dst),
                    _ => compute(instr, |r| &before[r..=r], before, &scalar, dst),
                }
            }
            let mut row = 0;
            while row < count {
                // An input that repeats one row (a bias) fills its register alike in every
                // group: the first group's load serves the task.
                let loaded = row > 0;
                let group = per_group.min(count - row);
                let n = group * len;
                // Where operand `k`'s group starts.
                let at = |k: usize| offsets[k] + row * outer[k];
                let mut out_f32 = if direct { D::as_f32_mut(out) } else { None };
                for (k, instr) in program.iter().enumerate() {
                    if aliased[k].is_some() || scalar[k] {
                        continue;
                    }
                    let (before, rest) = regs.split_at_mut(k * BLOCK);
                    let reg = |r: usize| match aliased[r] {
                        Some((s, m)) => &s[at(m + 1)..at(m + 1) + n],
                        None => &before[r * BLOCK..r * BLOCK + n],
                    };
                    let dst = match out_f32.as_deref_mut() {
                        Some(o32) if k == last => &mut o32[at(0)..at(0) + n],
                        _ => &mut rest[..n],
                    };
                    match *instr {
                        Instr::Input(m) if loaded && outer[m + 1] == 0 => {}
                        Instr::Input(m) => {
                            let src = &inputs[m].0;
                            for (r, d) in dst.chunks_exact_mut(len).enumerate() {
                                src.load(at(m + 1) + r * outer[m + 1], inner[m + 1], d);
                            }
                        }
                        _ => compute(instr, reg, values, &scalar, dst),
                    }
                }
                if out_f32.is_none() {
                    let value: &[f32] = match aliased[last] {
                        Some((s, m)) => &s[at(m + 1)..at(m + 1) + n],
                        None if scalar[last] => {
                            regs[..n].fill(values[last]);
                            &regs[..n]
                        }
                        None => &regs[last * BLOCK..last * BLOCK + n],
                    };
                    for (r, v) in value.chunks_exact(len).enumerate() {
                        store(v, out, at(0) + r * outer[0], inner[0]);
                    }
                }
                row += group;
            }
        },
    );
}

/// Computes `instr` (any but an input) into `dst`: its full operands read through `reg`,
/// its scalar ones (`scalar[r]`) from `values`.
fn compute<'a>(
    instr: &Instr,
    reg: impl Fn(usize) -> &'a [f32],
    values: &[f32],
    scalar: &[bool],
    dst: &mut [f32],
) {
    match *instr {
        // Inputs are loaded by the caller, which knows their layout.
        Instr::Input(_) => {}
        // Constants are scalar registers: never here.
        Instr::Const(c) => dst.fill(c as f32),
        Instr::Unary(op, a) => simd::unary(op, reg(a), dst),
        Instr::Binary(op, a, b) => match (scalar[a], scalar[b]) {
            (false, false) => simd::binary_vv(op, reg(a), reg(b), dst),
            (false, true) => simd::binary_vs(op, reg(a), values[b], dst),
            (true, _) => simd::binary_sv(op, values[a], reg(b), dst),
        },
        Instr::Affine(a, mul, add) => simd::affine(reg(a), dst, mul as f32, add as f32),
        Instr::Compare(op, a, b) => match (scalar[a], scalar[b]) {
            (false, false) => simd::compare_vv(op, reg(a), reg(b), dst),
            (false, true) => simd::compare_vs(op, reg(a), values[b], dst),
            (true, _) => simd::compare_sv(op, values[a], reg(b), dst),
        },
    }
}

/// `x ∘ y` as `Op::Compare` decides it (IEEE: any comparison with NaN is false but `Ne`).
pub(crate) fn compare(op: CompareOp, x: f32, y: f32) -> bool {
    match op {
        CompareOp::Eq => x == y,
        CompareOp::Ne => x != y,
        CompareOp::Lt => x < y,
        CompareOp::Le => x <= y,
        CompareOp::Gt => x > y,
        CompareOp::Ge => x >= y,
    }
}
