//! Fused elementwise programs (`Op::Fused`) as kernels generated per program: one CUDA
//! function that evaluates the program's steps in f32 registers for each output element, so
//! a chain of steps reads each input and writes the output once instead of launching one
//! kernel (and one pass over memory) per step.
//!
//! Each step is the expression of the primitive op's kernel in kernels/cuda/elementwise.cu
//! (a test checks the tables against that file), so a program computes what its
//! decomposition computes. The program's constants are kernel parameters (`McParams::ext`)
//! as far as they go: an optimizer step whose learning rate and bias corrections change
//! every step compiles once. A generated kernel is registered under its shape (steps and
//! dtypes), so two ops with the same program shape share one NVRTC compile and one module,
//! and a launch of a known shape formats no source text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use manychips_api::{BinaryOp, CompareOp, DType, Instr, ReduceOp, UnaryOp};

/// Inputs a generated kernel takes: `McParams` carries four operands, the output included.
pub(crate) const MAX_INPUTS: usize = 3;

/// Words of `McParams::ext`: an elementwise program's constants take all of them; a fused
/// reduction's row length and inputs' axis strides take the first four.
const EXT_WORDS: usize = 12;
const REDUCE_WORDS: usize = 4;

/// A registered program: an index into the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FusedId(u32);

/// A constant of a registered program: parameter `ext[i]` (f32 bits) or a literal (its
/// bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Constant {
    Slot(usize),
    Literal(u32),
}

/// A program step with its constants resolved to [`Constant`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Input(usize),
    Const(Constant),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Affine(usize, Constant, Constant),
    Compare(CompareOp, usize, usize),
}

/// A generated kernel: its steps (the emulator interprets them), operand dtypes, the
/// reduction it folds the steps' values with (`None`: elementwise), and its CUDA source:
/// `fused`, or `fused_reduce` and `fused_reduce_warp`.
#[derive(Debug)]
pub(crate) struct FusedKernel {
    pub steps: Vec<Step>,
    pub inputs: Vec<DType>,
    pub out: DType,
    pub reduce: Option<ReduceOp>,
    pub source: String,
}

/// What makes two programs one kernel: their steps (constants as slots), dtypes and fold.
type Shape = (Vec<Step>, Vec<DType>, DType, Option<ReduceOp>);

#[derive(Default)]
struct Registry {
    /// Looked up on every launch: by shape, so that a hit costs no source text.
    by_shape: HashMap<Shape, FusedId>,
    /// Shapes whose text came out equal (a step nothing reads differs) share a kernel.
    by_source: HashMap<String, FusedId>,
    kernels: Vec<Arc<FusedKernel>>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// The kernel for `program` over inputs of `inputs` dtypes writing `out` (each element, or
/// each row's fold by `reduce`), and the values of its parameter constants: `(ext word,
/// value)`.
pub(crate) fn register(
    program: &[Instr],
    inputs: &[DType],
    out: DType,
    reduce: Option<ReduceOp>,
) -> (FusedId, Vec<(usize, f32)>) {
    let first = if reduce.is_some() { REDUCE_WORDS } else { 0 };
    let mut values = Vec::new();
    let mut constant = |v: f64| {
        let v = v as f32;
        let slot = first + values.len();
        if slot < EXT_WORDS {
            values.push((slot, v));
            Constant::Slot(slot)
        } else {
            Constant::Literal(v.to_bits())
        }
    };
    let steps: Vec<Step> = program
        .iter()
        .map(|instr| match *instr {
            Instr::Input(m) => Step::Input(m),
            Instr::Const(c) => Step::Const(constant(c)),
            Instr::Unary(op, a) => Step::Unary(op, a),
            Instr::Binary(op, a, b) => Step::Binary(op, a, b),
            Instr::Affine(a, mul, add) => {
                let mul = constant(mul);
                Step::Affine(a, mul, constant(add))
            }
            Instr::Compare(op, a, b) => Step::Compare(op, a, b),
        })
        .collect();
    let shape: Shape = (steps, inputs.to_vec(), out, reduce);
    let mut reg = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&id) = reg.by_shape.get(&shape) {
        return (id, values);
    }
    let source = source(&shape.0, inputs, out, reduce);
    let id = match reg.by_source.get(&source) {
        Some(&id) => id,
        None => {
            let id = FusedId(reg.kernels.len() as u32);
            let steps = shape.0.clone();
            let inputs = inputs.to_vec();
            let kernel = FusedKernel { steps, inputs, out, reduce, source: source.clone() };
            reg.kernels.push(Arc::new(kernel));
            reg.by_source.insert(source, id);
            id
        }
    };
    reg.by_shape.insert(shape, id);
    (id, values)
}

/// The registered kernel `id`.
pub(crate) fn kernel(id: FusedId) -> Arc<FusedKernel> {
    let reg = registry().lock().unwrap_or_else(PoisonError::into_inner);
    // Ids are only made by `register`, and the registry never forgets one.
    reg.kernels[id.0 as usize].clone()
}

/// The element type of `dtype` in kernels/cuda/common.cuh.
fn c_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::F16 => "mc_f16",
        DType::BF16 => "mc_bf16",
        DType::U32 => "u32",
        DType::U8 => "u8",
        DType::I32 => "i32",
        DType::I64 => "i64",
    }
}

/// `MC_UNARY_OPS` of elementwise.cu: the expression of `x`.
pub(crate) fn unary_expr(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "-x",
        UnaryOp::Abs => "fabsf(x)",
        UnaryOp::Exp => "mc_exp(x)",
        UnaryOp::Log => "logf(x)",
        UnaryOp::Sqrt => "sqrtf(x)",
        UnaryOp::Rsqrt => "1.0f / sqrtf(x)",
        UnaryOp::Tanh => "mc_tanh(x)",
        UnaryOp::Sigmoid => "mc_sigmoid(x)",
        UnaryOp::Relu => "fmaxf(x, 0.0f)",
        UnaryOp::GeluTanh => "mc_gelu_tanh(x)",
        UnaryOp::GeluErf => "mc_gelu_erf(x)",
        UnaryOp::Silu => "mc_silu(x)",
        UnaryOp::Sin => "sinf(x)",
        UnaryOp::Cos => "cosf(x)",
    }
}

/// `MC_BINARY_OPS` of elementwise.cu: the expression of `x` and `y`.
pub(crate) fn binary_expr(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "x + y",
        BinaryOp::Sub => "x - y",
        BinaryOp::Mul => "x * y",
        BinaryOp::Div => "x / y",
        BinaryOp::Max => "fmaxf(x, y)",
        BinaryOp::Min => "fminf(x, y)",
        BinaryOp::Pow => "powf(x, y)",
        BinaryOp::Rem => "mc_remf(x, y)",
    }
}

fn constant_expr(c: Constant) -> String {
    match c {
        Constant::Slot(i) => format!("__uint_as_float((u32)p.ext[{i}])"),
        Constant::Literal(bits) => format!("__uint_as_float({bits}u)"),
    }
}

/// The steps of a program as CUDA statements, the value of input `m` read at `at(m)`:
/// `float r<k>` per step, steps nothing reads left out (NVRTC warns of a variable set but
/// never used).
fn statements(steps: &[Step], indent: &str, at: impl Fn(usize) -> String) -> String {
    let mut live = vec![false; steps.len()];
    if let Some(last) = live.last_mut() {
        *last = true;
    }
    for k in (0..steps.len()).rev() {
        if !live[k] {
            continue;
        }
        match steps[k] {
            Step::Unary(_, a) | Step::Affine(a, ..) => live[a] = true,
            Step::Binary(_, a, b) | Step::Compare(_, a, b) => {
                live[a] = true;
                live[b] = true;
            }
            Step::Input(_) | Step::Const(_) => {}
        }
    }
    let mut body = String::new();
    for (k, step) in steps.iter().enumerate().filter(|(k, _)| live[*k]) {
        let line = match *step {
            Step::Input(m) => format!("float r{k} = mc_ld(in{m}, {});", at(m)),
            Step::Const(c) => format!("float r{k} = {};", constant_expr(c)),
            Step::Unary(op, a) => {
                format!("float r{k}; {{ float x = r{a}; r{k} = {}; }}", unary_expr(op))
            }
            Step::Binary(op, a, b) => format!(
                "float r{k}; {{ float x = r{a}; float y = r{b}; r{k} = {}; }}",
                binary_expr(op)
            ),
            Step::Affine(a, mul, add) => {
                format!("float r{k} = r{a} * {} + {};", constant_expr(mul), constant_expr(add))
            }
            Step::Compare(op, a, b) => {
                format!("float r{k} = (r{a} {} r{b}) ? 1.0f : 0.0f;", op.symbol())
            }
        };
        body.push_str(indent);
        body.push_str(&line);
        body.push('\n');
    }
    body
}

/// The CUDA source of the kernel `fused(p, in0.., out)`, or for a reduction of the kernels
/// `fused_reduce` (a block per row) and `fused_reduce_warp` (a warp per row), which fold
/// the program's value at each element of a row as reduce.cu's kernels fold the input's
/// (common.cuh goes before it).
fn source(steps: &[Step], inputs: &[DType], out: DType, reduce: Option<ReduceOp>) -> String {
    let n = inputs.len() + 1;
    let mut args = String::new();
    for (m, &t) in inputs.iter().enumerate() {
        args.push_str(&format!("const {}* __restrict__ in{m}, ", c_type(t)));
    }
    let (out_t, last, out_op) = (c_type(out), steps.len() - 1, n - 1);
    let params = format!("const McParams p, {args}{out_t}* __restrict__ out");
    let Some(reduce) = reduce else {
        let body = statements(steps, "        ", |m| format!("o.o[{m}]"));
        return format!(
            "// A fused program, generated by backends/cuda/src/fused.rs.\n\
             extern \"C\" __global__ void fused({params}) {{\n\
             \x20   MC_FOR_EACH(g, p) {{\n\
             \x20       McOffsets<{n}> o = mc_offsets<{n}>(p, g);\n\
             {body}\
             \x20       mc_st(out, o.o[{out_op}], r{last});\n\
             \x20   }}\n\
             }}\n"
        );
    };
    // reduce.cu's folds: sums in f64, rounded once; max and min ignore NaN. (ArgMax and
    // ArgMin are no fused reductions: `Op::validate` refuses them.)
    let (combiner, lift, finish) = match reduce {
        ReduceOp::Sum => ("McSumF64", "(double)", "(float)acc"),
        ReduceOp::Mean => ("McSumF64", "(double)", "(float)(acc / (double)n)"),
        ReduceOp::Max | ReduceOp::ArgMax => ("McMaxF32", "", "acc"),
        ReduceOp::Min | ReduceOp::ArgMin => ("McMinF32", "", "acc"),
    };
    let body = statements(steps, "            ", |m| format!("o.o[{m}] + i * p.ext[{}]", 1 + m));
    let pass: String = (0..inputs.len()).map(|m| format!("in{m}, ")).collect();
    format!(
        "// A fused reduction, generated by backends/cuda/src/fused.rs: ext[0] = row length,\n\
         // ext[1 + m] = input m's stride along the axis.\n\
         template <typename Team>\n\
         __device__ __forceinline__ void mc_fused_rows({params}) {{\n\
         \x20   const u64 n = p.ext[0];\n\
         \x20   // The loop condition is uniform across the team, so every thread of a team\n\
         \x20   // reaches the team's shuffles and barriers.\n\
         \x20   for (u64 row = Team::first(); row < p.count; row += Team::step()) {{\n\
         \x20       McOffsets<{n}> o = mc_offsets<{n}>(p, row);\n\
         \x20       auto acc = {combiner}::identity();\n\
         \x20       for (u64 i = Team::lane(); i < n; i += Team::size()) {{\n\
         {body}\
         \x20           acc = {combiner}::combine(acc, {lift}r{last});\n\
         \x20       }}\n\
         \x20       acc = Team::template reduce<{combiner}>(acc);\n\
         \x20       if (Team::lane() == 0) {{\n\
         \x20           mc_st(out, o.o[{out_op}], {finish});\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n\
         extern \"C\" __global__ void fused_reduce({params}) {{\n\
         \x20   mc_fused_rows<McBlockTeam>(p, {pass}out);\n\
         }}\n\
         extern \"C\" __global__ void fused_reduce_warp({params}) {{\n\
         \x20   mc_fused_rows<McWarpTeam>(p, {pass}out);\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step expressions are elementwise.cu's, so a fused program computes what the
    /// primitive kernels compute.
    #[test]
    fn step_expressions_are_the_primitive_kernels() {
        let elementwise = include_str!("../../../kernels/cuda/elementwise.cu");
        for op in UnaryOp::ALL {
            let entry = format!("X({}, {})", op.name(), unary_expr(op));
            assert!(elementwise.contains(&entry), "{entry} not in elementwise.cu");
        }
        for op in BinaryOp::ALL {
            let entry = format!("X({}, {})", op.name(), binary_expr(op));
            assert!(elementwise.contains(&entry), "{entry} not in elementwise.cu");
        }
        for op in CompareOp::ALL {
            let entry = format!("X({}, {})", op.name(), op.symbol());
            assert!(elementwise.contains(&entry), "{entry} not in elementwise.cu");
        }
    }

    #[test]
    fn programs_differing_in_constants_share_a_kernel() {
        let program = |lr: f64| {
            vec![
                Instr::Input(0),
                Instr::Input(1),
                Instr::Affine(1, lr, 0.0),
                Instr::Binary(BinaryOp::Sub, 0, 2),
            ]
        };
        let dtypes = [DType::F32, DType::BF16];
        let (a, va) = register(&program(0.1), &dtypes, DType::F32, None);
        let (b, vb) = register(&program(0.2), &dtypes, DType::F32, None);
        assert_eq!(a, b);
        assert_eq!((va, vb), (vec![(0, 0.1), (1, 0.0)], vec![(0, 0.2), (1, 0.0)]));
        let (c, _) = register(&program(0.1), &dtypes, DType::F16, None);
        assert_ne!(a, c, "another output dtype is another kernel");
        let k = kernel(a);
        assert!(k.source.contains("const mc_bf16* __restrict__ in1"), "{}", k.source);
        assert!(k.source.contains("p.ext[0]"), "{}", k.source);
        // Past the parameter words, constants are literals.
        let long: Vec<Instr> = std::iter::once(Instr::Input(0))
            .chain((0..10).map(|k| Instr::Affine(k, 2.0, 1.0)))
            .collect();
        let (id, values) = register(&long, &[DType::F32], DType::F32, None);
        assert_eq!(values.len(), EXT_WORDS);
        let (_, reduced) = register(&long, &[DType::F32], DType::F32, Some(ReduceOp::Sum));
        assert_eq!(reduced.first(), Some(&(REDUCE_WORDS, 2.0)), "after the reduction's words");
        assert_eq!(reduced.len(), EXT_WORDS - REDUCE_WORDS);
        assert!(kernel(id).source.contains(&format!("{}u", 1.0f32.to_bits())));
    }
}
