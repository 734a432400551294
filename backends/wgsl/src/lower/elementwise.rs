//! Binary, compare, unary, affine, cast and where: one invocation per output element, the
//! op's expression substituted into kernels/wgsl/elementwise.wgsl.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use manychips_api::{BinaryOp, DType, Instr, Layout, Op, Result, UnaryOp};

use super::{one_bits, strided};
use crate::kernel::{Kernel, Operand, WG, conversions, grid_1d};
use crate::params::{Params, Strided, word};
use crate::template::section;
use crate::{Dispatch, Features};

const SOURCE: &str = include_str!("../../../../kernels/wgsl/elementwise.wgsl");

fn binary(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "x + y",
        BinaryOp::Sub => "x - y",
        BinaryOp::Mul => "x * y",
        BinaryOp::Div => "x / y",
        BinaryOp::Max => "max(x, y)",
        BinaryOp::Min => "min(x, y)",
        BinaryOp::Pow => "pow(x, y)",
    }
}

fn unary(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "-x",
        UnaryOp::Abs => "abs(x)",
        UnaryOp::Exp => "exp(x)",
        UnaryOp::Log => "log(x)",
        UnaryOp::Sqrt => "sqrt(x)",
        UnaryOp::Rsqrt => "inverseSqrt(x)",
        UnaryOp::Tanh => "tanh_acc(x)",
        UnaryOp::Sigmoid => "sigmoid(x)",
        UnaryOp::Relu => "max(x, 0.0)",
        UnaryOp::GeluTanh => "gelu_tanh(x)",
        UnaryOp::GeluErf => "gelu_erf(x)",
        UnaryOp::Silu => "x * sigmoid(x)",
        UnaryOp::Sin => "sin(x)",
        UnaryOp::Cos => "cos(x)",
    }
}

/// The WGSL expression converting the bits `v` of a `from` element to the bits of a `to`
/// element, with `Cast` semantics (floats through f32, integers exact then rounded once,
/// floats to integers saturating towards zero, NaN to 0).
pub(crate) fn cast_expr(from: DType, to: DType) -> String {
    let float = |d: DType| d.is_float();
    let to_f32 = |d: DType| match d {
        DType::F32 => "bitcast<f32>",
        DType::F16 => "f16_to_f32",
        _ => "bf16_to_f32",
    };
    let from_f32 = |d: DType| match d {
        DType::F32 => "bitcast<u32>",
        DType::F16 => "f32_to_f16",
        DType::BF16 => "f32_to_bf16",
        DType::U32 => "f32_to_u32_sat",
        DType::U8 => "f32_to_u8_sat",
    };
    if from == to {
        return "v".into();
    }
    match (float(from), float(to)) {
        (true, _) => format!("{}({}(v))", from_f32(to), to_f32(from)),
        (false, true) => match to {
            DType::F32 => "bitcast<u32>(u32_to_f32(v))".into(),
            DType::F16 => "u32_to_f16(v)".into(),
            _ => "u32_to_bf16(v)".into(),
        },
        // u8 → u32 is exact; u32 → u8 saturates.
        (false, false) => {
            if to == DType::U8 {
                "min(v, 255u)".into()
            } else {
                "v".into()
            }
        }
    }
}

/// Output dtypes stored packed, several to a word: (elements per word).
fn per_word(dtype: DType) -> usize {
    match dtype {
        DType::F16 | DType::BF16 => 2,
        DType::U8 => 4,
        DType::F32 | DType::U32 => 1,
    }
}

/// One elementwise dispatch: `operands` (the output last) over the elements of `out` (the
/// output's layout, whose dims are the iteration space), `value` the
/// WGSL body returning the output element's bits. A contiguous packed output gets the
/// `words` kernel (one whole word per invocation, no atomics).
pub(super) fn dispatch(
    op: &Op,
    mut operands: Vec<Operand>,
    layouts: &[Strided],
    out: &Layout,
    value: &str,
    scalars: &[(usize, u32)],
    f: &Features,
) -> Result<Dispatch> {
    let n = out.numel();
    let mut params = Params::strided(op, n, out.dims(), layouts)?;
    for &(i, v) in scalars {
        params.set(i, v)?;
    }
    let k = operands.len() - 1;
    let out_dtype = operands[k].dtype;
    let per = per_word(out_dtype);
    let words = per > 1 && out.is_contiguous();
    let flat = if per == 1 { flat_steps(out, layouts) } else { None };
    let quad =
        flat.and_then(|(steps, periods)| quad_operands(n, steps, &periods, layouts, &operands));
    let (items, section) = if words {
        operands[k].words = true;
        params.set(5, per as u32)?;
        params.set(6, word(op, "offset", out.offset)?)?;
        let first = out.offset / per;
        ((out.offset + n).div_ceil(per) - first, "words")
    } else if let (Some((steps, periods)), Some(advancing)) = (flat, &quad) {
        params.set(2, word(op, "invocations", n / 4)?)?;
        params.set(7, steps)?;
        for (k, &p) in periods.iter().enumerate() {
            params.set(FLAT_PERIODS + k, word(op, "period", p)?)?;
        }
        for &k in advancing {
            operands[k].quad = true;
        }
        (n / 4, "flat4")
    } else if let Some((steps, periods)) = flat {
        let apart = n.div_ceil(FLAT_PER_INVOCATION);
        params.set(2, word(op, "invocations", apart)?)?;
        params.set(7, steps)?;
        for (k, &p) in periods.iter().enumerate() {
            params.set(FLAT_PERIODS + k, word(op, "period", p)?)?;
        }
        (apart, "flat")
    } else {
        (n, "elements")
    };
    let source = [
        SOURCE.split("//# elements").next().unwrap_or_default(),
        section_text(section)?,
        section_text("helpers")?,
    ];
    let out_index = k.to_string();
    let component = ["x", "y", "z", "w"][k.min(3)];
    let mut subs: Vec<(&str, &str)> = if words {
        vec![("FROM_F32", conversions(out_dtype).1), ("VALUE", value), ("OUT", &out_index)]
    } else {
        vec![
            ("FROM_F32", conversions(out_dtype).1),
            ("VALUE", value),
            ("OUT", &out_index),
            ("OUT_C", component),
        ]
    };
    let at = flat.filter(|_| quad.is_none()).map(|(_, periods)| flat_index(&periods));
    if let Some(at) = &at {
        subs.push(("AT", at));
    }
    let loads = match (&quad, flat) {
        (Some(advancing), Some((_, periods))) => Some(quad_loads(advancing, k, &periods)),
        _ => None,
    };
    if let Some(loads) = &loads {
        subs.push(("LOAD4", loads));
    }
    let kernel = Kernel {
        family: "elementwise",
        source: &source,
        entry: "main",
        operands,
        status: false,
        subs: &subs,
    };
    kernel.dispatch(params, grid_1d(op, items, WG, f)?)
}

/// The operands (by index, the output among them) that the `flat4` kernel reads or writes
/// a `vec4` at a time, when it applies: every operand that advances with the element is
/// 32-bit and starts on a multiple of 4 elements, a repeated block (a bias row) is a
/// multiple of 4 long, and the count is a multiple of 4. Broadcast single elements are read
/// as they are.
fn quad_operands(
    n: usize,
    steps: u32,
    periods: &[usize; 3],
    layouts: &[Strided],
    operands: &[Operand],
) -> Option<Vec<usize>> {
    if !n.is_multiple_of(4) || periods.iter().any(|&p| !p.is_multiple_of(4)) {
        return None;
    }
    let advancing: Vec<usize> = (0..layouts.len()).filter(|k| steps & (1 << k) != 0).collect();
    let fits = |&k: &usize| {
        matches!(operands[k].dtype, DType::F32 | DType::U32) && layouts[k].offset.is_multiple_of(4)
    };
    advancing.iter().all(fits).then_some(advancing)
}

/// The `flat4` kernel's loads: each advancing input's `vec4` into its private copy (for a
/// repeated block, the invocation's `vec4` of it: `q` modulo the block's `vec4` count).
fn quad_loads(advancing: &[usize], out: usize, periods: &[usize; 3]) -> String {
    let mut loads = String::new();
    for &k in advancing.iter().filter(|&&k| k != out) {
        let c = ["x", "y", "z", "w"][k];
        let at = match periods.get(k) {
            Some(&p) if p > 0 => format!("q % (pw({}u) >> 2u)", FLAT_PERIODS + k),
            _ => "q".to_string(),
        };
        loads.push_str(&format!("c{k} = b{k}[(base.{c} >> 2u) + {at}]; "));
    }
    loads
}

/// Elements each invocation of the `flat` kernel computes.
const FLAT_PER_INVOCATION: usize = 4;

/// Parameter words of the `flat` kernel's periods, one per input (three at most).
const FLAT_PERIODS: usize = 52;

/// The `flat` kernel's element index per operand: the element itself, and for an input
/// with a period that index modulo it (specialised, so a dense op computes no modulo).
fn flat_index(periods: &[usize; 3]) -> String {
    if periods.iter().all(|&p| p == 0) {
        return "let at = vec4<u32>(g);".into();
    }
    let mut at = String::from("var at = vec4<u32>(g);");
    for (k, _) in periods.iter().enumerate().filter(|(_, p)| **p > 0) {
        let c = ["x", "y", "z"][k];
        at.push_str(&format!(" at.{c} = g % pw({}u);", FLAT_PERIODS + k));
    }
    at
}

/// The `flat` kernel's step mask and input periods, when every operand (the output,
/// contiguous, last) either runs through memory in the output's element order, or is one
/// element broadcast, or repeats a dense block of the trailing dims along the leading ones
/// (a bias row: its period is the block's size). Bit k of the mask is set when operand k
/// advances with the element.
fn flat_steps(out: &Layout, layouts: &[Strided]) -> Option<(u32, [usize; 3])> {
    if !out.is_contiguous() || layouts.len() > 4 {
        return None;
    }
    let (dims, dense) = (out.dims(), out.strides.as_slice());
    let mut mask = 0;
    let mut periods = [0; 3];
    for (k, s) in layouts.iter().enumerate() {
        // The first dim (of extent > 1) from which the operand follows the output densely.
        let live = |d: usize| dims[d] > 1;
        let from = (0..=dims.len())
            .rev()
            .take_while(|&d| d == dims.len() || !live(d) || s.strides[d] == dense[d])
            .last()
            .unwrap_or(dims.len());
        if (0..from).any(|d| live(d) && s.strides[d] != 0) {
            return None;
        }
        let block: usize = dims[from..].iter().product();
        if block <= 1 && (0..dims.len()).all(|d| !live(d) || s.strides[d] == 0) {
            continue; // one element broadcast
        }
        mask |= 1 << k;
        if (0..from).any(live) {
            // Repeats along the leading dims: the output never does.
            match periods.get_mut(k) {
                Some(p) => *p = block,
                None => return None,
            }
        }
    }
    Some((mask, periods))
}

/// Section `name` of elementwise.wgsl, found once per process (lowering asks for two on
/// every dispatch).
fn section_text(name: &str) -> Result<&'static str> {
    static FOUND: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    if let Some(&text) = found.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
        return Ok(text);
    }
    let text = section(SOURCE, name)?;
    found.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), text);
    Ok(text)
}

/// The functions the steps of [`fused_steps`] call (GELU's, tanh's), for a kernel of
/// another family that evaluates a program.
pub(super) fn step_helpers() -> Result<&'static str> {
    section_text("helpers")
}

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    let out = op.output();
    let mut operands: Vec<Operand> = op.inputs().into_iter().map(Operand::input).collect();
    operands.push(Operand::output(out));
    let mut layouts: Vec<_> = op.inputs().into_iter().map(strided).collect();
    layouts.push(strided(out));
    let mut scalars = Vec::new();
    let value = match op {
        Op::Binary { op: b, .. } => {
            format!("let x = ldf0(o.x); let y = ldf1(o.y); return out_bits({});", binary(*b))
        }
        Op::Compare { op: c, lhs, out, .. } => {
            let cond = if lhs.dtype.is_float() {
                format!("ldf0(o.x) {} ldf1(o.y)", c.symbol())
            } else {
                format!("ld0(o.x) {} ld1(o.y)", c.symbol())
            };
            format!("return select(0u, {}u, {cond});", one_bits(out.dtype))
        }
        Op::Unary { op: u, .. } => format!("let x = ldf0(o.x); return out_bits({});", unary(*u)),
        Op::Affine { mul, add, .. } => {
            scalars.push((3, (*mul as f32).to_bits()));
            scalars.push((4, (*add as f32).to_bits()));
            "return out_bits(ldf0(o.x) * pf(3u) + pf(4u));".into()
        }
        Op::Cast { input, out } => {
            format!("let v = ld0(o.x); return {};", cast_expr(input.dtype, out.dtype))
        }
        Op::Where { .. } => "return select(ld2(o.z), ld1(o.y), ld0(o.x) != 0u);".into(),
        Op::Fused { program, .. } => {
            let steps = fused_steps(program, &CONSTANT_SLOTS, &mut scalars);
            format!("{steps}return out_bits(r{});", program.len() - 1)
        }
        _ => return Ok(Vec::new()),
    };
    Ok(vec![dispatch(op, operands, &layouts, &out.layout, &value, &scalars, f)?])
}

/// Inputs a fused program may have for a kernel of its own: the elementwise kernel's
/// operand offsets come four at a time, the output's included.
pub const FUSED_INPUTS: usize = 3;

/// Parameter words no elementwise kernel uses: a fused program's constants go there.
pub(super) const CONSTANT_SLOTS: [usize; 11] = [3, 4, 55, 56, 57, 58, 59, 60, 61, 62, 63];

/// A fused program's steps, for the body of a kernel's value function: one f32 register
/// `r<k>` per step, each computed by the same expression as the primitive op's kernel
/// (above), in a block of its own so that every step can name its operands `x` and `y`.
/// Input `m` is read at `o.x`, `o.y` or `o.z`, which the caller has in scope. One line: the
/// template's header comment quotes `{{VALUE}}` too.
///
/// The program's constants, in order, are parameters in `slots` (`scalars` gets each slot
/// and its bits) as far as they go, and literals after that: an optimizer step whose
/// learning rate and bias corrections change every step then reuses one compiled kernel
/// instead of compiling a new one each step (3.6 ms of a 12 ms MLP step on lavapipe).
pub(super) fn fused_steps(
    program: &[Instr],
    slots: &[usize],
    scalars: &mut Vec<(usize, u32)>,
) -> String {
    let mut slots = slots.iter();
    let mut constant = |v: f64| {
        let bits = (v as f32).to_bits();
        match slots.next() {
            Some(&slot) => {
                scalars.push((slot, bits));
                format!("pf({slot}u)")
            }
            None => format!("bitcast<f32>({bits}u)"),
        }
    };
    let mut body = String::new();
    for (k, instr) in program.iter().enumerate() {
        let step = match *instr {
            Instr::Input(m) => format!("r{k} = ldf{m}(o.{});", ["x", "y", "z"][m]),
            Instr::Const(c) => format!("r{k} = {};", constant(c)),
            Instr::Unary(op, a) => format!("{{ let x = r{a}; r{k} = {}; }}", unary(op)),
            Instr::Binary(op, a, b) => {
                format!("{{ let x = r{a}; let y = r{b}; r{k} = {}; }}", binary(op))
            }
            Instr::Affine(a, mul, add) => {
                let mul = constant(mul);
                format!("r{k} = r{a} * {mul} + {};", constant(add))
            }
            Instr::Compare(op, a, b) => {
                format!("r{k} = select(0.0, 1.0, r{a} {} r{b});", op.symbol())
            }
        };
        body.push_str(&format!("var r{k}: f32; {step} "));
    }
    body
}
