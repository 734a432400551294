//! Runs cases on the device: uploads the operands in their dtype and placement, runs the op,
//! downloads the whole output buffer and compares it with the reference; records the
//! outcome in the report.
//!
//! Nothing here trusts the device: every call's error becomes a [`Problem`], a panic inside
//! the device is caught and reported, and every buffer a case allocates is freed afterwards.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{BufferId, DType, Device, DeviceId, ErrorKind, Op, View};

use super::Config;
use super::case::{Case, Operand, Output};
use super::reference::{for_each_index, unravel};
use super::report::{Failure, Problem, Report};
use super::tolerance::{Expected, Tolerance, Verdict, compare};
use super::values::{decode, encode, junk};

/// Junk elements after the end of every view's storage, to catch writes past the end.
const GUARD: usize = 7;

/// Drives one conformance run: selection, skips, seeds, and the report.
pub(crate) struct Runner<'d> {
    dev: &'d dyn Device,
    cfg: &'d Config,
    device_id: DeviceId,
    claimed: Vec<DType>,
    pub report: Report,
}

impl<'d> Runner<'d> {
    pub fn new(dev: &'d dyn Device, cfg: &'d Config, report: Report) -> Runner<'d> {
        let info = dev.info();
        Runner { dev, cfg, device_id: info.id, claimed: info.dtypes.clone(), report }
    }

    /// True for the full size set (large cases included).
    pub fn full(&self) -> bool {
        self.cfg.sizes == super::Sizes::Full
    }

    pub fn claims(&self, dtype: DType) -> bool {
        self.claimed.contains(&dtype)
    }

    /// The first of `dtypes` that the device claims.
    pub fn first_claimed(&self, dtypes: &[DType]) -> Option<DType> {
        dtypes.iter().copied().find(|&d| self.claims(d))
    }

    /// Starts the cases of one (op, dtype) pair: `None` when the configuration leaves the op
    /// out, or when the device lacks a dtype the cases need (`needs`: dtype and its role,
    /// recorded as a skip). Otherwise the pair's own random generator, seeded from the
    /// configured seed and the pair's name, so that a filtered rerun sees the same inputs.
    pub fn begin(&mut self, op: &str, dtype: &str, needs: &[(DType, &str)]) -> Option<ChaCha8Rng> {
        if !self.cfg.selects(op) {
            return None;
        }
        if let Some((missing, role)) = needs.iter().find(|(d, _)| !self.claims(*d)) {
            let role = if role.is_empty() { String::new() } else { format!(" ({role})") };
            let reason = format!("dtype {missing}{role} not in DeviceInfo::dtypes");
            self.report.skip(op, dtype, reason);
            return None;
        }
        Some(ChaCha8Rng::seed_from_u64(self.cfg.seed ^ fnv1a(&format!("{op}/{dtype}"))))
    }

    /// Runs one case and records it under (op, dtype).
    pub fn run_case(&mut self, op: &str, dtype: &str, case: Case) {
        let described = self.describe(&case);
        let mut ctx = Ctx::new(self.dev);
        let result = catch_unwind(AssertUnwindSafe(|| {
            // As in `check`: leave nothing pending for the next case.
            let outcome = execute(&mut ctx, &case);
            let synced = ctx.sync();
            outcome.and_then(|v| synced.map(|()| v))
        }));
        ctx.release();
        match flatten(result) {
            Ok((verdict, problem)) => self.record(op, dtype, described, Some(verdict), problem),
            Err(problem) => self.record(op, dtype, described, None, Some(problem)),
        }
    }

    /// Runs a hand-written check (`f` returns the problem it found) and records it.
    pub fn check(
        &mut self,
        op: &str,
        dtype: &str,
        what: impl Into<String>,
        f: impl FnOnce(&mut Ctx<'d>) -> Result<(), Problem>,
    ) {
        let mut ctx = Ctx::new(self.dev);
        let result = catch_unwind(AssertUnwindSafe(|| {
            // Synchronize even after a failure, so that no deferred error leaks into the
            // next case.
            let found = f(&mut ctx);
            let synced = ctx.sync();
            found.and(synced)
        }));
        ctx.release();
        let problem = flatten(result).err();
        self.record(op, dtype, what.into(), None, problem);
    }

    /// Runs a case whose op must fail with an error of `kind`: from `run` itself, or, when
    /// `deferrable` (errors that depend on data, such as index values), from the next
    /// `synchronize` or `read`.
    pub fn run_failing(
        &mut self,
        op: &str,
        dtype: &str,
        case: Case,
        kind: ErrorKind,
        deferrable: bool,
    ) {
        let described = self.describe(&case);
        self.check(op, dtype, described, |ctx| {
            let mut views = Vec::with_capacity(case.inputs.len());
            for operand in &case.inputs {
                views.push(ctx.upload(operand)?);
            }
            let out = ctx.output(&case.output)?;
            let op = (case.build)(&views, out.view.clone());
            let dev = ctx.dev;
            match dev.run(&op) {
                Err(e) => return expect_kind::<()>("run", Err(e), kind),
                Ok(()) if !deferrable => return expect_kind("run", Ok(()), kind),
                Ok(()) => {}
            }
            if let Err(e) = dev.synchronize() {
                return expect_kind::<()>("synchronize", Err(e), kind);
            }
            let mut bytes = vec![0; out.image.len()];
            let read = dev.read(out.view.buffer, 0, &mut bytes);
            expect_kind("run, synchronize and read", read, kind)
        });
    }

    /// The case's op with its operands' dtypes, shapes, strides and offsets.
    fn describe(&self, case: &Case) -> String {
        let fake = BufferId { device: self.device_id, index: u64::MAX };
        let view = |dtype, layout| View::new(fake, layout, dtype);
        let ins: Vec<View> = case
            .inputs
            .iter()
            .map(|o| match o.layouts() {
                Some((_, l, _)) => view(o.dtype, l),
                None => view(o.dtype, crate::Layout::contiguous(o.dims.clone())),
            })
            .collect();
        let (out, _) = case.output.place.layout(&case.output.dims);
        describe(&(case.build)(&ins, view(case.output.dtype, out)))
    }

    fn record(
        &mut self,
        op: &str,
        dtype: &str,
        case: String,
        verdict: Option<Verdict>,
        problem: Option<Problem>,
    ) {
        let e = self.report.entry(op, dtype);
        e.cases += 1;
        if let Some(v) = verdict {
            e.worst_ratio = e.worst_ratio.max(v.worst_ratio);
            e.worst_abs = e.worst_abs.max(v.worst_abs);
        }
        if let Some(problem) = problem {
            e.failed += 1;
            e.failures.push(Failure { op: op.into(), dtype: dtype.into(), case, problem });
        }
    }
}

/// `Op::describe` plus the op's parameters.
pub(crate) fn describe(op: &Op) -> String {
    let params = match op {
        Op::Reduce { axis, .. }
        | Op::Softmax { axis, .. }
        | Op::Concat { axis, .. }
        | Op::IndexSelect { axis, .. }
        | Op::Gather { axis, .. }
        | Op::IndexAdd { axis, .. }
        | Op::ScatterAdd { axis, .. }
        | Op::Scatter { axis, .. } => format!(" axis={axis}"),
        Op::ArgSort { axis, descending, .. } => format!(" axis={axis} descending={descending}"),
        Op::Affine { mul, add, .. } => format!(" mul={mul} add={add}"),
        Op::Fill { value, .. } => format!(" value={value}"),
        Op::Attention { scale, causal, .. } | Op::AttentionBackward { scale, causal, .. } => {
            format!(" scale={scale} causal={causal}")
        }
        _ => String::new(),
    };
    format!("{}{params}", op.describe())
}

type Outcome = Result<(Verdict, Option<Problem>), Problem>;

fn execute(ctx: &mut Ctx<'_>, case: &Case) -> Outcome {
    let mut views = Vec::with_capacity(case.inputs.len());
    for operand in &case.inputs {
        views.push(ctx.upload(operand)?);
    }
    let out = ctx.output(&case.output)?;
    let op = (case.build)(&views, out.view.clone());
    ctx.run(&op)?;
    ctx.sync()?;
    ctx.verify(&out, &case.expected)
}

fn flatten<T>(r: std::thread::Result<Result<T, Problem>>) -> Result<T, Problem> {
    match r {
        Ok(inner) => inner,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Err(Problem::Panicked(msg))
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// An output buffer: the view the op writes, and the bytes the whole buffer held before.
pub(crate) struct OutBuf {
    pub view: View,
    dims: Vec<usize>,
    pub image: Vec<u8>,
}

/// The device calls of one case, each turning an `Err` into a [`Problem`]; remembers every
/// buffer it allocated so that the runner frees them.
pub(crate) struct Ctx<'d> {
    pub dev: &'d dyn Device,
    buffers: Vec<BufferId>,
}

impl<'d> Ctx<'d> {
    fn new(dev: &'d dyn Device) -> Ctx<'d> {
        Ctx { dev, buffers: Vec::new() }
    }

    pub fn alloc(&mut self, bytes: usize) -> Result<BufferId, Problem> {
        let buf = self.dev.alloc(bytes).map_err(|e| device("alloc", e))?;
        self.buffers.push(buf);
        Ok(buf)
    }

    /// Stops tracking a buffer the check freed itself.
    pub fn forget(&mut self, buf: BufferId) {
        self.buffers.retain(|&b| b != buf);
    }

    pub fn write(&mut self, buf: BufferId, offset: usize, bytes: &[u8]) -> Result<(), Problem> {
        self.dev.write(buf, offset, bytes).map_err(|e| device("write", e))
    }

    pub fn read(&mut self, buf: BufferId, offset: usize, len: usize) -> Result<Vec<u8>, Problem> {
        let mut bytes = vec![0; len];
        self.dev.read(buf, offset, &mut bytes).map_err(|e| device("read", e))?;
        Ok(bytes)
    }

    pub fn run(&mut self, op: &Op) -> Result<(), Problem> {
        self.dev.run(op).map_err(|e| device("run", e))
    }

    pub fn sync(&mut self) -> Result<(), Problem> {
        self.dev.synchronize().map_err(|e| device("synchronize", e))
    }

    /// Allocates a buffer holding `bytes` and writes them.
    pub fn buffer(&mut self, bytes: &[u8]) -> Result<BufferId, Problem> {
        let buf = self.alloc(bytes.len())?;
        self.write(buf, 0, bytes)?;
        Ok(buf)
    }

    /// Stores an operand (junk around it) and returns its view.
    pub fn upload(&mut self, operand: &Operand) -> Result<View, Problem> {
        let (stored, view, len) = operand.layouts().ok_or_else(|| {
            Problem::Other(format!(
                "kit bug: {:?} does not broadcast to {:?}",
                operand.src.dims, operand.dims
            ))
        })?;
        let mut image = vec![junk(operand.dtype); len + GUARD];
        let mut values = operand.src.data.iter();
        for_each_index(&operand.src.dims, |idx| {
            if let (Some(slot), Some(&v)) = (image.get_mut(stored.index_of(idx)), values.next()) {
                *slot = v;
            }
        });
        let buf = self.buffer(&encode(operand.dtype, &image))?;
        Ok(View::new(buf, view, operand.dtype))
    }

    /// Allocates an output (junk everywhere, or its initial values in the view).
    pub fn output(&mut self, out: &Output) -> Result<OutBuf, Problem> {
        let (layout, len) = out.place.layout(&out.dims);
        let mut image = vec![junk(out.dtype); len + GUARD];
        if let Some(init) = &out.init {
            let mut values = init.iter();
            for_each_index(&out.dims, |idx| {
                if let (Some(slot), Some(&v)) = (image.get_mut(layout.index_of(idx)), values.next())
                {
                    *slot = v;
                }
            });
        }
        let image = encode(out.dtype, &image);
        let buf = self.buffer(&image)?;
        Ok(OutBuf { view: View::new(buf, layout, out.dtype), dims: out.dims.clone(), image })
    }

    /// Reads the whole output buffer back: compares the view with the reference and checks
    /// that nothing outside the view changed.
    pub fn verify(&mut self, out: &OutBuf, expected: &Expected) -> Outcome {
        let dtype = out.view.dtype;
        let size = dtype.size_in_bytes();
        let bytes = self.read(out.view.buffer, 0, out.image.len())?;
        let all = decode(dtype, &bytes);
        let mut inside = vec![false; all.len()];
        let mut got = Vec::with_capacity(expected.values.len());
        for_each_index(&out.dims, |idx| {
            let at = out.view.layout.index_of(idx);
            if let Some(flag) = inside.get_mut(at) {
                *flag = true;
            }
            got.push(all.get(at).copied().unwrap_or(f64::NAN));
        });
        let verdict = compare(expected, &got, &Tolerance::of(dtype));
        if let Some(miss) = &verdict.first {
            let problem = Problem::Mismatch {
                index: unravel(miss.flat, &out.dims),
                expected: miss.expected,
                got: miss.got,
                ratio: miss.ratio,
                wrong: verdict.wrong,
                total: expected.values.len(),
            };
            return Ok((verdict, Some(problem)));
        }
        let before = decode(dtype, &out.image);
        let changed: Vec<usize> = (0..all.len())
            .filter(|&i| {
                !inside[i] && bytes[i * size..(i + 1) * size] != out.image[i * size..(i + 1) * size]
            })
            .collect();
        if let Some(&first) = changed.first() {
            let problem = Problem::Clobbered {
                element: first,
                expected: before[first],
                got: all[first],
                wrong: changed.len(),
            };
            return Ok((verdict, Some(problem)));
        }
        Ok((verdict, None))
    }

    /// Frees every buffer of the case; a device that fails or panics here is not the case's
    /// concern (`contract.unknown_buffer` checks `free` itself).
    fn release(&mut self) {
        for buf in self.buffers.drain(..) {
            let dev = self.dev;
            let _ = catch_unwind(AssertUnwindSafe(|| dev.free(buf)));
        }
    }
}

pub(crate) fn device(call: &str, error: crate::Error) -> Problem {
    Problem::Device { call: call.into(), error }
}

/// Ok when `result` is an `Err` of kind `kind`; the problem otherwise.
pub(crate) fn expect_kind<T>(
    call: &str,
    result: crate::Result<T>,
    kind: ErrorKind,
) -> Result<(), Problem> {
    match result {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(Problem::WrongError { call: call.into(), expected: kind, got: Some(e) }),
        Ok(_) => Err(Problem::WrongError { call: call.into(), expected: kind, got: None }),
    }
}
