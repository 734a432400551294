//! The result of a conformance run: per (op, dtype) statistics, every failure with enough
//! detail to reproduce it, and what was skipped and why.

use std::collections::BTreeSet;
use std::fmt;

use crate::{Error, ErrorKind};

use super::Sizes;

/// The outcome of [`check`](super::check): printable as an aligned table.
#[derive(Clone, Debug)]
pub struct Report {
    /// `label "name"` of the device under test.
    pub device: String,
    pub seed: u64,
    pub sizes: Sizes,
    /// One entry per (op, dtype) that ran, in the order they ran.
    pub ops: Vec<OpReport>,
    /// The (op, dtype) pairs that did not run, and why.
    pub skipped: Vec<Skip>,
}

/// The statistics of one (op, dtype) pair.
#[derive(Clone, Debug)]
pub struct OpReport {
    /// The op's name as `Op::name` gives it (`binary.add`, `reduce.sum`, ...), or the name of
    /// a contract check (`contract.device_mismatch`, `io.copy`, ...).
    pub op: String,
    /// The dtype of the data (`f32`), `src->dst` for casts, `-` for dtype-free checks.
    pub dtype: String,
    pub cases: usize,
    pub failed: usize,
    /// Largest error in units of the tolerance (≤ 1 passes; 0 when every result was exact).
    pub worst_ratio: f64,
    /// Largest absolute error.
    pub worst_abs: f64,
    pub failures: Vec<Failure>,
}

/// One failed case.
#[derive(Clone, Debug)]
pub struct Failure {
    pub op: String,
    pub dtype: String,
    /// The op with every operand's dtype, shape, strides and offset, and its parameters.
    pub case: String,
    pub problem: Problem,
}

/// What went wrong in a failed case.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// Results outside the tolerance: the first wrong element and how many were wrong.
    Mismatch {
        index: Vec<usize>,
        expected: f64,
        got: f64,
        /// `|got − expected|` in units of that element's tolerance (infinite where the result
        /// must be exact).
        ratio: f64,
        wrong: usize,
        total: usize,
    },
    /// The op changed buffer elements outside its output view (`element` is the first, as an
    /// element index into the output buffer).
    Clobbered { element: usize, expected: f64, got: f64, wrong: usize },
    /// A device call failed on a valid case.
    Device { call: String, error: Error },
    /// A call that must fail with an error of kind `expected` succeeded or failed otherwise.
    WrongError { call: String, expected: ErrorKind, got: Option<Error> },
    /// The device (or the kit) panicked.
    Panicked(String),
    /// Anything else, e.g. `memory()` reporting more free than total bytes.
    Other(String),
}

/// An (op, dtype) pair that did not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub op: String,
    pub dtype: String,
    pub reason: String,
}

impl Report {
    pub(crate) fn new(device: String, seed: u64, sizes: Sizes) -> Report {
        Report { device, seed, sizes, ops: Vec::new(), skipped: Vec::new() }
    }

    /// True when no case failed (skips do not count).
    pub fn is_ok(&self) -> bool {
        self.ops.iter().all(|o| o.failed == 0)
    }

    /// Panics with the report table when any case failed. For tests.
    #[track_caller]
    pub fn assert_ok(&self) {
        if !self.is_ok() {
            panic!("the device does not conform:\n{self}");
        }
    }

    /// Every failure, in the order the cases ran.
    pub fn failures(&self) -> Vec<&Failure> {
        self.ops.iter().flat_map(|o| &o.failures).collect()
    }

    /// The names of the ops with at least one failure.
    pub fn failed_ops(&self) -> BTreeSet<&str> {
        self.ops.iter().filter(|o| o.failed > 0).map(|o| o.op.as_str()).collect()
    }

    /// The statistics of one (op, dtype) pair, if it ran.
    pub fn op(&self, op: &str, dtype: &str) -> Option<&OpReport> {
        self.ops.iter().find(|o| o.op == op && o.dtype == dtype)
    }

    /// Total number of cases that ran.
    pub fn cases(&self) -> usize {
        self.ops.iter().map(|o| o.cases).sum()
    }

    pub(crate) fn entry(&mut self, op: &str, dtype: &str) -> &mut OpReport {
        let at = match self.ops.iter().rposition(|o| o.op == op && o.dtype == dtype) {
            Some(at) => at,
            None => {
                self.ops.push(OpReport {
                    op: op.to_string(),
                    dtype: dtype.to_string(),
                    cases: 0,
                    failed: 0,
                    worst_ratio: 0.0,
                    worst_abs: 0.0,
                    failures: Vec::new(),
                });
                self.ops.len() - 1
            }
        };
        &mut self.ops[at]
    }

    pub(crate) fn skip(&mut self, op: &str, dtype: &str, reason: String) {
        if !self.skipped.iter().any(|s| s.op == op && s.dtype == dtype) {
            self.skipped.push(Skip { op: op.to_string(), dtype: dtype.to_string(), reason });
        }
    }
}

/// How many failures of one (op, dtype) pair the table prints.
const SHOWN_PER_PAIR: usize = 3;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: usize = self.ops.iter().map(|o| o.failed).sum();
        writeln!(
            f,
            "conformance of {} ({:?} set, seed {:#x}): {} cases over {} (op, dtype) pairs, \
             {} failed, {} pairs skipped",
            self.device,
            self.sizes,
            self.seed,
            self.cases(),
            self.ops.len(),
            failed,
            self.skipped.len()
        )?;
        let w_op = self.ops.iter().map(|o| o.op.len()).max().unwrap_or(2).max(2);
        let w_dt = self.ops.iter().map(|o| o.dtype.len()).max().unwrap_or(5).max(5);
        writeln!(
            f,
            "  {:<w_op$}  {:<w_dt$}  {:>5}  {:>6}  {:>9}  {:>10}  status",
            "op", "dtype", "cases", "failed", "worst/tol", "worst|err|"
        )?;
        for o in &self.ops {
            writeln!(
                f,
                "  {:<w_op$}  {:<w_dt$}  {:>5}  {:>6}  {:>9}  {:>10.2e}  {}",
                o.op,
                o.dtype,
                o.cases,
                o.failed,
                ratio(o.worst_ratio),
                o.worst_abs,
                if o.failed == 0 { "ok" } else { "FAIL" }
            )?;
        }
        if failed > 0 {
            writeln!(f, "failures:")?;
            for o in self.ops.iter().filter(|o| o.failed > 0) {
                for fail in o.failures.iter().take(SHOWN_PER_PAIR) {
                    writeln!(f, "  [{} {}] {}", fail.op, fail.dtype, fail.case)?;
                    writeln!(f, "      {}", fail.problem)?;
                }
                if o.failures.len() > SHOWN_PER_PAIR {
                    writeln!(
                        f,
                        "  [{} {}] ... and {} more",
                        o.op,
                        o.dtype,
                        o.failures.len() - SHOWN_PER_PAIR
                    )?;
                }
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "skipped:")?;
            let w_op = self.skipped.iter().map(|s| s.op.len()).max().unwrap_or(0);
            let w_dt = self.skipped.iter().map(|s| s.dtype.len()).max().unwrap_or(0);
            for s in &self.skipped {
                writeln!(f, "  {:<w_op$}  {:<w_dt$}  {}", s.op, s.dtype, s.reason)?;
            }
        }
        Ok(())
    }
}

fn ratio(r: f64) -> String {
    if r.is_finite() { format!("{r:.3}") } else { "inf".into() }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Mismatch { index, expected, got, ratio: r, wrong, total } => write!(
                f,
                "first mismatch at {index:?}: expected {expected:e}, got {got:e} \
                 (|err| {:.3e} = {} x tolerance); {wrong} of {total} elements wrong",
                (got - expected).abs(),
                ratio(*r)
            ),
            Problem::Clobbered { element, expected, got, wrong } => write!(
                f,
                "wrote outside its output view: buffer element {element} changed from \
                 {expected:e} to {got:e} ({wrong} elements outside the view changed)"
            ),
            Problem::Device { call, error } => write!(f, "{call} returned Err: {error}"),
            Problem::WrongError { call, expected, got: None } => {
                write!(f, "{call}: expected Err of kind {expected:?}, got Ok")
            }
            Problem::WrongError { call, expected, got: Some(e) } => {
                write!(f, "{call}: expected Err of kind {expected:?}, got {:?}: {e}", e.kind())
            }
            Problem::Panicked(msg) => write!(f, "panicked: {msg}"),
            Problem::Other(msg) => f.write_str(msg),
        }
    }
}
