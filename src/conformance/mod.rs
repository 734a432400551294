//! The conformance kit: checks any [`Device`] against an f64 host reference.
//!
//! Every op of the closed [`Op`](crate::Op) enum runs in every variant and every dtype the
//! device claims in [`DeviceInfo::dtypes`](crate::DeviceInfo) (restricted to the dtypes the op
//! allows), on awkward shapes (scalars, 1, primes, sizes that are no multiple of any tile,
//! rows of 4099 and 65537, zero-size dims), on non-contiguous views (transposed, sliced with
//! an offset into a bigger buffer, broadcast by stride 0) and into non-contiguous outputs,
//! whose surroundings must stay untouched. Inputs are random with a fixed seed, rounded to
//! the dtype before the reference sees them, and chosen per op to be well conditioned.
//! On top of the ops it checks the contract itself: validation errors, buffers of another
//! device, views past the end of a buffer, out-of-range index values (whose error may be
//! deferred to the next `read` or `synchronize`), and the byte-level `write`/`read`/`copy`.
//!
//! A device that errs, returns garbage or panics is reported, never a panic of the kit.
//!
//! # Tolerances
//!
//! An element passes when `|got − ref| ≤ rtol·|ref| + atol·scale + 2.4e-7·spread + floor`,
//! where `scale` is the magnitude of what was computed (`|a|+|b|` for an add, `|x|` for
//! GELU/SiLU, `√Σterm²` for sums), `spread = √k·Σ|term|` for an accumulation of `k` terms
//! (matmul, sum, mean, softmax, index_add, scatter_add; f32 accumulation), and `floor` the
//! smallest normal of the output dtype:
//!
//! | dtype | rtol   | atol |
//! |-------|--------|------|
//! | f32   | 1e-5   | 1e-6 |
//! | f16   | 2e-3   | 1e-3 |
//! | bf16  | 1.6e-2 | 1e-2 |
//!
//! Integer results, comparisons, casts, data movement, fills, max/min/argmax and
//! neg/abs/relu must be exact.
//!
//! # For a backend's tests
//!
//! ```
//! use manychips::Device;
//! use manychips::conformance::{self, Config};
//!
//! fn conformance_of(device: &dyn Device) {
//!     // Everything, large cases included.
//!     let report = conformance::check(device);
//!     println!("{report}");
//!     report.assert_ok();
//!
//!     // While debugging one op: a quick run of matmul only, another seed.
//!     let config = Config::quick().only("matmul").with_seed(7);
//!     let report = conformance::check_with(device, &config);
//!     for failure in report.failures() {
//!         eprintln!("{}: {}", failure.case, failure.problem);
//!     }
//! }
//! ```

mod case;
mod ops;
mod reference;
mod report;
mod runner;
mod tolerance;
mod values;

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::Device;

pub use report::{Failure, OpReport, Problem, Report, Skip};

/// Which sizes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sizes {
    /// Every op, dtype and edge case, without the large ones (rows of 65537, 256³ matmul).
    Quick,
    /// Everything.
    Full,
}

/// What [`check_with`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Seed of all random inputs. Each (op, dtype) pair derives its own generator from it,
    /// so a run restricted with [`Config::only`] reproduces the same inputs.
    pub seed: u64,
    pub sizes: Sizes,
    /// Run only ops whose name starts with one of these prefixes (`"unary."`, `"matmul"`,
    /// `"reduce.sum"`, `"contract."`, `"io."`); empty runs everything.
    pub ops: Vec<String>,
}

impl Default for Config {
    /// The full set with the default seed.
    fn default() -> Self {
        Config { seed: 0x6d61_6e79_6368_6970, sizes: Sizes::Full, ops: Vec::new() }
    }
}

impl Config {
    /// Everything, large cases included.
    pub fn full() -> Self {
        Config::default()
    }

    /// Every op, dtype and edge case without the large cases.
    pub fn quick() -> Self {
        Config { sizes: Sizes::Quick, ..Config::default() }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adds an op-name prefix to run (see [`Config::ops`]).
    pub fn only(mut self, prefix: impl Into<String>) -> Self {
        self.ops.push(prefix.into());
        self
    }

    /// True when the op (or check) named `op` runs under this configuration.
    pub fn selects(&self, op: &str) -> bool {
        self.ops.is_empty() || self.ops.iter().any(|p| op.starts_with(p.as_str()))
    }
}

/// Runs the full kit against `device`.
pub fn check(device: &dyn Device) -> Report {
    check_with(device, &Config::default())
}

/// Runs the kit against `device` as `config` says.
pub fn check_with(device: &dyn Device, config: &Config) -> Report {
    let name = catch_unwind(AssertUnwindSafe(|| {
        let info = device.info();
        format!("{} {:?}", info.label(), info.name)
    }));
    let Ok(name) = name else {
        let mut report = Report::new("?".into(), config.seed, config.sizes);
        let e = report.entry("contract.info", "-");
        e.cases = 1;
        e.failed = 1;
        e.failures.push(Failure {
            op: "contract.info".into(),
            dtype: "-".into(),
            case: "Device::info()".into(),
            problem: Problem::Panicked("info() panicked".into()),
        });
        return report;
    };
    let mut runner =
        runner::Runner::new(device, config, Report::new(name, config.seed, config.sizes));
    ops::run_all(&mut runner);
    runner.report
}
