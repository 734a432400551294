// The conformance kit against the CPU device, and proof that the kit catches broken devices:
// wrappers around a CPU device that compute the wrong op, swap operands, skip an output,
// ignore strides, swallow deferred errors, panic, claim fewer dtypes; and a device that
// answers garbage to everything.
//
// `cargo test --release --test conformance -- --nocapture` prints the CPU device's table.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use manychips::conformance::{self, Config, Problem, Report};
use manychips::{
    BinaryOp, BufferId, CpuDevice, DType, Device, DeviceId, DeviceInfo, Error, ErrorKind, Identity,
    Layout, MemoryInfo, Op, Result, UnaryOp, View,
};

fn cpu() -> CpuDevice {
    CpuDevice::new().expect("the CPU device starts")
}

#[test]
fn cpu_device_conforms() {
    let device = cpu();
    let start = Instant::now();
    let report = conformance::check(&device);
    let took = start.elapsed();
    println!("{report}");
    println!("full conformance kit on the CPU device: {took:.2?}");
    report.assert_ok();
    assert!(report.cases() > 2000, "only {} cases ran", report.cases());
    // Every op family ran in every dtype the CPU device claims.
    for (op, dtype) in [
        ("matmul", "bf16"),
        ("unary.gelu_erf", "f16"),
        ("binary.pow", "f32"),
        ("compare.le", "u8"),
        ("reduce.argmax", "bf16"),
        ("log_softmax", "f16"),
        ("cast", "bf16->u8"),
        ("concat", "u32"),
        ("scatter_add", "f32"),
        ("where", "u8"),
        ("contract.validate", "f32"),
    ] {
        let entry = report.op(op, dtype).unwrap_or_else(|| panic!("{op} {dtype} did not run"));
        assert!(entry.cases > 0);
    }
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
}

/// How a [`Wrapped`] device misbehaves.
#[derive(Debug)]
enum Flaw {
    /// Runs a different op (or none, for `None`) in place of some ops.
    Rewrite(fn(&Op) -> Option<Op>),
    /// Claims and accepts only these dtypes; refuses the others like a correct device.
    Claims(Vec<DType>),
    /// `synchronize` and `read` swallow index errors of the queued work.
    SwallowsIndexErrors,
    /// `run` panics on the first op that matches.
    PanicsOnce(fn(&Op) -> bool, AtomicBool),
}

/// A CPU device with one flaw.
#[derive(Debug)]
struct Wrapped {
    inner: CpuDevice,
    info: DeviceInfo,
    flaw: Flaw,
}

impl Wrapped {
    fn new(flaw_name: &'static str, flaw: Flaw) -> Wrapped {
        let inner = cpu();
        let mut info = inner.info().clone();
        info.name = format!("CPU with a flaw: {flaw_name}");
        if let Flaw::Claims(dtypes) = &flaw {
            info.dtypes = dtypes.clone();
        }
        Wrapped { inner, info, flaw }
    }

    fn swallow(&self, r: Result<()>) -> Result<()> {
        match (&self.flaw, r) {
            (Flaw::SwallowsIndexErrors, Err(e)) if e.kind() == ErrorKind::IndexOutOfRange => Ok(()),
            (_, r) => r,
        }
    }
}

impl Device for Wrapped {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn memory(&self) -> Result<MemoryInfo> {
        self.inner.memory()
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.inner.alloc(bytes)
    }
    fn free(&self, buffer: BufferId) -> Result<()> {
        self.inner.free(buffer)
    }
    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        let r = self.inner.read(src, offset, dst);
        self.swallow(r)
    }
    fn copy(&self, src: BufferId, so: usize, dst: BufferId, d: usize, bytes: usize) -> Result<()> {
        self.inner.copy(src, so, dst, d, bytes)
    }
    fn run(&self, op: &Op) -> Result<()> {
        match &self.flaw {
            Flaw::Rewrite(rewrite) => match rewrite(op) {
                Some(other) => self.inner.run(&other),
                None => op.validate(&self.info.label()),
            },
            Flaw::Claims(dtypes) => {
                let views = op.inputs().into_iter().chain([op.output()]);
                if let Some(v) = views.into_iter().find(|v| !dtypes.contains(&v.dtype)) {
                    return Err(Error::UnsupportedDType {
                        op: op.name(),
                        device: self.info.label(),
                        dtype: v.dtype,
                        detail: String::new(),
                    });
                }
                self.inner.run(op)
            }
            Flaw::PanicsOnce(bad, done) if bad(op) && !done.swap(true, Ordering::Relaxed) => {
                panic!("this device cannot {} (a deliberate panic of the test)", op.name())
            }
            _ => self.inner.run(op),
        }
    }
    fn synchronize(&self) -> Result<()> {
        let r = self.inner.synchronize();
        self.swallow(r)
    }
}

fn failed(report: &Report) -> BTreeSet<String> {
    report.failed_ops().into_iter().map(str::to_string).collect()
}

/// The ops that fail on the plain CPU device in the quick set (none, once it conforms), so
/// that the flaw tests below see only what their flaw adds.
fn baseline() -> &'static BTreeSet<String> {
    static BASELINE: OnceLock<BTreeSet<String>> = OnceLock::new();
    BASELINE.get_or_init(|| failed(&conformance::check_with(&cpu(), &Config::quick())))
}

/// The ops that fail on `device` in the quick set and not on the plain CPU device.
fn added_failures(report: &Report) -> BTreeSet<String> {
    failed(report).difference(baseline()).cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn quick(device: &dyn Device) -> Report {
    let report = conformance::check_with(device, &Config::quick());
    for f in report.failures().iter().take(3) {
        println!("  [{} {}] {}\n      {}", f.op, f.dtype, f.case, f.problem);
    }
    report
}

#[test]
fn a_wrong_unary_op_fails_exactly_that_op() {
    let exp_as_sigmoid = |op: &Op| match op {
        Op::Unary { op: UnaryOp::Exp, input, out } => {
            Some(Op::Unary { op: UnaryOp::Sigmoid, input: input.clone(), out: out.clone() })
        }
        other => Some(other.clone()),
    };
    let device = Wrapped::new("exp runs as sigmoid", Flaw::Rewrite(exp_as_sigmoid));
    let report = quick(&device);
    // Fused programs that use exp disagree with their decomposition, which runs it.
    assert_eq!(added_failures(&report), set(&["fused", "unary.exp"]));
    for dtype in ["f32", "f16", "bf16"] {
        let entry = report.op("unary.exp", dtype).expect("unary.exp ran");
        // Every case with at least one element fails.
        assert!(entry.failed >= entry.cases - 3, "{dtype}: {} of {}", entry.failed, entry.cases);
        assert!(entry.worst_ratio > 10.0, "{dtype}: worst {}", entry.worst_ratio);
    }
    let failures = report.failures();
    let first = failures.iter().find(|f| f.op == "unary.exp").expect("unary.exp failed");
    assert!(matches!(first.problem, Problem::Mismatch { .. }), "{}", first.problem);
    assert!(first.case.starts_with("unary.exp("), "{}", first.case);
    // The table names the failing op.
    assert!(report.to_string().contains("unary.exp"));
}

#[test]
fn swapped_operands_fail_exactly_that_op() {
    let sub_swapped = |op: &Op| match op {
        Op::Binary { op: BinaryOp::Sub, lhs, rhs, out } => Some(Op::Binary {
            op: BinaryOp::Sub,
            lhs: rhs.clone(),
            rhs: lhs.clone(),
            out: out.clone(),
        }),
        other => Some(other.clone()),
    };
    let device = Wrapped::new("sub swaps its operands", Flaw::Rewrite(sub_swapped));
    // Fused programs that subtract disagree with their decomposition, which runs sub.
    assert_eq!(added_failures(&quick(&device)), set(&["binary.sub", "fused"]));
}

#[test]
fn an_unwritten_output_fails_exactly_that_op() {
    let where_skipped = |op: &Op| match op {
        Op::Where { .. } => None,
        other => Some(other.clone()),
    };
    let device = Wrapped::new("where writes nothing", Flaw::Rewrite(where_skipped));
    assert_eq!(added_failures(&quick(&device)), set(&["where"]));
}

/// The view as if it were contiguous from the start of its buffer.
fn contiguous(v: &View) -> View {
    View::new(v.buffer, Layout::contiguous(v.layout.shape.clone()), v.dtype)
}

#[test]
fn ignored_input_strides_are_caught() {
    let assumes_contiguous = |op: &Op| match op {
        Op::Unary { op, input, out } => {
            Some(Op::Unary { op: *op, input: contiguous(input), out: out.clone() })
        }
        Op::Matmul { lhs, rhs, out } => {
            Some(Op::Matmul { lhs: contiguous(lhs), rhs: contiguous(rhs), out: out.clone() })
        }
        other => Some(other.clone()),
    };
    let device = Wrapped::new(
        "unary and matmul assume contiguous inputs",
        Flaw::Rewrite(assumes_contiguous),
    );
    let report = quick(&device);
    let failed = added_failures(&report);
    assert!(failed.contains("matmul"), "{failed:?}");
    assert!(failed.iter().filter(|op| op.starts_with("unary.")).count() == UnaryOp::ALL.len());
    // And fused programs, whose decomposition hands strided inputs to unary ops.
    let expected = |op: &String| op == "matmul" || op == "fused" || op.starts_with("unary.");
    assert!(failed.iter().all(expected), "{failed:?}");
    // Contiguous cases still pass: the kit separates layouts from arithmetic.
    let matmul = report.op("matmul", "f32").expect("matmul ran");
    assert!(matmul.failed < matmul.cases, "{} of {}", matmul.failed, matmul.cases);
}

#[test]
fn swallowed_index_errors_are_caught() {
    let device = Wrapped::new("out-of-range indices pass silently", Flaw::SwallowsIndexErrors);
    let report = quick(&device);
    let index_ops = set(&[
        "gather",
        "index_add",
        "index_select",
        "scatter_add",
        "scatter.assign",
        "scatter.sum",
        "scatter.prod",
        "scatter.max",
        "scatter.min",
    ]);
    assert_eq!(added_failures(&report), index_ops);
    for f in report.failures().into_iter().filter(|f| index_ops.contains(&f.op)) {
        let Problem::WrongError { expected, got: None, .. } = &f.problem else {
            panic!("unexpected problem {}", f.problem);
        };
        assert_eq!(*expected, ErrorKind::IndexOutOfRange);
    }
}

#[test]
fn a_panicking_device_is_reported_not_fatal() {
    let softmax = |op: &Op| matches!(op, Op::Softmax { .. });
    let device = Wrapped::new("softmax panics", Flaw::PanicsOnce(softmax, AtomicBool::new(false)));
    let report = conformance::check_with(&device, &Config::quick().only("softmax"));
    assert_eq!(failed(&report), set(&["softmax"]));
    let failures = report.failures();
    assert_eq!(failures.len(), 1);
    assert!(matches!(&failures[0].problem, Problem::Panicked(m) if m.contains("cannot softmax")));
    // The next cases ran and passed.
    assert!(report.cases() > 10);
}

#[test]
fn fewer_claimed_dtypes_are_skipped_not_failed() {
    let device = Wrapped::new("f32 only", Flaw::Claims(vec![DType::F32]));
    let report = quick(&device);
    println!("{report}");
    report.assert_ok();
    let skipped = |op: &str, dtype: &str| {
        report.skipped.iter().find(|s| s.op == op && s.dtype == dtype).map(|s| s.reason.clone())
    };
    for dtype in ["f16", "bf16"] {
        let reason = skipped("matmul", dtype).expect("matmul skipped");
        assert_eq!(reason, format!("dtype {dtype} not in DeviceInfo::dtypes"));
    }
    assert!(skipped("copy", "u8").is_some());
    assert!(skipped("cast", "f32->u32").is_some());
    assert!(skipped("index_select", "f32").is_some_and(|r| r.contains("u32 (indices)")));
    assert!(skipped("where", "f32").is_some_and(|r| r.contains("u8 (condition)")));
    assert!(skipped("reduce.argmax", "f32").is_some());
    // Only f32 ran, apart from the checks that the other dtypes are refused.
    for entry in &report.ops {
        let refusal = entry.op == "contract.unsupported_dtype";
        assert!(
            refusal || matches!(entry.dtype.as_str(), "f32" | "f32->f32" | "-"),
            "{}",
            entry.dtype
        );
    }
    assert_eq!(
        report.ops.iter().filter(|e| e.op == "contract.unsupported_dtype").count(),
        DType::ALL.len() - 1
    );
}

#[test]
fn config_selects_ops_and_seeds() {
    let device = cpu();
    let report = conformance::check_with(&device, &Config::quick().only("matmul").with_seed(1));
    assert!(report.ops.iter().all(|e| e.op == "matmul"));
    assert_eq!(report.ops.len(), 3);
    report.assert_ok();
    // Quick leaves the large cases out.
    let full = conformance::check_with(&device, &Config::full().only("matmul"));
    assert!(full.cases() > report.cases());
}

/// A CPU device that counts its live buffers.
#[derive(Debug)]
struct Counting {
    inner: CpuDevice,
    live: AtomicI64,
}

impl Device for Counting {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn memory(&self) -> Result<MemoryInfo> {
        self.inner.memory()
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        let buf = self.inner.alloc(bytes)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(buf)
    }
    fn free(&self, buffer: BufferId) -> Result<()> {
        self.inner.free(buffer)?;
        self.live.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.read(src, offset, dst)
    }
    fn copy(&self, src: BufferId, so: usize, dst: BufferId, d: usize, bytes: usize) -> Result<()> {
        self.inner.copy(src, so, dst, d, bytes)
    }
    fn run(&self, op: &Op) -> Result<()> {
        self.inner.run(op)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}

#[test]
fn the_kit_frees_every_buffer_it_allocates() {
    let device = Counting { inner: cpu(), live: AtomicI64::new(0) };
    let report = conformance::check_with(&device, &Config::quick());
    assert!(report.cases() > 2000);
    assert_eq!(device.live.load(Ordering::Relaxed), 0);
}

/// A device that accepts everything and answers garbage: allocations succeed, writes vanish,
/// reads return 0xFF, memory() reports nonsense.
#[derive(Debug)]
struct Garbage {
    info: DeviceInfo,
    next: AtomicU64,
}

impl Garbage {
    fn new() -> Garbage {
        let info = DeviceInfo {
            id: DeviceId::fresh(),
            backend: "garbage".into(),
            ordinal: 0,
            name: "answers garbage".into(),
            vendor: "nobody".into(),
            driver_version: "0".into(),
            identity: Identity::default(),
            memory_total: 1 << 30,
            dtypes: DType::ALL.to_vec(),
            peer_copy: false,
        };
        Garbage { info, next: AtomicU64::new(0) }
    }
}

impl Device for Garbage {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn memory(&self) -> Result<MemoryInfo> {
        Ok(MemoryInfo { total: 1, free: u64::MAX })
    }
    fn alloc(&self, _bytes: usize) -> Result<BufferId> {
        Ok(BufferId { device: self.info.id, index: self.next.fetch_add(1, Ordering::Relaxed) })
    }
    fn free(&self, _buffer: BufferId) -> Result<()> {
        Ok(())
    }
    fn write(&self, _dst: BufferId, _offset: usize, _src: &[u8]) -> Result<()> {
        Ok(())
    }
    fn read(&self, _src: BufferId, _offset: usize, dst: &mut [u8]) -> Result<()> {
        dst.fill(0xFF);
        Ok(())
    }
    fn copy(&self, _: BufferId, _: usize, _: BufferId, _: usize, _: usize) -> Result<()> {
        Err(Error::Fault { op: "copy".into(), device: "garbage".into(), detail: "no".into() })
    }
    fn run(&self, _op: &Op) -> Result<()> {
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_garbage_device_fails_everything_without_panicking() {
    let report = conformance::check_with(&Garbage::new(), &Config::quick());
    assert!(!report.is_ok());
    let failed = failed(&report);
    for op in ["matmul", "unary.exp", "copy", "io.copy", "contract.memory", "gather", "fill"] {
        assert!(failed.contains(op), "{op} passed on garbage");
    }
    // Every (op, dtype) pair has a case that a garbage device cannot pass.
    let passed: Vec<_> = report.ops.iter().filter(|e| e.failed == 0).map(|e| &e.op).collect();
    assert!(passed.is_empty(), "{passed:?}");
}
