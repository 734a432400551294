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

/// A float binary op on `x` and `y` (f32).
pub(super) fn binary(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "x + y",
        BinaryOp::Sub => "x - y",
        BinaryOp::Mul => "x * y",
        BinaryOp::Div => "x / y",
        BinaryOp::Max => "max(x, y)",
        BinaryOp::Min => "min(x, y)",
        BinaryOp::Pow => "pow(x, y)",
        BinaryOp::Rem => "rem_f32(x, y)",
    }
}

/// An integer binary op on the bits `x` and `y` (u32) of two `dtype` elements: the bits of
/// the result. Two's complement makes add, sub and mul the same on every integer type, and
/// they wrap in WGSL; a u8 result is masked to its 8 bits when stored. Division and
/// remainder need the helpers of section `int_helpers` (WGSL's own `x / 0` is `x`, and its
/// `%` truncates). `None` for pow (floats only).
pub(super) fn int_binary(op: BinaryOp, dtype: DType) -> Option<&'static str> {
    let signed = dtype.is_signed_int();
    Some(match op {
        BinaryOp::Add => "x + y",
        BinaryOp::Sub => "x - y",
        BinaryOp::Mul => "x * y",
        BinaryOp::Div if signed => "div_i32(x, y)",
        BinaryOp::Div => "div_u32(x, y)",
        BinaryOp::Rem if signed => "rem_i32(x, y)",
        BinaryOp::Rem => "rem_u32(x, y)",
        BinaryOp::Max if signed => "bitcast<u32>(max(bitcast<i32>(x), bitcast<i32>(y)))",
        BinaryOp::Max => "max(x, y)",
        BinaryOp::Min if signed => "bitcast<u32>(min(bitcast<i32>(x), bitcast<i32>(y)))",
        BinaryOp::Min => "min(x, y)",
        BinaryOp::Pow => return None,
    })
}

/// A signed integer unary op on the bits `x` (u32); both wrap, mapping MIN to itself.
/// `None` for the float-only ops.
fn int_unary(op: UnaryOp) -> Option<&'static str> {
    match op {
        UnaryOp::Neg => Some("0u - x"),
        UnaryOp::Abs => Some("select(x, 0u - x, x >= 0x80000000u)"),
        _ => None,
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
/// floats to integers saturating towards zero, NaN to 0, integers to integers saturating).
pub(crate) fn cast_expr(from: DType, to: DType) -> Result<String> {
    let to_f32 = |d: DType| match d {
        DType::F32 => "bitcast<f32>",
        DType::F16 => "f16_to_f32",
        _ => "bf16_to_f32",
    };
    let from_f32 = conversions(to)?.1;
    if from == to {
        return Ok("v".into());
    }
    Ok(match (from.is_float(), to.is_float()) {
        (true, _) => format!("{from_f32}({}(v))", to_f32(from)),
        (false, true) => {
            let int = if from.is_signed_int() { "i32" } else { "u32" };
            match to {
                DType::F32 => format!("bitcast<u32>({int}_to_f32(v))"),
                DType::F16 => format!("{int}_to_f16(v)"),
                _ => format!("{int}_to_bf16(v)"),
            }
        }
        (false, false) => int_to_int(from, to)?,
    })
}

/// Integer bits `v` of `from` as `to`, saturating: clamped to `to`'s largest value, and a
/// negative i32 (bits from 2^31 up, which the clamp alone would take for large) to 0.
fn int_to_int(from: DType, to: DType) -> Result<String> {
    let max = |d: DType| d.int_range().filter(|_| d != DType::I64).map(|(_, max)| max);
    let (Some(from_max), Some(to_max)) = (max(from), max(to)) else {
        return Err(crate::kernel::no_64_bit());
    };
    let mut e = String::from("v");
    if to_max < from_max {
        e = format!("min(v, {to_max}u)");
    }
    if from.is_signed_int() && !to.is_signed_int() {
        e = format!("select({e}, 0u, v >= 0x80000000u)");
    }
    Ok(e)
}

/// Output dtypes stored packed, several to a word: (elements per word).
fn per_word(dtype: DType) -> Result<usize> {
    match dtype {
        DType::F16 | DType::BF16 => Ok(2),
        DType::U8 => Ok(4),
        DType::F32 | DType::U32 | DType::I32 => Ok(1),
        DType::I64 => Err(crate::kernel::no_64_bit()),
    }
}

/// The body of an elementwise kernel's `value` function, and the sections of
/// elementwise.wgsl with the functions it calls: only those, since every function is
/// compiled (lavapipe's compile time grows with the kernel).
pub(super) struct Value<'a> {
    pub body: &'a str,
    pub helpers: Vec<&'static str>,
}

impl<'a> Value<'a> {
    /// A body that calls only the common functions.
    pub fn plain(body: &'a str) -> Self {
        Value { body, helpers: Vec::new() }
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
    value: Value<'_>,
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
    let per = per_word(out_dtype)?;
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
    let mut source =
        vec![SOURCE.split("//# elements").next().unwrap_or_default(), section_text(section)?];
    for &name in &value.helpers {
        source.push(section_text(name)?);
    }
    let out_index = k.to_string();
    let component = ["x", "y", "z", "w"][k.min(3)];
    let from_f32 = conversions(out_dtype)?.1;
    let mut subs: Vec<(&str, &str)> = if words {
        vec![("FROM_F32", from_f32), ("VALUE", value.body), ("OUT", &out_index)]
    } else {
        vec![
            ("FROM_F32", from_f32),
            ("VALUE", value.body),
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
        matches!(operands[k].dtype, DType::F32 | DType::U32 | DType::I32)
            && layouts[k].offset.is_multiple_of(4)
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

/// The sections of elementwise.wgsl with the functions the steps of [`fused_steps`] call
/// (GELU's, tanh's; the remainder's when the program takes one).
fn step_sections(program: &[Instr]) -> Vec<&'static str> {
    let rem = program.iter().any(|i| matches!(i, Instr::Binary(BinaryOp::Rem, ..)));
    if rem { vec!["helpers", "rem_helpers"] } else { vec!["helpers"] }
}

/// The text of [`step_sections`], for a kernel of another family that evaluates a program.
pub(super) fn step_helpers(program: &[Instr]) -> Result<Vec<&'static str>> {
    step_sections(program).into_iter().map(section_text).collect()
}

pub(super) fn lower(op: &Op, f: &Features) -> Result<Vec<Dispatch>> {
    let out = op.output();
    let mut operands: Vec<Operand> = op.inputs().into_iter().map(Operand::input).collect();
    operands.push(Operand::output(out));
    let mut layouts: Vec<_> = op.inputs().into_iter().map(strided).collect();
    layouts.push(strided(out));
    let mut scalars = Vec::new();
    let mut helpers = Vec::new();
    let body = match op {
        Op::Binary { op: b, out, .. } if out.dtype.is_int() => {
            let e = int_binary(*b, out.dtype).ok_or_else(|| int_refused(op, out.dtype))?;
            if matches!(b, BinaryOp::Div | BinaryOp::Rem) {
                helpers.push("int_helpers");
            }
            format!("let x = ld0(o.x); let y = ld1(o.y); return {e};")
        }
        Op::Binary { op: b, .. } => {
            if *b == BinaryOp::Rem {
                helpers.push("rem_helpers");
            }
            format!("let x = ldf0(o.x); let y = ldf1(o.y); return out_bits({});", binary(*b))
        }
        Op::Compare { op: c, lhs, out, .. } => {
            let cond = match lhs.dtype {
                d if d.is_float() => format!("ldf0(o.x) {} ldf1(o.y)", c.symbol()),
                // Signed order (equality is the same on the bits either way).
                DType::I32 => {
                    format!("bitcast<i32>(ld0(o.x)) {} bitcast<i32>(ld1(o.y))", c.symbol())
                }
                _ => format!("ld0(o.x) {} ld1(o.y)", c.symbol()),
            };
            format!("return select(0u, {}u, {cond});", one_bits(out.dtype)?)
        }
        Op::Unary { op: u, out, .. } if out.dtype.is_int() => {
            let e = int_unary(*u).ok_or_else(|| int_refused(op, out.dtype))?;
            format!("let x = ld0(o.x); return {e};")
        }
        Op::Unary { op: u, .. } => {
            helpers.push("helpers");
            format!("let x = ldf0(o.x); return out_bits({});", unary(*u))
        }
        Op::Affine { mul, add, .. } => {
            scalars.push((3, (*mul as f32).to_bits()));
            scalars.push((4, (*add as f32).to_bits()));
            "return out_bits(ldf0(o.x) * pf(3u) + pf(4u));".into()
        }
        Op::Cast { input, out } => {
            format!("let v = ld0(o.x); return {};", cast_expr(input.dtype, out.dtype)?)
        }
        Op::Where { .. } => "return select(ld2(o.z), ld1(o.y), ld0(o.x) != 0u);".into(),
        Op::Fused { program, .. } => {
            helpers = step_sections(program);
            let steps = fused_steps(program, &CONSTANT_SLOTS, &mut scalars);
            format!("{steps}return out_bits(r{});", program.len() - 1)
        }
        _ => return Ok(Vec::new()),
    };
    let value = Value { body: &body, helpers };
    Ok(vec![dispatch(op, operands, &layouts, &out.layout, value, &scalars, f)?])
}

/// An integer op validation lets through but no kernel computes (validation refuses these
/// first: pow, and unary ops other than neg and abs).
fn int_refused(op: &Op, dtype: DType) -> manychips_api::Error {
    manychips_api::Error::UnsupportedDType {
        op: op.name(),
        device: "wgsl".into(),
        dtype,
        detail: format!(" (integers take no such op); {}", op.describe()),
    }
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
