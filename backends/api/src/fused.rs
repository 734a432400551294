//! Fused elementwise programs: a chain of elementwise steps over one shape as one op
//! ([`Op::Fused`]), so that GELU's backward or an optimizer update reads and writes memory
//! once instead of once per step.
//!
//! A program is a list of [`Instr`]s; instruction `i` defines register `i` and may use only
//! registers before it; the last one is the result. Every step computes in f32 exactly as
//! the primitive op of the same name computes on f32 tensors, and the result is rounded to
//! the output's dtype once. That makes a program's meaning its [`decompose`]: the same steps
//! run as primitive ops on f32 temporaries, then one cast. A backend with a native kernel
//! must match it (the conformance kit compares the two); a backend without one calls
//! [`decompose`] from its `run` and is correct with no kernel of its own.

use crate::{BinaryOp, BufferId, CompareOp, DType, Device, Layout, Op, Result, UnaryOp, View};

/// Inputs one program may read.
pub const MAX_INPUTS: usize = 8;
/// Instructions one program may hold.
pub const MAX_INSTRS: usize = 48;

/// One step of a fused program; its value is the register numbered by its position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Instr {
    /// Input `n` of the op, converted to f32.
    Input(usize),
    /// A constant (rounded to f32).
    Const(f64),
    /// `op(register)`, as `Op::Unary` computes it.
    Unary(UnaryOp, usize),
    /// `register ∘ register`, as `Op::Binary` computes it.
    Binary(BinaryOp, usize, usize),
    /// `register · mul + add`, as `Op::Affine` computes it.
    Affine(usize, f64, f64),
    /// `1.0` where `register ∘ register` holds, else `0.0`, as `Op::Compare` with an f32
    /// output computes it: ReLU's slope is `Compare(Gt, x, zero)`.
    Compare(CompareOp, usize, usize),
}

impl Instr {
    /// The registers this instruction reads.
    pub fn operands(&self) -> impl Iterator<Item = usize> {
        let (a, b) = match *self {
            Instr::Input(_) | Instr::Const(_) => (None, None),
            Instr::Unary(_, a) | Instr::Affine(a, _, _) => (Some(a), None),
            Instr::Binary(_, a, b) | Instr::Compare(_, a, b) => (Some(a), Some(b)),
        };
        a.into_iter().chain(b)
    }
}

/// Why `program` over `inputs` inputs is not well formed, if it is not.
pub(crate) fn program_error(program: &[Instr], inputs: usize) -> Option<String> {
    if program.is_empty() || program.len() > MAX_INSTRS {
        return Some(format!(
            "a program has 1 to {MAX_INSTRS} instructions, not {}",
            program.len()
        ));
    }
    if inputs == 0 || inputs > MAX_INPUTS {
        return Some(format!("a program reads 1 to {MAX_INPUTS} inputs, not {inputs}"));
    }
    for (i, instr) in program.iter().enumerate() {
        if let Some(r) = instr.operands().find(|&r| r >= i) {
            return Some(format!(
                "instruction {i} ({instr:?}) reads register {r}, not defined before it"
            ));
        }
        match *instr {
            Instr::Input(n) if n >= inputs => {
                return Some(format!("instruction {i} reads input {n} of {inputs}"));
            }
            Instr::Const(c) if !c.is_finite() => {
                return Some(format!("instruction {i}: the constant {c} is not finite"));
            }
            Instr::Affine(_, mul, add) if !(mul.is_finite() && add.is_finite()) => {
                return Some(format!(
                    "instruction {i}: affine factors {mul}, {add} are not finite"
                ));
            }
            _ => {}
        }
    }
    None
}

/// Runs a validated `Op::Fused` as primitive ops on `device`: each register an f32
/// temporary of the output's shape (an f32 input is used in place), then one cast into the
/// output. An `Op::FusedReduce` runs as its program (`Op::Fused`, through `device.run`, so a
/// native fused kernel is used where there is one) into an f32 temporary, then `Op::Reduce`
/// (and a cast for a 16-bit output). Temporaries are freed before returning (after the work
/// they feed, in queue order).
pub fn decompose(device: &dyn Device, op: &Op) -> Result<()> {
    if let Op::FusedReduce { inputs, program, op: reduce, axis, out } = op {
        op.validate(&device.info().label())?;
        return decompose_reduce(device, inputs, program, *reduce, *axis, out);
    }
    let Op::Fused { inputs, program, out } = op else {
        return Err(crate::Error::InvalidArgument {
            op: op.name(),
            device: device.info().label(),
            detail: "fused::decompose takes an Op::Fused or an Op::FusedReduce".into(),
        });
    };
    op.validate(&device.info().label())?;
    let dims = out.dims().to_vec();
    let mut temps = Temps { device, buffers: Vec::new() };
    let result = (|| -> Result<()> {
        let mut registers: Vec<View> = Vec::with_capacity(program.len());
        for instr in program {
            let mut temp = || temps.f32(&dims);
            let value = match *instr {
                Instr::Input(n) if inputs[n].dtype == DType::F32 => inputs[n].clone(),
                Instr::Input(n) => {
                    let t = temp()?;
                    device.run(&Op::Cast { input: inputs[n].clone(), out: t.clone() })?;
                    t
                }
                Instr::Const(value) => {
                    let t = temp()?;
                    device.run(&Op::Fill { out: t.clone(), value: value as f32 as f64 })?;
                    t
                }
                Instr::Unary(unary, a) => {
                    let t = temp()?;
                    let input = registers[a].clone();
                    device.run(&Op::Unary { op: unary, input, out: t.clone() })?;
                    t
                }
                Instr::Binary(binary, a, b) => {
                    let t = temp()?;
                    let (lhs, rhs) = (registers[a].clone(), registers[b].clone());
                    device.run(&Op::Binary { op: binary, lhs, rhs, out: t.clone() })?;
                    t
                }
                Instr::Affine(a, mul, add) => {
                    let t = temp()?;
                    let input = registers[a].clone();
                    device.run(&Op::Affine { input, out: t.clone(), mul, add })?;
                    t
                }
                Instr::Compare(compare, a, b) => {
                    let t = temp()?;
                    let (lhs, rhs) = (registers[a].clone(), registers[b].clone());
                    device.run(&Op::Compare { op: compare, lhs, rhs, out: t.clone() })?;
                    t
                }
            };
            registers.push(value);
        }
        // `validate` above refuses an empty program: this error cannot happen.
        let last = registers.pop().ok_or_else(|| crate::Error::InvalidArgument {
            op: op.name(),
            device: device.info().label(),
            detail: "an empty fused program".into(),
        })?;
        if last.dtype == out.dtype {
            device.run(&Op::Copy { input: last, out: out.clone() })
        } else {
            device.run(&Op::Cast { input: last, out: out.clone() })
        }
    })();
    temps.free(result)
}

/// Runs a validated `Op::Fused` of more inputs than `max_inputs` (at least 2) as several
/// `Op::Fused` of at most `max_inputs` inputs each, for a device whose fused kernels take
/// fewer inputs than a program may read (a layer norm's output reads five). Each part
/// computes one register of the program from the op's inputs and earlier parts' values
/// (f32 temporaries of the output's shape), the last part the result into the output:
/// every step is computed as the whole program computes it and a register's f32 value is
/// stored exactly, so the result is the program's. A program within `max_inputs` runs as
/// one op.
pub fn decompose_in_parts(device: &dyn Device, op: &Op, max_inputs: usize) -> Result<()> {
    let Op::Fused { inputs, program, out } = op else {
        return Err(crate::Error::InvalidArgument {
            op: op.name(),
            device: device.info().label(),
            detail: "fused::decompose_in_parts takes an Op::Fused".into(),
        });
    };
    op.validate(&device.info().label())?;
    let parts = split(program, max_inputs.max(2));
    let dims = out.dims().to_vec();
    let mut temps = Temps { device, buffers: Vec::new() };
    let result = (|| -> Result<()> {
        let mut values: Vec<Option<View>> = vec![None; program.len()];
        let last = program.len() - 1;
        for part in parts {
            let mut views = Vec::with_capacity(part.sources.len());
            for source in &part.sources {
                views.push(match *source {
                    Source::Input(m) => inputs[m].clone(),
                    Source::Register(r) => {
                        values[r].clone().ok_or_else(|| crate::Error::Fault {
                            op: op.name(),
                            device: device.info().label(),
                            detail: format!("internal: register {r} used before its part"),
                        })?
                    }
                });
            }
            let target = if part.register == last {
                out.clone()
            } else {
                let t = temps.f32(&dims)?;
                values[part.register] = Some(t.clone());
                t
            };
            device.run(&Op::Fused { inputs: views, program: part.program, out: target })?;
        }
        Ok(())
    })();
    temps.free(result)
}

/// Where a part of a split program reads a value: an input of the op, or a register an
/// earlier part computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Input(usize),
    Register(usize),
}

/// One part of a split program: `program` over `sources` computes `register` of the whole.
#[derive(Debug)]
struct Part {
    register: usize,
    sources: Vec<Source>,
    program: Vec<Instr>,
}

/// Cuts `program` into parts of at most `max_inputs` (≥ 2) sources each, in dependency
/// order, the last computing the result. Going through the registers in order, each gets
/// the sources its value depends on; where that set grows past `max_inputs`, its operands
/// are computed by parts of their own (largest set first) and it reads them from there.
/// An operand read at no cost (an input, or a value of constants alone) is never a part.
/// A register's part reads only the parts decided up to that register, so its sources are
/// the set it was given here.
fn split(program: &[Instr], max_inputs: usize) -> Vec<Part> {
    let n = program.len();
    // The register whose sources made `r` a part of its own, if any.
    let mut part_for: Vec<Option<usize>> = vec![None; n];
    for r in 0..n {
        let set =
            |part_for: &[Option<usize>], x: usize| cone(program, x, &|o| part_for[o].is_some()).1;
        if set(&part_for, r).len() <= max_inputs {
            continue;
        }
        let mut operands: Vec<usize> = program[r].operands().collect();
        operands.sort_by_key(|&o| std::cmp::Reverse(set(&part_for, o).len()));
        for o in operands {
            let free = matches!(program[o], Instr::Input(_)) || set(&part_for, o).is_empty();
            if !free && part_for[o].is_none() {
                part_for[o] = Some(r);
                if set(&part_for, r).len() <= max_inputs {
                    break;
                }
            }
        }
    }
    part_for[n - 1] = Some(n - 1);
    (0..n).filter(|&r| part_for[r].is_some()).map(|r| part(program, r, &part_for)).collect()
}

/// The registers `root`'s value is computed from (`root` included) down to inputs and to
/// registers that `is_part` (their values read, not recomputed), and the sources that walk
/// reaches, each once, sorted.
fn cone(
    program: &[Instr],
    root: usize,
    is_part: &dyn Fn(usize) -> bool,
) -> (Vec<bool>, Vec<Source>) {
    let mut needed = vec![false; program.len()];
    needed[root] = true;
    let mut sources = Vec::new();
    for r in (0..=root).rev() {
        if !needed[r] {
            continue;
        }
        if r != root && is_part(r) {
            sources.push(Source::Register(r));
        } else if let Instr::Input(m) = program[r] {
            sources.push(Source::Input(m));
        } else {
            for o in program[r].operands() {
                needed[o] = true;
            }
        }
    }
    sources.sort();
    sources.dedup();
    (needed, sources)
}

/// The part computing register `root`: its cone, renumbered, each source read as an input.
fn part(program: &[Instr], root: usize, part_for: &[Option<usize>]) -> Part {
    let reads_part = |o: usize| o != root && part_for[o].is_some_and(|by| by <= root);
    let (needed, mut sources) = cone(program, root, &reads_part);
    if sources.is_empty() {
        // A result of constants alone still names an input (an op reads at least one).
        sources.push(Source::Input(0));
    }
    let input = |s: Source| sources.iter().position(|&x| x == s).unwrap_or(usize::MAX);
    let mut renumbered = vec![usize::MAX; program.len()];
    let mut out = Vec::new();
    for r in (0..=root).filter(|&r| needed[r]) {
        let at = |o: usize| renumbered[o];
        let instr = match program[r] {
            _ if reads_part(r) => Instr::Input(input(Source::Register(r))),
            Instr::Input(m) => Instr::Input(input(Source::Input(m))),
            Instr::Const(c) => Instr::Const(c),
            Instr::Unary(op, a) => Instr::Unary(op, at(a)),
            Instr::Binary(op, a, b) => Instr::Binary(op, at(a), at(b)),
            Instr::Affine(a, mul, add) => Instr::Affine(at(a), mul, add),
            Instr::Compare(op, a, b) => Instr::Compare(op, at(a), at(b)),
        };
        renumbered[r] = out.len();
        out.push(instr);
    }
    Part { register: root, sources, program: out }
}

/// The f32 temporaries of one decomposition.
/// A decomposition's temporary buffers on its device.
pub(crate) struct Temps<'d> {
    pub(crate) device: &'d dyn Device,
    pub(crate) buffers: Vec<BufferId>,
}

impl Temps<'_> {
    /// A fresh contiguous f32 temporary of `dims`.
    pub(crate) fn f32(&mut self, dims: &[usize]) -> Result<View> {
        self.of(dims, DType::F32)
    }

    /// A fresh contiguous temporary of `dims` and `dtype`.
    pub(crate) fn of(&mut self, dims: &[usize], dtype: DType) -> Result<View> {
        let numel = crate::Shape::new(dims.to_vec()).numel();
        let buffer = self.device.alloc(numel.max(1).saturating_mul(dtype.size_in_bytes()))?;
        self.buffers.push(buffer);
        Ok(View::new(buffer, Layout::contiguous(dims), dtype))
    }

    /// Frees every temporary (after the work they feed, in queue order); `result` is the
    /// decomposition's, and a failed free is the error only where it succeeded.
    pub(crate) fn free(self, result: Result<()>) -> Result<()> {
        for buffer in self.buffers {
            let freed = self.device.free(buffer);
            if result.is_ok() {
                freed?;
            }
        }
        result
    }
}

fn decompose_reduce(
    device: &dyn Device,
    inputs: &[View],
    program: &[Instr],
    op: crate::ReduceOp,
    axis: usize,
    out: &View,
) -> Result<()> {
    let mut temps = Temps { device, buffers: Vec::new() };
    let result = (|| -> Result<()> {
        let values = temps.f32(inputs[0].dims())?;
        let out_values = values.clone();
        device.run(&Op::Fused {
            inputs: inputs.to_vec(),
            program: program.to_vec(),
            out: out_values,
        })?;
        if out.dtype == DType::F32 {
            return device.run(&Op::Reduce { op, input: values, out: out.clone(), axis });
        }
        let reduced = temps.f32(out.dims())?;
        device.run(&Op::Reduce { op, input: values, out: reduced.clone(), axis })?;
        device.run(&Op::Cast { input: reduced, out: out.clone() })
    })();
    temps.free(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceId, ErrorKind};

    fn view(index: u64, dims: &[usize], dtype: DType) -> View {
        let buffer = BufferId { device: DeviceId::fresh(), index };
        View::new(buffer, Layout::contiguous(dims.to_vec()), dtype)
    }

    fn fused(program: Vec<Instr>, inputs: usize) -> Op {
        Op::Fused {
            inputs: (0..inputs as u64).map(|i| view(i, &[4], DType::F32)).collect(),
            program,
            out: view(99, &[4], DType::F16),
        }
    }

    #[test]
    fn well_formed_programs_pass() {
        let program = vec![
            Instr::Input(0),
            Instr::Input(1),
            Instr::Binary(BinaryOp::Mul, 0, 1),
            Instr::Unary(UnaryOp::Tanh, 2),
            Instr::Affine(3, 2.0, 1.0),
            Instr::Const(0.5),
            Instr::Binary(BinaryOp::Add, 4, 5),
        ];
        fused(program, 2).validate("test:0").unwrap();
        assert_eq!(fused(vec![Instr::Input(0)], 1).name(), "fused");
    }

    #[test]
    fn malformed_programs_are_invalid_arguments_naming_the_problem() {
        let cases: Vec<(Vec<Instr>, usize, &str)> = vec![
            (vec![], 1, "1 to 48 instructions"),
            (vec![Instr::Input(0); MAX_INSTRS + 1], 1, "1 to 48 instructions"),
            (vec![Instr::Input(0)], 0, "1 to 8 inputs"),
            (vec![Instr::Input(0); 2], MAX_INPUTS + 1, "1 to 8 inputs"),
            (vec![Instr::Input(2)], 2, "reads input 2 of 2"),
            (vec![Instr::Input(0), Instr::Unary(UnaryOp::Exp, 1)], 1, "reads register 1"),
            (vec![Instr::Binary(BinaryOp::Add, 0, 0)], 1, "reads register 0"),
            (vec![Instr::Const(f64::NAN)], 1, "not finite"),
            (vec![Instr::Input(0), Instr::Affine(0, f64::INFINITY, 0.0)], 1, "not finite"),
        ];
        for (program, inputs, says) in cases {
            let err = fused(program.clone(), inputs).validate("test:0").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{program:?}: {err}");
            assert!(err.to_string().contains(says), "{program:?}: {err}");
            assert!(err.to_string().contains("fused"), "{err}");
        }
    }

    #[test]
    fn fused_reductions_check_their_shapes_and_reduction() {
        let reduce = |op, out: &[usize]| Op::FusedReduce {
            inputs: vec![view(0, &[3, 4], DType::F32), view(1, &[3, 4], DType::F16)],
            program: vec![Instr::Input(0), Instr::Input(1), Instr::Binary(BinaryOp::Mul, 0, 1)],
            op,
            axis: 1,
            out: view(9, out, DType::BF16),
        };
        reduce(crate::ReduceOp::Sum, &[3, 1]).validate("test:0").unwrap();
        assert_eq!(reduce(crate::ReduceOp::Max, &[3, 1]).name(), "fused_reduce.max");
        let wrong_shape = reduce(crate::ReduceOp::Mean, &[1, 4]).validate("test:0").unwrap_err();
        assert_eq!(wrong_shape.kind(), ErrorKind::Shape, "{wrong_shape}");
        assert!(wrong_shape.to_string().contains("[3, 1]"), "{wrong_shape}");
        let argmax = reduce(crate::ReduceOp::ArgMax, &[3, 1]).validate("test:0").unwrap_err();
        assert_eq!(argmax.kind(), ErrorKind::InvalidArgument, "{argmax}");
        let mut mismatched = reduce(crate::ReduceOp::Sum, &[3, 1]);
        if let Op::FusedReduce { inputs, .. } = &mut mismatched {
            inputs[1] = view(1, &[3, 5], DType::F32);
        }
        assert_eq!(mismatched.validate("test:0").unwrap_err().kind(), ErrorKind::Shape);
    }

    #[test]
    fn inputs_must_be_floats_of_the_outputs_shape() {
        let mut op = fused(vec![Instr::Input(0)], 1);
        if let Op::Fused { inputs, .. } = &mut op {
            inputs[0] = view(0, &[5], DType::F32);
        }
        assert_eq!(op.validate("test:0").unwrap_err().kind(), ErrorKind::Shape);
        if let Op::Fused { inputs, .. } = &mut op {
            inputs[0] = view(0, &[4], DType::U32);
        }
        assert_eq!(op.validate("test:0").unwrap_err().kind(), ErrorKind::UnsupportedDType);
        // The output may not share a buffer with an input.
        if let Op::Fused { inputs, out, .. } = &mut op {
            inputs[0] = view(0, &[4], DType::F32);
            inputs[0].buffer = out.buffer;
        }
        assert_eq!(op.validate("test:0").unwrap_err().kind(), ErrorKind::InvalidArgument);
    }

    /// The program on one element, in f32 (the steps the split tests use).
    fn eval(program: &[Instr], inputs: &[f32]) -> f32 {
        let mut r: Vec<f32> = Vec::new();
        for instr in program {
            let v = match *instr {
                Instr::Input(m) => inputs[m],
                Instr::Const(c) => c as f32,
                Instr::Unary(UnaryOp::Exp, a) => r[a].exp(),
                Instr::Unary(_, a) => -r[a],
                Instr::Binary(BinaryOp::Add, a, b) => r[a] + r[b],
                Instr::Binary(BinaryOp::Sub, a, b) => r[a] - r[b],
                Instr::Binary(BinaryOp::Div, a, b) => r[a] / r[b],
                Instr::Binary(_, a, b) => r[a] * r[b],
                Instr::Affine(a, mul, add) => r[a] * mul as f32 + add as f32,
                Instr::Compare(_, a, b) => f32::from(u8::from(r[a] > r[b])),
            };
            r.push(v);
        }
        r[program.len() - 1]
    }

    /// Parts of at most `max` sources compute what the whole program computes, bit for bit.
    #[test]
    fn split_programs_compute_the_whole_in_parts_of_few_inputs() {
        use Instr::*;
        let layer_norm = vec![
            Input(0),
            Input(1),
            Input(2),
            Input(3),
            Input(4),
            Binary(BinaryOp::Sub, 0, 1),
            Binary(BinaryOp::Mul, 5, 2),
            Binary(BinaryOp::Mul, 6, 3),
            Binary(BinaryOp::Add, 7, 4),
        ];
        // Every input feeds everything after it, and a value of constants alone.
        let mut chain = vec![Input(0), Const(2.0), Const(3.0), Binary(BinaryOp::Mul, 1, 2)];
        for m in 1..8 {
            chain.push(Input(m));
            let last = chain.len() - 1;
            chain.push(Binary(BinaryOp::Add, last - 1, last));
            chain.push(Compare(CompareOp::Gt, last + 1, 3));
            chain.push(Binary(BinaryOp::Sub, last + 1, last + 2));
        }
        let shared = vec![
            Input(0),
            Input(1),
            Input(2),
            Input(3),
            Binary(BinaryOp::Mul, 0, 1),
            Unary(UnaryOp::Exp, 4),
            Binary(BinaryOp::Add, 5, 2),
            Binary(BinaryOp::Div, 6, 3),
            Binary(BinaryOp::Sub, 7, 5),
            Affine(8, 0.5, 0.25),
            Binary(BinaryOp::Mul, 9, 4),
        ];
        let values: Vec<f32> = (0..8).map(|k| 0.37 * k as f32 - 0.9).collect();
        for (name, program, want_parts) in
            [("layer norm", &layer_norm, 2), ("chain", &chain, 0), ("shared", &shared, 0)]
        {
            let whole = eval(program, &values);
            for max in [2, 3, 4, 8] {
                let parts = split(program, max);
                if max == 3 && want_parts > 0 {
                    assert_eq!(parts.len(), want_parts, "{name}: {parts:?}");
                }
                let mut regs = vec![f32::NAN; program.len()];
                for part in &parts {
                    assert!(part.sources.len() <= max, "{name}, max {max}: {part:?}");
                    assert!(program_error(&part.program, part.sources.len()).is_none());
                    let ins: Vec<f32> = part
                        .sources
                        .iter()
                        .map(|s| match *s {
                            Source::Input(m) => values[m],
                            Source::Register(r) => {
                                assert!(!regs[r].is_nan(), "{name}: {r} read before its part");
                                regs[r]
                            }
                        })
                        .collect();
                    regs[part.register] = eval(&part.program, &ins);
                }
                assert_eq!(parts.last().map(|p| p.register), Some(program.len() - 1));
                let got = regs[program.len() - 1];
                assert_eq!(got.to_bits(), whole.to_bits(), "{name}, max {max}");
            }
        }
    }
}
