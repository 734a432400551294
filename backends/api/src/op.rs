//! Ops as data: one closed enum whose values carry their operands (buffer views with shape,
//! strides and dtype), so a planner can price an op and cut it into sub-ops without knowing
//! any backend, and a backend can run it without knowing the Tensor API.

use std::fmt;

use crate::fused::Instr;
use crate::{BufferId, DType, Error, Layout, Result};

/// A typed, strided window into one device buffer: the operand of an [`Op`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct View {
    pub buffer: BufferId,
    pub layout: Layout,
    pub dtype: DType,
}

impl View {
    pub fn new(buffer: BufferId, layout: Layout, dtype: DType) -> Self {
        View { buffer, layout, dtype }
    }

    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// Bytes from the buffer start to one past the last byte this view touches, or `None`
    /// if that overflows `usize`. A backend checks this against the buffer's size.
    pub fn byte_end(&self) -> Option<usize> {
        self.layout.end()?.checked_mul(self.dtype.size_in_bytes())
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.layout)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// True division on floats; floor division (rounding towards −∞, Python's `//`) on
    /// integers, where a zero divisor gives 0 and `MIN / -1` wraps to `MIN`.
    Div,
    Max,
    Min,
    /// Floats only.
    Pow,
    /// The remainder with the divisor's sign, Python's `%` and PyTorch's `remainder`:
    /// `a - floor(a / b) · b`, so that `a == (a // b) · b + a % b`. A zero divisor gives NaN
    /// on floats and 0 on integers.
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// GELU with the tanh approximation (GPT-2, BERT).
    GeluTanh,
    /// GELU with the exact erf form.
    GeluErf,
    /// x * sigmoid(x), a.k.a. swish.
    Silu,
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    /// Index (u32) of the first maximum. NaNs are skipped (a row of NaNs gives 0).
    ArgMax,
    /// Index (u32) of the first minimum. NaNs are skipped (a row of NaNs gives 0).
    ArgMin,
}

/// How [`Op::Scatter`] combines a source element with the element of `out` it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScatterOp {
    /// Overwrite (`scatter`): the last source element naming a target wins.
    Assign,
    Sum,
    Prod,
    /// As `BinaryOp::Max`.
    Max,
    /// As `BinaryOp::Min`.
    Min,
}

impl ScatterOp {
    pub const ALL: [ScatterOp; 5] =
        [ScatterOp::Assign, ScatterOp::Sum, ScatterOp::Prod, ScatterOp::Max, ScatterOp::Min];
    pub fn name(self) -> &'static str {
        match self {
            ScatterOp::Assign => "assign",
            ScatterOp::Sum => "sum",
            ScatterOp::Prod => "prod",
            ScatterOp::Max => "max",
            ScatterOp::Min => "min",
        }
    }
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 8] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
        BinaryOp::Rem,
    ];
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Pow => "pow",
            BinaryOp::Rem => "remainder",
        }
    }
}

impl CompareOp {
    pub const ALL: [CompareOp; 6] =
        [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Le, CompareOp::Gt, CompareOp::Ge];
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
        }
    }

    /// The relation as C, CUDA and WGSL write it (`==`, `<`, ...), for generated kernels.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 14] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Silu,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::Silu => "silu",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 6] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::ArgMax,
        ReduceOp::ArgMin,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }

    /// Whether the op returns an index (u32) rather than a value.
    pub fn is_arg(self) -> bool {
        matches!(self, ReduceOp::ArgMax | ReduceOp::ArgMin)
    }
}

/// One operation on device buffers. Every op writes exactly one output view, `out`.
///
/// Broadcasting is expressed in the views (stride 0), not in the op: elementwise operands
/// always have the output's shape. Transposes and slices are views too. `out` never shares a
/// buffer with an input and never overlaps itself; [`Op::validate`] enforces the whole
/// contract, so backends may rely on it.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Batched matrix product: `out[.., i, j] = Σ_k lhs[.., i, k] · rhs[.., k, j]`.
    /// All three have the same rank ≥ 2 and the same batch dims; a transposed operand is a
    /// view with swapped strides, a broadcast batch a stride of 0. Floats only.
    Matmul { lhs: View, rhs: View, out: View },
    /// Elementwise `out = lhs ∘ rhs`, all of `out`'s shape and dtype: floats, or integers
    /// for every op but `Pow` (see [`DType`] for the wrapping rule, [`BinaryOp`] for division).
    Binary { op: BinaryOp, lhs: View, rhs: View, out: View },
    /// Elementwise comparison; `out` is `U8` (0/1) or the operands' dtype (0.0/1.0).
    Compare { op: CompareOp, lhs: View, rhs: View, out: View },
    /// Elementwise `out = f(input)`. Floats, and signed integers for `Neg` and `Abs`
    /// (wrapping: both map `MIN` to itself).
    Unary { op: UnaryOp, input: View, out: View },
    /// Elementwise `out = input · mul + add` (computed in f32 or better). Floats only.
    Affine { input: View, out: View, mul: f64, add: f64 },
    /// Reduces `axis`; `out` has the input's shape with that dim set to 1. `ArgMax` and
    /// `ArgMin` write `U32`. Floats, and integers for every op but `Mean` (a sum wraps).
    Reduce { op: ReduceOp, input: View, out: View, axis: usize },
    /// (Log-)softmax along `axis`. Floats only.
    Softmax { input: View, out: View, axis: usize, log: bool },
    /// Elementwise dtype conversion (round to nearest for floats, saturating truncation
    /// towards zero for integers, NaN to 0).
    Cast { input: View, out: View },
    /// Strided copy between layouts of the same shape and dtype: makes a view contiguous,
    /// materializes a transpose or a broadcast, writes into a slice.
    Copy { input: View, out: View },
    /// Concatenation of `inputs` along `axis`.
    Concat { inputs: Vec<View>, out: View, axis: usize },
    /// `out = input` with entries along `axis` picked by the 1-D `indices`. Indices of every
    /// op are `U32`, `I32` or `I64`; a negative one counts from the end of the axis, and one
    /// outside `-len..len` is an `IndexOutOfRange` error.
    IndexSelect { input: View, indices: View, out: View, axis: usize },
    /// `out[.., i, ..] = input[.., indices[.., i, ..], ..]` along `axis` (torch.gather);
    /// `indices` has `out`'s shape.
    Gather { input: View, indices: View, out: View, axis: usize },
    /// Accumulates: `out[.., indices[i], ..] += src[.., i, ..]` along `axis` (index_add_).
    /// Floats only.
    IndexAdd { src: View, indices: View, out: View, axis: usize },
    /// Accumulates: `out[.., indices[.., i, ..], ..] += src[.., i, ..]` along `axis`
    /// (scatter_add_; `indices` has `src`'s shape). Floats only.
    ScatterAdd { src: View, indices: View, out: View, axis: usize },
    /// `out[.., indices[.., i, ..], ..] = op(that element, src[.., i, ..])` along `axis`
    /// (PyTorch's `scatter_` and `scatter_reduce_` with `include_self`; `indices` has
    /// `src`'s shape, which fits inside `out` outside `axis`). Within a lane (every other
    /// coordinate fixed) the source elements apply in increasing order along `axis`, so
    /// duplicate indices give one result on every backend: `Assign` keeps the last, the
    /// reductions fold in order. Any dtype: integers as their `Binary` ops (wrapping), floats
    /// computed in f32 and rounded at each store; `Assign` copies bits.
    Scatter { op: ScatterOp, src: View, indices: View, out: View, axis: usize },
    /// The positions (`U32`, `input`'s shape) that sort each lane of `input` along `axis`:
    /// `out[.., r, ..]` is the position of the lane's r-th element in order. Ascending, or
    /// descending; stable (equal elements keep their order, in both directions). Floats:
    /// −0.0 equals +0.0, NaNs come after +∞, or first when descending. Any dtype.
    ArgSort { input: View, out: View, axis: usize, descending: bool },
    /// `out = cond ? on_true : on_false`, `cond` is `U8`.
    Where { cond: View, on_true: View, on_false: View, out: View },
    /// Sets every element of `out` to `value` (converted like `Cast`).
    Fill { out: View, value: f64 },
    /// A fused elementwise program (see [`crate::fused`]): every input has `out`'s shape
    /// (broadcasts as strides of 0), floats of any dtype; computed in f32, rounded to `out`'s
    /// dtype once. Equal to its decomposition, [`crate::fused::decompose`].
    Fused { inputs: Vec<View>, program: Vec<Instr>, out: View },
    /// A fused program reduced along `axis` (sum, mean, max or min): every input has the
    /// program's iteration shape, `out` has it with `axis` set to 1. Equal to its
    /// decomposition (the program into an f32 temporary, then `Reduce`), but a backend can
    /// reduce each piece while it is in cache: a variance or a dot product along a row reads
    /// its inputs once and writes nothing of their size.
    FusedReduce { inputs: Vec<View>, program: Vec<Instr>, op: ReduceOp, axis: usize, out: View },
    /// Scaled dot-product attention in one op: for every leading index,
    /// `out = softmax(scale · q · kᵀ) · v` over the keys, where `causal` hides from each
    /// query the keys after its own position. `q`, `k`, `v` and `out` share one shape
    /// `[.., time, head_dim]` (rank ≥ 2; any strides, so heads are a permuted view) and one
    /// float dtype. A backend with a kernel never stores the `[time, time]` scores; one
    /// without runs [`crate::attention::decompose`] (matmuls, softmax, scores in the
    /// operands' dtype). A row whose keys are all hidden cannot occur: a query sees itself.
    Attention { q: View, k: View, v: View, out: View, scale: f64, causal: bool },
    /// [`Op::Attention`]'s backward pass: from `d_out`, the gradient of its output, writes
    /// `out = [dq, dk, dv]` (`[3, .., time, head_dim]`), recomputing the attention weights
    /// rather than reading them. Same operand rules as `Attention`.
    AttentionBackward {
        q: View,
        k: View,
        v: View,
        d_out: View,
        out: View,
        scale: f64,
        causal: bool,
    },
}

/// Broad classes of ops, for pricing and for per-class statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    Matmul,
    Elementwise,
    Reduction,
    DataMovement,
}

impl Op {
    /// A short, stable name such as `matmul`, `binary.add`, `reduce.sum`.
    pub fn name(&self) -> String {
        self.static_name().into()
    }

    /// [`Op::name`] without allocating, for hot paths (the op's kind as a static string).
    pub fn static_name(&self) -> &'static str {
        match self {
            Op::Matmul { .. } => "matmul",
            Op::Binary { op, .. } => match op {
                BinaryOp::Add => "binary.add",
                BinaryOp::Sub => "binary.sub",
                BinaryOp::Mul => "binary.mul",
                BinaryOp::Div => "binary.div",
                BinaryOp::Max => "binary.maximum",
                BinaryOp::Min => "binary.minimum",
                BinaryOp::Pow => "binary.pow",
                BinaryOp::Rem => "binary.remainder",
            },
            Op::Compare { op, .. } => match op {
                CompareOp::Eq => "compare.eq",
                CompareOp::Ne => "compare.ne",
                CompareOp::Lt => "compare.lt",
                CompareOp::Le => "compare.le",
                CompareOp::Gt => "compare.gt",
                CompareOp::Ge => "compare.ge",
            },
            Op::Unary { op, .. } => match op {
                UnaryOp::Neg => "unary.neg",
                UnaryOp::Abs => "unary.abs",
                UnaryOp::Exp => "unary.exp",
                UnaryOp::Log => "unary.log",
                UnaryOp::Sqrt => "unary.sqrt",
                UnaryOp::Rsqrt => "unary.rsqrt",
                UnaryOp::Tanh => "unary.tanh",
                UnaryOp::Sigmoid => "unary.sigmoid",
                UnaryOp::Relu => "unary.relu",
                UnaryOp::GeluTanh => "unary.gelu_tanh",
                UnaryOp::GeluErf => "unary.gelu_erf",
                UnaryOp::Silu => "unary.silu",
                UnaryOp::Sin => "unary.sin",
                UnaryOp::Cos => "unary.cos",
            },
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "reduce.sum",
                ReduceOp::Mean => "reduce.mean",
                ReduceOp::Max => "reduce.max",
                ReduceOp::Min => "reduce.min",
                ReduceOp::ArgMax => "reduce.argmax",
                ReduceOp::ArgMin => "reduce.argmin",
            },
            Op::Affine { .. } => "affine",
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::Cast { .. } => "cast",
            Op::Copy { .. } => "copy",
            Op::Concat { .. } => "concat",
            Op::IndexSelect { .. } => "index_select",
            Op::Gather { .. } => "gather",
            Op::IndexAdd { .. } => "index_add",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Scatter { op, .. } => match op {
                ScatterOp::Assign => "scatter.assign",
                ScatterOp::Sum => "scatter.sum",
                ScatterOp::Prod => "scatter.prod",
                ScatterOp::Max => "scatter.max",
                ScatterOp::Min => "scatter.min",
            },
            Op::ArgSort { .. } => "argsort",
            Op::Where { .. } => "where",
            Op::Fill { .. } => "fill",
            Op::Fused { .. } => "fused",
            Op::Attention { .. } => "attention",
            Op::AttentionBackward { .. } => "attention_backward",
            Op::FusedReduce { op, .. } => match op {
                ReduceOp::Sum => "fused_reduce.sum",
                ReduceOp::Mean => "fused_reduce.mean",
                ReduceOp::Max => "fused_reduce.max",
                ReduceOp::Min => "fused_reduce.min",
                ReduceOp::ArgMax => "fused_reduce.argmax",
                ReduceOp::ArgMin => "fused_reduce.argmin",
            },
        }
    }

    pub fn class(&self) -> OpClass {
        match self {
            Op::Matmul { .. } | Op::Attention { .. } | Op::AttentionBackward { .. } => {
                OpClass::Matmul
            }
            Op::Binary { .. }
            | Op::Compare { .. }
            | Op::Unary { .. }
            | Op::Affine { .. }
            | Op::Cast { .. }
            | Op::Where { .. }
            | Op::Fused { .. } => OpClass::Elementwise,
            Op::Reduce { .. } | Op::Softmax { .. } | Op::FusedReduce { .. } => OpClass::Reduction,
            Op::Copy { .. }
            | Op::Concat { .. }
            | Op::IndexSelect { .. }
            | Op::Gather { .. }
            | Op::IndexAdd { .. }
            | Op::ScatterAdd { .. }
            | Op::Scatter { .. }
            | Op::ArgSort { .. }
            | Op::Fill { .. } => OpClass::DataMovement,
        }
    }

    /// The views the op reads, in a fixed order. (`IndexAdd`, `ScatterAdd` and `Scatter`
    /// also read `out`.)
    pub fn inputs(&self) -> Vec<&View> {
        match self {
            Op::Matmul { lhs, rhs, .. }
            | Op::Binary { lhs, rhs, .. }
            | Op::Compare { lhs, rhs, .. } => vec![lhs, rhs],
            Op::Unary { input, .. }
            | Op::Affine { input, .. }
            | Op::Reduce { input, .. }
            | Op::Softmax { input, .. }
            | Op::Cast { input, .. }
            | Op::ArgSort { input, .. }
            | Op::Copy { input, .. } => vec![input],
            Op::Concat { inputs, .. }
            | Op::Fused { inputs, .. }
            | Op::FusedReduce { inputs, .. } => inputs.iter().collect(),
            Op::IndexSelect { input, indices, .. } | Op::Gather { input, indices, .. } => {
                vec![input, indices]
            }
            Op::IndexAdd { src, indices, .. }
            | Op::ScatterAdd { src, indices, .. }
            | Op::Scatter { src, indices, .. } => vec![src, indices],
            Op::Where { cond, on_true, on_false, .. } => vec![cond, on_true, on_false],
            Op::Fill { .. } => vec![],
            Op::Attention { q, k, v, .. } => vec![q, k, v],
            Op::AttentionBackward { q, k, v, d_out, .. } => vec![q, k, v, d_out],
        }
    }

    /// The view the op writes.
    pub fn output(&self) -> &View {
        match self {
            Op::Matmul { out, .. }
            | Op::Binary { out, .. }
            | Op::Compare { out, .. }
            | Op::Unary { out, .. }
            | Op::Affine { out, .. }
            | Op::Reduce { out, .. }
            | Op::Softmax { out, .. }
            | Op::Cast { out, .. }
            | Op::Copy { out, .. }
            | Op::Concat { out, .. }
            | Op::IndexSelect { out, .. }
            | Op::Gather { out, .. }
            | Op::IndexAdd { out, .. }
            | Op::ScatterAdd { out, .. }
            | Op::Scatter { out, .. }
            | Op::ArgSort { out, .. }
            | Op::Where { out, .. }
            | Op::Fill { out, .. }
            | Op::Fused { out, .. }
            | Op::FusedReduce { out, .. }
            | Op::Attention { out, .. }
            | Op::AttentionBackward { out, .. } => out,
        }
    }

    /// Every view, inputs first (in the order of [`Op::inputs`]) and the output last: for
    /// code that rewrites an op's buffers or layouts, such as a planner cutting it into
    /// shares or a wrapper device mapping buffer ids.
    pub fn views_mut(&mut self) -> Vec<&mut View> {
        match self {
            Op::Matmul { lhs, rhs, out }
            | Op::Binary { lhs, rhs, out, .. }
            | Op::Compare { lhs, rhs, out, .. } => vec![lhs, rhs, out],
            Op::Unary { input, out, .. }
            | Op::Affine { input, out, .. }
            | Op::Reduce { input, out, .. }
            | Op::Softmax { input, out, .. }
            | Op::Cast { input, out }
            | Op::ArgSort { input, out, .. }
            | Op::Copy { input, out } => vec![input, out],
            Op::Concat { inputs, out, .. }
            | Op::Fused { inputs, out, .. }
            | Op::FusedReduce { inputs, out, .. } => inputs.iter_mut().chain([out]).collect(),
            Op::IndexSelect { input, indices, out, .. }
            | Op::Gather { input, indices, out, .. } => {
                vec![input, indices, out]
            }
            Op::IndexAdd { src, indices, out, .. }
            | Op::ScatterAdd { src, indices, out, .. }
            | Op::Scatter { src, indices, out, .. } => vec![src, indices, out],
            Op::Where { cond, on_true, on_false, out } => vec![cond, on_true, on_false, out],
            Op::Fill { out, .. } => vec![out],
            Op::Attention { q, k, v, out, .. } => vec![q, k, v, out],
            Op::AttentionBackward { q, k, v, d_out, out, .. } => vec![q, k, v, d_out, out],
        }
    }

    /// Floating-point operations the op performs (multiply-add counts 2), for pricing.
    pub fn flops(&self) -> f64 {
        match self {
            Op::Matmul { lhs, out, .. } => {
                let k = lhs.dims()[lhs.dims().len() - 1];
                2.0 * out.numel() as f64 * k as f64
            }
            Op::Unary { out, .. } => 8.0 * out.numel() as f64,
            Op::Softmax { out, .. } => 10.0 * out.numel() as f64,
            Op::Reduce { input, .. } => input.numel() as f64,
            Op::Binary { out, .. } | Op::Compare { out, .. } | Op::Affine { out, .. } => {
                out.numel() as f64
            }
            Op::Fused { program, out, .. } => program.len() as f64 * out.numel() as f64,
            Op::FusedReduce { inputs, program, .. } => {
                let n = inputs.first().map_or(0, |v| v.numel());
                (program.len() + 1) as f64 * n as f64
            }
            // Per score: a product with each query's row and one with the values (2·d each
            // way), the softmax's few; the causal mask skips about half of them. The backward
            // pass recomputes the scores and takes four more products.
            Op::Attention { q, causal, .. } | Op::AttentionBackward { q, causal, .. } => {
                let dims = q.dims();
                let (time, head) = (dims[dims.len() - 2], dims[dims.len() - 1]);
                let scores = (q.numel() / head.max(1)) as f64 * time as f64;
                let seen = if *causal { 0.5 } else { 1.0 };
                let per_score = match self {
                    Op::Attention { .. } => 4.0 * head as f64 + 10.0,
                    _ => 10.0 * head as f64 + 10.0,
                };
                seen * scores * per_score
            }
            _ => 0.0,
        }
    }

    /// Bytes the op must read and write at least once, for pricing.
    pub fn bytes(&self) -> f64 {
        let io: usize = self.inputs().iter().map(|v| v.numel() * v.dtype.size_in_bytes()).sum();
        let out = self.output();
        (io + out.numel() * out.dtype.size_in_bytes()) as f64
    }

    /// [`Op::bytes`] where the op runs as its decomposition: attention on a device without
    /// an attention kernel also writes its `[.., time, time]` scores, masked scores and
    /// weights and reads each once (the backward pass writes four such tensors). Every
    /// other op: `bytes()`.
    pub fn decomposed_bytes(&self) -> f64 {
        match self {
            Op::Attention { q, .. } | Op::AttentionBackward { q, .. } => {
                let dims = q.dims();
                let (time, head) = (dims[dims.len() - 2], dims[dims.len() - 1].max(1));
                let scores = (q.numel() / head * time * q.dtype.size_in_bytes()) as f64;
                let written = if matches!(self, Op::Attention { .. }) { 3.0 } else { 4.0 };
                self.bytes() + 2.0 * written * scores
            }
            _ => self.bytes(),
        }
    }

    /// One line naming the op and every operand's dtype and layout, for error messages.
    pub fn describe(&self) -> String {
        let ins: Vec<String> = self.inputs().iter().map(|v| format!("{v:?}")).collect();
        format!("{}({}) -> {:?}", self.name(), ins.join(", "), self.output())
    }

    /// Checks the whole contract of this op on its own (arity, shapes, dtypes, axes,
    /// aliasing). `device` names the device in the error. Backends call this first, and then
    /// check that every view's buffer is theirs and large enough.
    pub fn validate(&self, device: &str) -> Result<()> {
        let v = Validator { op: self, device };
        v.check()
    }
}

struct Validator<'a> {
    op: &'a Op,
    device: &'a str,
}

impl Validator<'_> {
    fn shape_err(&self, detail: impl fmt::Display) -> Error {
        Error::Shape {
            op: self.op.name(),
            device: self.device.into(),
            detail: format!("{detail}; {}", self.op.describe()),
        }
    }

    fn dtype_err(&self, detail: impl fmt::Display) -> Error {
        Error::DType {
            op: self.op.name(),
            device: self.device.into(),
            detail: format!("{detail}; {}", self.op.describe()),
        }
    }

    fn arg_err(&self, detail: impl fmt::Display) -> Error {
        Error::InvalidArgument {
            op: self.op.name(),
            device: self.device.into(),
            detail: format!("{detail}; {}", self.op.describe()),
        }
    }

    fn index_err(&self, detail: impl fmt::Display) -> Error {
        Error::IndexOutOfRange {
            op: self.op.name(),
            device: self.device.into(),
            detail: format!("{detail}; {}", self.op.describe()),
        }
    }

    fn require_float(&self, v: &View) -> Result<()> {
        if v.dtype.is_float() {
            return Ok(());
        }
        Err(Error::UnsupportedDType {
            op: self.op.name(),
            device: self.device.into(),
            dtype: v.dtype,
            detail: format!(" (arithmetic needs f32, f16 or bf16); {}", self.op.describe()),
        })
    }

    /// Integers take only the arithmetic the contract defines for them; `why` says which.
    fn require_float_or(&self, v: &View, int_ok: bool, why: &str) -> Result<()> {
        if v.dtype.is_float() || int_ok {
            return Ok(());
        }
        Err(Error::UnsupportedDType {
            op: self.op.name(),
            device: self.device.into(),
            dtype: v.dtype,
            detail: format!(" ({why}); {}", self.op.describe()),
        })
    }

    /// Attention's operands: floats of one dtype, one shape `[.., time, head_dim]` of rank
    /// at least 2, a finite scale.
    fn attention(&self, operands: &[&View], out: &View, scale: f64) -> Result<()> {
        let first = operands[0];
        for v in operands.iter().copied().chain([out]) {
            self.require_float(v)?;
            self.same_dtype(v, first)?;
        }
        for v in operands {
            self.same_shape(v, first)?;
        }
        if first.dims().len() < 2 {
            return Err(self.shape_err("operands must be [.., time, head_dim]"));
        }
        // Kernels scale in f32.
        if !(scale as f32).is_finite() {
            return Err(self.arg_err(format!("the scale {scale} is not finite as an f32")));
        }
        Ok(())
    }

    fn same_dtype(&self, a: &View, b: &View) -> Result<()> {
        if a.dtype == b.dtype {
            Ok(())
        } else {
            Err(self.dtype_err(format!("expected equal dtypes, got {} and {}", a.dtype, b.dtype)))
        }
    }

    fn same_shape(&self, a: &View, b: &View) -> Result<()> {
        if a.dims() == b.dims() {
            Ok(())
        } else {
            Err(self.shape_err(format!(
                "expected equal shapes, got {} and {}",
                a.layout.shape, b.layout.shape
            )))
        }
    }

    fn axis(&self, v: &View, axis: usize) -> Result<()> {
        if axis < v.layout.rank() {
            Ok(())
        } else {
            Err(self.index_err(format!(
                "axis {axis} out of range for rank {} shape {}",
                v.layout.rank(),
                v.layout.shape
            )))
        }
    }

    fn index_dtype(&self, v: &View) -> Result<()> {
        if v.dtype.is_index() {
            Ok(())
        } else {
            Err(self.dtype_err(format!("indices must be u32, i32 or i64, got {}", v.dtype)))
        }
    }

    fn layouts(&self) -> Result<()> {
        let out = self.op.output();
        if out.layout.strides.len() != out.layout.rank() {
            return Err(self.arg_err("output strides do not match its rank"));
        }
        for v in self.op.inputs() {
            if v.layout.strides.len() != v.layout.rank() {
                return Err(self.arg_err("input strides do not match its rank"));
            }
            if v.buffer == out.buffer && v.numel() > 0 && out.numel() > 0 {
                return Err(self.arg_err("the output shares a buffer with an input"));
            }
        }
        if !non_overlapping(&out.layout) {
            return Err(self
                .arg_err(format!("the output layout {} writes some elements twice", out.layout)));
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        self.layouts()?;
        match self.op {
            Op::Matmul { lhs, rhs, out } => {
                for v in [lhs, rhs, out] {
                    self.require_float(v)?;
                }
                self.same_dtype(lhs, rhs)?;
                self.same_dtype(lhs, out)?;
                let (l, r, o) = (lhs.dims(), rhs.dims(), out.dims());
                let rank = o.len();
                if rank < 2 || l.len() != rank || r.len() != rank {
                    return Err(self.shape_err("operands must have the same rank, at least 2"));
                }
                let b = rank - 2;
                if l[..b] != o[..b] || r[..b] != o[..b] {
                    return Err(self.shape_err("batch dims differ"));
                }
                if l[b + 1] != r[b] || l[b] != o[b] || r[b + 1] != o[b + 1] {
                    return Err(self.shape_err(format!(
                        "[m, k] x [k, n] -> [m, n] does not fit {:?} x {:?} -> {:?}",
                        &l[b..],
                        &r[b..],
                        &o[b..]
                    )));
                }
            }
            Op::Binary { op, lhs, rhs, out } => {
                let int_ok = *op != BinaryOp::Pow;
                self.require_float_or(out, int_ok, "pow needs f32, f16 or bf16")?;
                self.same_dtype(lhs, out)?;
                self.same_dtype(rhs, out)?;
                self.same_shape(lhs, out)?;
                self.same_shape(rhs, out)?;
            }
            Op::Compare { lhs, rhs, out, .. } => {
                self.same_dtype(lhs, rhs)?;
                if out.dtype != DType::U8 && out.dtype != lhs.dtype {
                    return Err(self.dtype_err("comparison output must be u8 or the input dtype"));
                }
                self.same_shape(lhs, out)?;
                self.same_shape(rhs, out)?;
            }
            Op::Unary { op, input, out } => {
                let int_ok = out.dtype.is_signed_int() && matches!(op, UnaryOp::Neg | UnaryOp::Abs);
                let why = "integers take neg and abs only, and only when signed";
                self.require_float_or(out, int_ok, why)?;
                self.same_dtype(input, out)?;
                self.same_shape(input, out)?;
            }
            Op::Affine { input, out, .. } => {
                self.require_float(out)?;
                self.same_dtype(input, out)?;
                self.same_shape(input, out)?;
            }
            Op::Reduce { op, input, out, axis } => {
                let why = "integers take sum, max, min, argmax and argmin";
                self.require_float_or(input, *op != ReduceOp::Mean, why)?;
                self.axis(input, *axis)?;
                let want = if op.is_arg() { DType::U32 } else { input.dtype };
                if out.dtype != want {
                    return Err(self.dtype_err(format!("output must be {want}")));
                }
                let mut dims = input.dims().to_vec();
                dims[*axis] = 1;
                if out.dims() != dims {
                    return Err(self.shape_err(format!("output must have shape {dims:?}")));
                }
                let empty_axis = input.dims()[*axis] == 0 && out.numel() > 0;
                if empty_axis && *op != ReduceOp::Sum && *op != ReduceOp::Mean {
                    return Err(self.arg_err(format!("{} over an empty axis", op.name())));
                }
            }
            Op::Softmax { input, out, axis, .. } => {
                self.require_float(out)?;
                self.axis(input, *axis)?;
                self.same_dtype(input, out)?;
                self.same_shape(input, out)?;
            }
            Op::Cast { input, out } => self.same_shape(input, out)?,
            Op::Copy { input, out } => {
                self.same_dtype(input, out)?;
                self.same_shape(input, out)?;
            }
            Op::Concat { inputs, out, axis } => {
                self.axis(out, *axis)?;
                let mut total = 0;
                for v in inputs {
                    self.same_dtype(v, out)?;
                    let same_rank = v.dims().len() == out.dims().len();
                    let fits = same_rank
                        && v.dims()
                            .iter()
                            .zip(out.dims())
                            .enumerate()
                            .all(|(d, (a, b))| d == *axis || a == b);
                    if !fits {
                        return Err(self.shape_err(format!(
                            "{} does not fit {} outside axis {axis}",
                            v.layout.shape, out.layout.shape
                        )));
                    }
                    total += v.dims()[*axis];
                }
                if total != out.dims()[*axis] {
                    return Err(self.shape_err(format!(
                        "inputs add up to {total} along axis {axis}, output has {}",
                        out.dims()[*axis]
                    )));
                }
            }
            Op::IndexSelect { input, indices, out, axis } => {
                self.axis(input, *axis)?;
                self.index_dtype(indices)?;
                self.same_dtype(input, out)?;
                if indices.dims().len() != 1 {
                    return Err(self.shape_err("indices must be 1-D"));
                }
                let mut dims = input.dims().to_vec();
                dims[*axis] = indices.dims()[0];
                if out.dims() != dims {
                    return Err(self.shape_err(format!("output must have shape {dims:?}")));
                }
                self.indexable(input.dims()[*axis], indices)?;
            }
            Op::Gather { input, indices, out, axis } => {
                self.axis(input, *axis)?;
                self.index_dtype(indices)?;
                self.same_dtype(input, out)?;
                self.same_shape(indices, out)?;
                self.fits_outside_axis(indices, input, *axis)?;
                self.indexable(input.dims()[*axis], indices)?;
            }
            Op::IndexAdd { src, indices, out, axis } => {
                self.require_float(out)?;
                self.axis(out, *axis)?;
                self.index_dtype(indices)?;
                self.same_dtype(src, out)?;
                if indices.dims().len() != 1 {
                    return Err(self.shape_err("indices must be 1-D"));
                }
                let mut dims = out.dims().to_vec();
                dims[*axis] = indices.dims()[0];
                if src.dims() != dims {
                    return Err(self.shape_err(format!("src must have shape {dims:?}")));
                }
                self.indexable(out.dims()[*axis], indices)?;
            }
            Op::ScatterAdd { src, indices, out, axis } => {
                self.require_float(out)?;
                self.axis(out, *axis)?;
                self.index_dtype(indices)?;
                self.same_dtype(src, out)?;
                self.same_shape(indices, src)?;
                self.fits_outside_axis(src, out, *axis)?;
                self.indexable(out.dims()[*axis], indices)?;
            }
            Op::Scatter { src, indices, out, axis, .. } => {
                self.axis(out, *axis)?;
                self.index_dtype(indices)?;
                self.same_dtype(src, out)?;
                self.same_shape(indices, src)?;
                self.fits_outside_axis(src, out, *axis)?;
                self.indexable(out.dims()[*axis], indices)?;
            }
            Op::ArgSort { input, out, axis, .. } => {
                self.axis(input, *axis)?;
                if out.dtype != DType::U32 {
                    return Err(self.dtype_err("output must be u32"));
                }
                self.same_shape(input, out)?;
                if input.dims()[*axis] > u32::MAX as usize {
                    return Err(self.shape_err("an axis of more than u32::MAX positions"));
                }
            }
            Op::Where { cond, on_true, on_false, out } => {
                if cond.dtype != DType::U8 {
                    return Err(self.dtype_err(format!("condition must be u8, got {}", cond.dtype)));
                }
                self.same_dtype(on_true, out)?;
                self.same_dtype(on_false, out)?;
                for v in [cond, on_true, on_false] {
                    self.same_shape(v, out)?;
                }
            }
            Op::Fill { .. } => {}
            Op::Fused { inputs, program, out } => {
                self.require_float(out)?;
                for v in inputs {
                    self.require_float(v)?;
                    self.same_shape(v, out)?;
                }
                if let Some(why) = crate::fused::program_error(program, inputs.len()) {
                    return Err(self.arg_err(why));
                }
            }
            Op::Attention { q, k, v, out, scale, .. } => {
                self.attention(&[q, k, v], out, *scale)?;
                self.same_shape(q, out)?;
            }
            Op::AttentionBackward { q, k, v, d_out, out, scale, .. } => {
                self.attention(&[q, k, v, d_out], out, *scale)?;
                if out.dims().first() != Some(&3) || out.dims()[1..] != *q.dims() {
                    return Err(self.shape_err(format!(
                        "the output must be [3] + {:?} (dq, dk, dv)",
                        q.dims()
                    )));
                }
            }
            Op::FusedReduce { inputs, program, op, axis, out } => {
                self.require_float(out)?;
                if op.is_arg() {
                    return Err(
                        self.arg_err("a fused reduction sums, averages, or takes a max or min")
                    );
                }
                if let Some(why) = crate::fused::program_error(program, inputs.len()) {
                    return Err(self.arg_err(why));
                }
                let first = &inputs[0];
                self.axis(first, *axis)?;
                for v in inputs {
                    self.require_float(v)?;
                    self.same_shape(v, first)?;
                }
                let mut dims = first.dims().to_vec();
                dims[*axis] = 1;
                if out.dims() != dims {
                    return Err(self.shape_err(format!("output must have shape {dims:?}")));
                }
                let empty_axis = first.dims()[*axis] == 0 && out.numel() > 0;
                if empty_axis && matches!(op, ReduceOp::Max | ReduceOp::Min) {
                    return Err(self.arg_err(format!("{} over an empty axis", op.name())));
                }
            }
        }
        Ok(())
    }

    /// `small` fits inside `big` on every dim but `axis` (gather / scatter rules), same rank.
    fn fits_outside_axis(&self, small: &View, big: &View, axis: usize) -> Result<()> {
        let ok = small.dims().len() == big.dims().len()
            && small
                .dims()
                .iter()
                .zip(big.dims())
                .enumerate()
                .all(|(d, (s, b))| d == axis || s <= b);
        if ok {
            Ok(())
        } else {
            Err(self.shape_err(format!(
                "{} must have the rank of {} and fit inside it outside axis {axis}",
                small.layout.shape, big.layout.shape
            )))
        }
    }

    /// Index values are data, only known on the device; here we only refuse indexing into an
    /// empty axis, which no index value can satisfy.
    fn indexable(&self, axis_len: usize, indices: &View) -> Result<()> {
        if axis_len == 0 && indices.numel() > 0 {
            return Err(self.index_err("indexing into an axis of length 0"));
        }
        Ok(())
    }
}

/// True when no two in-bounds multi-indices of `layout` map to the same element: with the
/// dims sorted by stride, each stride must step past everything the smaller ones span.
pub fn non_overlapping(layout: &Layout) -> bool {
    // The common case, answered without sorting: every op's fresh output is contiguous.
    if layout.numel() <= 1 || layout.is_contiguous() {
        return true;
    }
    let mut dims: Vec<(usize, usize)> = layout
        .dims()
        .iter()
        .zip(&layout.strides)
        .filter(|(d, _)| **d > 1)
        .map(|(&d, &s)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut span = 0;
    for (stride, dim) in dims {
        if stride <= span {
            return false;
        }
        // Saturating: a span past `usize` fits no buffer; the views' bounds checks refuse it.
        span = span.saturating_add((dim - 1).saturating_mul(stride));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceId, Shape};

    fn view(device: DeviceId, index: u64) -> View {
        View::new(BufferId { device, index }, Layout::contiguous([2]), DType::F32)
    }

    /// The static names are the family and the op's own name, as error messages always said.
    #[test]
    fn static_names_are_family_dot_op() {
        let dev = DeviceId::fresh();
        let v = || view(dev, 1);
        for op in BinaryOp::ALL {
            let o = Op::Binary { op, lhs: v(), rhs: v(), out: v() };
            assert_eq!(o.static_name(), format!("binary.{}", op.name()));
        }
        for op in CompareOp::ALL {
            let o = Op::Compare { op, lhs: v(), rhs: v(), out: v() };
            assert_eq!(o.static_name(), format!("compare.{}", op.name()));
        }
        for op in UnaryOp::ALL {
            let o = Op::Unary { op, input: v(), out: v() };
            assert_eq!(o.static_name(), format!("unary.{}", op.name()));
        }
        for op in ReduceOp::ALL {
            let o = Op::Reduce { op, input: v(), out: v(), axis: 0 };
            assert_eq!(o.static_name(), format!("reduce.{}", op.name()));
        }
        for op in ScatterOp::ALL {
            let o = Op::Scatter { op, src: v(), indices: v(), out: v(), axis: 0 };
            assert_eq!(o.static_name(), format!("scatter.{}", op.name()));
        }
        assert_eq!(Op::Fill { out: v(), value: 0.0 }.name(), "fill");
        let sort = Op::ArgSort { input: v(), out: v(), axis: 0, descending: true };
        assert_eq!(sort.static_name(), "argsort");
    }

    /// Attention's flops count the causal half of the scores; run as its decomposition it
    /// also moves its scores (three `[time, time]` tensors written and read forward).
    #[test]
    fn attention_is_priced_with_and_without_its_scores() {
        let dev = DeviceId::fresh();
        let v = |index, dims: &[usize]| {
            View::new(BufferId { device: dev, index }, Layout::contiguous(dims), DType::F32)
        };
        let dims = [2, 8, 4];
        let op = |causal| Op::Attention {
            q: v(1, &dims),
            k: v(2, &dims),
            v: v(3, &dims),
            out: v(4, &dims),
            scale: 0.5,
            causal,
        };
        op(true).validate("test").unwrap();
        // 2·8·8 scores, each 4·4 + 10 flops; half of them causal.
        assert_eq!(op(false).flops(), 128.0 * 26.0);
        assert_eq!(op(true).flops(), 64.0 * 26.0);
        assert_eq!(op(true).bytes(), 4.0 * 64.0 * 4.0);
        assert_eq!(op(true).decomposed_bytes(), op(true).bytes() + 6.0 * 128.0 * 4.0);
        let matmul = Op::Matmul { lhs: v(1, &[2, 2]), rhs: v(2, &[2, 2]), out: v(3, &[2, 2]) };
        assert_eq!(matmul.decomposed_bytes(), matmul.bytes());
        let mut huge = op(true);
        if let Op::Attention { scale, .. } = &mut huge {
            *scale = 1e39;
        }
        assert!(huge.validate("test").unwrap_err().to_string().contains("f32"));
    }

    #[test]
    fn views_mut_lists_the_inputs_then_the_output() {
        let dev = DeviceId::fresh();
        let mut op =
            Op::Concat { inputs: vec![view(dev, 1), view(dev, 2)], out: view(dev, 3), axis: 0 };
        let order: Vec<u64> = op.views_mut().iter().map(|v| v.buffer.index).collect();
        assert_eq!(order, vec![1, 2, 3]);
        let inputs: Vec<u64> = op.inputs().iter().map(|v| v.buffer.index).collect();
        assert_eq!(inputs, order[..2]);
        for v in op.views_mut() {
            v.buffer.index += 10;
        }
        assert_eq!(op.output().buffer.index, 13);
    }

    #[test]
    fn overlapping_outputs_are_detected() {
        assert!(non_overlapping(&Layout::contiguous([3, 4])));
        assert!(non_overlapping(&Layout::contiguous([3, 4]).transposed(0, 1)));
        let mut overlap = Layout::contiguous([3, 4]);
        overlap.strides = vec![2, 1]; // rows of 4 starting every 2 elements
        assert!(!non_overlapping(&overlap));
        let dev = DeviceId::fresh();
        let mut out = view(dev, 2);
        out.layout = overlap;
        out.layout.shape = Shape::from([3, 4]);
        let op = Op::Fill { out, value: 0.0 };
        let err = op.validate("test:0").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("writes some elements twice"), "{err}");
    }

    #[test]
    fn huge_strides_never_overflow() {
        // Each of these panicked with overflow checks on (a debug build).
        let mut huge = Layout::contiguous([3, 2]);
        huge.strides = vec![usize::MAX / 2, 1];
        assert!(!non_overlapping(&huge) || huge.end().is_none());
        assert_eq!(huge.end(), None);
        let mut wide = Layout::contiguous([usize::MAX / 2, 4]);
        wide.strides = vec![4, 1];
        assert!(!wide.is_contiguous() || wide.end().is_none());
        let narrowed = huge.narrowed(0, 2, 1);
        assert_eq!(narrowed.end(), None, "{narrowed:?}");
        let dev = DeviceId::fresh();
        let mut out = view(dev, 1);
        out.layout = huge;
        // Validation does not panic (the device refuses the view: it fits no buffer).
        let _ = Op::Fill { out, value: 0.0 }.validate("test:0");
    }
}
