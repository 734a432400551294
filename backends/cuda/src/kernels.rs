//! The kernel library: the sources in kernels/cuda, how NVRTC compiles each, and every entry
//! point the backend launches, named as kernels/cuda/README.md lays down.

use std::fmt;

use manychips_api::{BinaryOp, CompareOp, DType, ReduceOp, ScatterOp, UnaryOp};

use crate::fused::{self, FusedId};

const COMMON: &str = include_str!("../../../kernels/cuda/common.cuh");
const ELEMENTWISE: &str = include_str!("../../../kernels/cuda/elementwise.cu");
const REDUCE: &str = include_str!("../../../kernels/cuda/reduce.cu");
const SOFTMAX: &str = include_str!("../../../kernels/cuda/softmax.cu");
const INDEX: &str = include_str!("../../../kernels/cuda/index.cu");
const SCATTER: &str = include_str!("../../../kernels/cuda/scatter.cu");
const SORT: &str = include_str!("../../../kernels/cuda/sort.cu");
const MATMUL: &str = include_str!("../../../kernels/cuda/matmul.cu");

/// One `.cu` file, or one generated fused program: one NVRTC program, compiled on the first
/// op that needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Elementwise,
    Reduce,
    Softmax,
    Index,
    /// `Op::Scatter`'s kernels (apart from index.cu, whose users need not compile them).
    Scatter,
    /// `Op::ArgSort`'s kernels (keys, and the bitonic network's stages).
    Sort,
    Matmul,
    /// A kernel of `crate::fused`, generated for one program shape.
    Fused(FusedId),
}

impl Source {
    pub const ALL: [Source; 7] = [
        Source::Elementwise,
        Source::Reduce,
        Source::Softmax,
        Source::Index,
        Source::Scatter,
        Source::Sort,
        Source::Matmul,
    ];

    /// The file name, which is also the NVRTC program name.
    pub fn file(self) -> &'static str {
        match self {
            Source::Elementwise => "elementwise.cu",
            Source::Reduce => "reduce.cu",
            Source::Softmax => "softmax.cu",
            Source::Index => "index.cu",
            Source::Scatter => "scatter.cu",
            Source::Sort => "sort.cu",
            Source::Matmul => "matmul.cu",
            Source::Fused(_) => "fused.cu",
        }
    }

    fn body(self) -> String {
        match self {
            Source::Elementwise => ELEMENTWISE.into(),
            Source::Reduce => REDUCE.into(),
            Source::Softmax => SOFTMAX.into(),
            Source::Index => INDEX.into(),
            Source::Scatter => SCATTER.into(),
            Source::Sort => SORT.into(),
            Source::Matmul => MATMUL.into(),
            Source::Fused(id) => fused::kernel(id).source.clone(),
        }
    }

    /// The program NVRTC compiles: common.cuh, then the file, with `#line` directives so that
    /// diagnostics name the right file (kernels/cuda/README.md, "How a program is built").
    pub fn program(self) -> String {
        format!("#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}\"\n{}", self.file(), self.body())
    }

    /// Options besides the architecture: C++17, and no FMA contraction except in matmul.cu,
    /// so that elementwise results match the CPU backend bit for bit. Never fast math.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            Source::Matmul => &["-std=c++17", "--display-error-number", "--fmad=true"],
            _ => &["-std=c++17", "--display-error-number", "--fmad=false"],
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file())
    }
}

/// Rows per team: a block (long rows, few rows) or a warp (many short rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Team {
    Block,
    Warp,
}

/// One entry point, structured; [`Kernel::name`] is its `extern "C"` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Unary(UnaryOp, DType),
    Binary(BinaryOp, DType),
    Affine(DType),
    /// Input dtype, output dtype (u8 or the input's).
    Compare(CompareOp, DType, DType),
    Where(DType),
    Fill(DType),
    Copy(DType),
    /// Source dtype, destination dtype.
    Cast(DType, DType),
    Reduce(ReduceOp, DType, Team),
    Softmax {
        log: bool,
        dtype: DType,
        team: Team,
    },
    /// Data dtype, index dtype (u32, i32 or i64).
    Gather(DType, DType),
    IndexSelect(DType, DType),
    ScatterAdd {
        dtype: DType,
        index: DType,
        atomic: bool,
    },
    IndexAdd {
        dtype: DType,
        index: DType,
        atomic: bool,
    },
    /// `Op::Scatter`: the combine, data dtype (any), index dtype.
    Scatter {
        op: ScatterOp,
        dtype: DType,
        index: DType,
    },
    /// `Op::ArgSort`, first pass: the keys and positions of every element of `<t>` into the
    /// temporaries (`argsort_keys_<t>`).
    ArgSortKeys(DType),
    /// `Op::ArgSort`: one (k, j) stage of the bitonic network in global memory
    /// (`argsort_merge`).
    ArgSortMerge,
    /// `Op::ArgSort`: the stages of small j in shared memory, a block per tile
    /// (`argsort_tile`).
    ArgSortTile,
    MatmulTiled(DType),
    /// A generated fused program (`crate::fused`): `fused(p, in0.., out)`.
    Fused(FusedId),
    /// A generated fused reduction: `fused_reduce[_warp](p, in0.., out)`.
    FusedReduce(FusedId, Team),
}

impl Kernel {
    pub fn name(&self) -> String {
        let team = |t: &Team| if *t == Team::Warp { "_warp" } else { "" };
        let atomic = |a: &bool| if *a { "_atomic" } else { "" };
        match self {
            Kernel::Unary(op, t) => format!("unary_{}_{t}", op.name()),
            Kernel::Binary(op, t) => format!("binary_{}_{t}", op.name()),
            Kernel::Affine(t) => format!("affine_{t}"),
            Kernel::Compare(op, t, o) => format!("compare_{}_{t}_{o}", op.name()),
            Kernel::Where(t) => format!("where_{t}"),
            Kernel::Fill(t) => format!("fill_{t}"),
            Kernel::Copy(t) => format!("copy_{t}"),
            Kernel::Cast(s, d) => format!("cast_{s}_{d}"),
            Kernel::Reduce(op, t, tm) => format!("reduce_{}_{t}{}", op.name(), team(tm)),
            Kernel::Softmax { log, dtype, team: tm } => {
                let name = if *log { "log_softmax" } else { "softmax" };
                format!("{name}_{dtype}{}", team(tm))
            }
            Kernel::Gather(t, i) => format!("gather_{t}_{i}"),
            Kernel::IndexSelect(t, i) => format!("index_select_{t}_{i}"),
            Kernel::ScatterAdd { dtype, index, atomic: a } => {
                format!("scatter_add{}_{dtype}_{index}", atomic(a))
            }
            Kernel::IndexAdd { dtype, index, atomic: a } => {
                format!("index_add{}_{dtype}_{index}", atomic(a))
            }
            Kernel::Scatter { op, dtype, index } => {
                format!("scatter_{}_{dtype}_{index}", op.name())
            }
            Kernel::ArgSortKeys(t) => format!("argsort_keys_{t}"),
            Kernel::ArgSortMerge => "argsort_merge".into(),
            Kernel::ArgSortTile => "argsort_tile".into(),
            Kernel::MatmulTiled(t) => format!("matmul_tiled_{t}"),
            Kernel::Fused(_) => "fused".into(),
            Kernel::FusedReduce(_, tm) => format!("fused_reduce{}", team(tm)),
        }
    }

    pub fn source(&self) -> Source {
        match self {
            Kernel::Unary(..)
            | Kernel::Binary(..)
            | Kernel::Affine(..)
            | Kernel::Compare(..)
            | Kernel::Where(..)
            | Kernel::Fill(..)
            | Kernel::Copy(..)
            | Kernel::Cast(..) => Source::Elementwise,
            Kernel::Reduce(..) => Source::Reduce,
            Kernel::Softmax { .. } => Source::Softmax,
            Kernel::Gather(..)
            | Kernel::IndexSelect(..)
            | Kernel::ScatterAdd { .. }
            | Kernel::IndexAdd { .. } => Source::Index,
            Kernel::Scatter { .. } => Source::Scatter,
            Kernel::ArgSortKeys(..) | Kernel::ArgSortMerge | Kernel::ArgSortTile => Source::Sort,
            Kernel::MatmulTiled(..) => Source::Matmul,
            Kernel::Fused(id) | Kernel::FusedReduce(id, _) => Source::Fused(*id),
        }
    }

    /// Device pointers the kernel takes after `McParams` (operands, then the status words).
    pub fn pointer_args(&self) -> usize {
        match self {
            Kernel::Fill(..) => 1,
            Kernel::Unary(..)
            | Kernel::Affine(..)
            | Kernel::Copy(..)
            | Kernel::Cast(..)
            | Kernel::Reduce(..)
            | Kernel::Softmax { .. }
            | Kernel::ArgSortMerge
            | Kernel::ArgSortTile => 2,
            Kernel::Binary(..)
            | Kernel::Compare(..)
            | Kernel::MatmulTiled(..)
            | Kernel::ArgSortKeys(..) => 3,
            Kernel::Where(..)
            | Kernel::Gather(..)
            | Kernel::IndexSelect(..)
            | Kernel::ScatterAdd { .. }
            | Kernel::IndexAdd { .. }
            | Kernel::Scatter { .. } => 4,
            Kernel::Fused(id) | Kernel::FusedReduce(id, _) => fused::kernel(*id).inputs.len() + 1,
        }
    }

    /// Whether the last pointer is the status words (indexed kernels).
    #[cfg(test)]
    pub fn uses_status(&self) -> bool {
        matches!(
            self,
            Kernel::Gather(..)
                | Kernel::IndexSelect(..)
                | Kernel::ScatterAdd { .. }
                | Kernel::IndexAdd { .. }
                | Kernel::Scatter { .. }
        )
    }

    /// Whether the kernel reduces with a team (block size a multiple of 32, at most 1024).
    pub fn team(&self) -> Option<Team> {
        match self {
            Kernel::Reduce(_, _, t)
            | Kernel::Softmax { team: t, .. }
            | Kernel::FusedReduce(_, t) => Some(*t),
            _ => None,
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Every entry point the backend can launch: every op of `Op` for every dtype it allows.
pub fn all_kernels() -> Vec<Kernel> {
    let floats = DType::FLOATS;
    let mut all = Vec::new();
    for t in DType::ALL {
        let unary = UnaryOp::ALL.into_iter().filter(|&op| t.is_float() || signed_unary(op, t));
        all.extend(unary.map(|op| Kernel::Unary(op, t)));
        let binary = BinaryOp::ALL.into_iter().filter(|&op| t.is_float() || op != BinaryOp::Pow);
        all.extend(binary.map(|op| Kernel::Binary(op, t)));
        let reduce = ReduceOp::ALL.into_iter().filter(|&op| t.is_float() || op != ReduceOp::Mean);
        for op in reduce {
            all.push(Kernel::Reduce(op, t, Team::Block));
            all.push(Kernel::Reduce(op, t, Team::Warp));
        }
    }
    for t in floats {
        all.push(Kernel::Affine(t));
        for log in [false, true] {
            for team in [Team::Block, Team::Warp] {
                all.push(Kernel::Softmax { log, dtype: t, team });
            }
        }
        for index in DType::INDICES {
            for atomic in [false, true] {
                all.push(Kernel::ScatterAdd { dtype: t, index, atomic });
                all.push(Kernel::IndexAdd { dtype: t, index, atomic });
            }
        }
        all.push(Kernel::MatmulTiled(t));
    }
    for t in DType::ALL {
        for op in CompareOp::ALL {
            all.push(Kernel::Compare(op, t, t));
            if t != DType::U8 {
                all.push(Kernel::Compare(op, t, DType::U8));
            }
        }
        all.push(Kernel::Where(t));
        all.push(Kernel::Fill(t));
        all.push(Kernel::Copy(t));
        all.push(Kernel::ArgSortKeys(t));
        all.extend(DType::ALL.iter().map(|&d| Kernel::Cast(t, d)));
        for index in DType::INDICES {
            all.push(Kernel::Gather(t, index));
            all.push(Kernel::IndexSelect(t, index));
            for op in ScatterOp::ALL {
                all.push(Kernel::Scatter { op, dtype: t, index });
            }
        }
    }
    all.push(Kernel::ArgSortMerge);
    all.push(Kernel::ArgSortTile);
    all
}

/// The unary ops integers take: neg and abs, on signed integers.
pub(crate) fn signed_unary(op: UnaryOp, t: DType) -> bool {
    t.is_signed_int() && matches!(op, UnaryOp::Neg | UnaryOp::Abs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The `extern "C"` names a source defines, found by expanding its instantiation macros
    /// the way the preprocessor would for the names alone. Kept simple on purpose: the NVRTC
    /// test checks the real PTX; this one runs everywhere.
    fn names_in_readme_table() -> HashSet<String> {
        let floats = ["f32", "f16", "bf16"];
        let ints = ["u32", "u8", "i32", "i64"];
        let signed = ["i32", "i64"];
        let dtypes = ["f32", "f16", "bf16", "u32", "u8", "i32", "i64"];
        let indices = ["u32", "i32", "i64"];
        let unary = [
            "neg",
            "abs",
            "exp",
            "log",
            "sqrt",
            "rsqrt",
            "tanh",
            "sigmoid",
            "relu",
            "gelu_tanh",
            "gelu_erf",
            "silu",
            "sin",
            "cos",
        ];
        let int_binary = ["add", "sub", "mul", "div", "maximum", "minimum", "remainder"];
        let compare = ["eq", "ne", "lt", "le", "gt", "ge"];
        let int_reduce = ["sum", "max", "min", "argmax", "argmin"];
        let mut s = HashSet::new();
        for t in floats {
            for op in unary {
                s.insert(format!("unary_{op}_{t}"));
            }
            for op in int_binary.iter().chain(&["pow"]) {
                s.insert(format!("binary_{op}_{t}"));
            }
            s.insert(format!("affine_{t}"));
            for op in int_reduce.iter().chain(&["mean"]) {
                s.insert(format!("reduce_{op}_{t}"));
                s.insert(format!("reduce_{op}_{t}_warp"));
            }
            for n in ["softmax", "log_softmax"] {
                s.insert(format!("{n}_{t}"));
                s.insert(format!("{n}_{t}_warp"));
            }
            for i in indices {
                for n in ["scatter_add", "index_add"] {
                    s.insert(format!("{n}_{t}_{i}"));
                    s.insert(format!("{n}_atomic_{t}_{i}"));
                }
            }
            s.insert(format!("matmul_tiled_{t}"));
        }
        for t in ints {
            for op in int_binary {
                s.insert(format!("binary_{op}_{t}"));
            }
            for op in int_reduce {
                s.insert(format!("reduce_{op}_{t}"));
                s.insert(format!("reduce_{op}_{t}_warp"));
            }
        }
        for t in signed {
            s.insert(format!("unary_neg_{t}"));
            s.insert(format!("unary_abs_{t}"));
        }
        for t in dtypes {
            for op in compare {
                s.insert(format!("compare_{op}_{t}_{t}"));
                s.insert(format!("compare_{op}_{t}_u8"));
            }
            for n in ["where", "fill", "copy", "argsort_keys"] {
                s.insert(format!("{n}_{t}"));
            }
            for i in indices {
                s.insert(format!("gather_{t}_{i}"));
                s.insert(format!("index_select_{t}_{i}"));
                for op in ["assign", "sum", "prod", "max", "min"] {
                    s.insert(format!("scatter_{op}_{t}_{i}"));
                }
            }
            for d in dtypes {
                s.insert(format!("cast_{t}_{d}"));
            }
        }
        s.insert("argsort_merge".into());
        s.insert("argsort_tile".into());
        s
    }

    #[test]
    fn every_kernel_is_in_the_documented_table_of_532() {
        let table = names_in_readme_table();
        assert_eq!(table.len(), 532);
        let ours: HashSet<String> = all_kernels().iter().map(Kernel::name).collect();
        assert_eq!(ours.len(), all_kernels().len(), "two kernels share a name");
        assert_eq!(ours, table);
    }

    /// Each name occurs in its source: as a macro-built name (`<op>_##tn`) the source
    /// contains the op part and the instantiation of the dtype list.
    #[test]
    fn every_kernel_names_a_family_of_its_source() {
        for k in all_kernels() {
            let body = k.source().body();
            let stem = match k {
                Kernel::Unary(op, t) if t.is_int() => format!("unary_{}_##tn", op.name()),
                Kernel::Unary(op, _) => format!("X({}, ", op.name()),
                Kernel::Binary(op, _) => format!("X({}, ", op.name()),
                Kernel::Compare(op, _, _) => format!("X({}, ", op.name()),
                Kernel::Affine(_) => "affine_##tn".into(),
                Kernel::Where(_) => "where_##tn".into(),
                Kernel::Fill(_) => "fill_##tn".into(),
                Kernel::Copy(_) => "copy_##tn".into(),
                Kernel::Cast(..) => "cast_##sn##_##dn".into(),
                Kernel::Reduce(op, ..) => format!("{}, ", op.name()),
                Kernel::Softmax { log: false, .. } => "softmax_##tn".into(),
                Kernel::Softmax { log: true, .. } => "log_softmax_##tn".into(),
                Kernel::Gather(..) => "gather_##tn##_##in".into(),
                Kernel::IndexSelect(..) => "index_select_##tn##_##in".into(),
                Kernel::ScatterAdd { atomic: false, .. } => "scatter_add_##tn##_##in".into(),
                Kernel::ScatterAdd { atomic: true, .. } => "scatter_add_atomic_##tn##_##in".into(),
                Kernel::IndexAdd { atomic: false, .. } => "index_add_##tn##_##in".into(),
                Kernel::IndexAdd { atomic: true, .. } => "index_add_atomic_##tn##_##in".into(),
                Kernel::Scatter { op, .. } => {
                    format!("MC_SCATTER_OP_KERNEL(T, tn, I, in, {})", op.name())
                }
                Kernel::ArgSortKeys(_) => "argsort_keys_##tn".into(),
                Kernel::ArgSortMerge => "argsort_merge(".into(),
                Kernel::ArgSortTile => "argsort_tile(".into(),
                Kernel::MatmulTiled(_) => "matmul_tiled_##tn".into(),
                Kernel::Fused(_) | Kernel::FusedReduce(..) => "fused".into(),
            };
            assert!(body.contains(&stem), "{k}: `{stem}` not in {}", k.source());
        }
    }

    #[test]
    fn programs_concatenate_common_first() {
        for s in Source::ALL {
            let p = s.program();
            assert!(p.starts_with("#line 1 \"common.cuh\"\n"));
            assert!(p.contains(&format!("#line 1 \"{}\"\n", s.file())));
            assert!(
                !p.lines().any(|l| l.trim_start().starts_with("#include")),
                "{s} must include nothing"
            );
            assert!(s.options().contains(&"-std=c++17"));
            assert!(!s.options().iter().any(|o| o.contains("fast_math")));
        }
    }
}
