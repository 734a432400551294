//! The device contract itself: byte-level write / read / copy, call ordering, buffers of
//! another device, unknown buffers, views past the end of a buffer, ops that fail
//! validation, dtypes the device does not claim, and `memory()`.

use crate::{BinaryOp, BufferId, DType, DeviceId, ErrorKind, Layout, Op, ReduceOp, UnaryOp, View};

use super::super::case::{Case, Operand, Output};
use super::super::reference::{Host, numel};
use super::super::report::Problem;
use super::super::runner::{Ctx, Runner, device, expect_kind};
use super::super::tolerance::Expected;
use super::super::values::encode;

pub(super) fn run(r: &mut Runner<'_>) {
    io(r);
    foreign_buffers(r);
    unknown_buffers(r);
    view_bounds(r);
    validation(r);
    unsupported_dtypes(r);
    memory(r);
}

/// A recognizable byte pattern.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed * 31 + 3) % 251) as u8).collect()
}

/// Ok when `got` equals `want`; otherwise the first differing byte (`base` is the byte
/// offset of `want[0]` in its buffer).
fn same_bytes(want: &[u8], got: &[u8], base: usize) -> Result<(), Problem> {
    let wrong = want.iter().zip(got).filter(|(a, b)| a != b).count();
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None if want.len() == got.len() => Ok(()),
        None => Err(Problem::Other(format!("read {} bytes, wanted {}", got.len(), want.len()))),
        Some(i) => Err(Problem::Mismatch {
            index: vec![base + i],
            expected: f64::from(want[i]),
            got: f64::from(got[i]),
            ratio: f64::INFINITY,
            wrong,
            total: want.len(),
        }),
    }
}

fn io(r: &mut Runner<'_>) {
    if r.begin("io.write_read", "-", &[]).is_some() {
        let what = "write 1031 bytes, rewrite 13 at byte 3, read all and 17 from byte 5";
        r.check("io.write_read", "-", what, |ctx| {
            let mut image = pattern(1031, 0);
            let buf = ctx.buffer(&image)?;
            let patch = pattern(13, 1);
            ctx.write(buf, 3, &patch)?;
            image[3..16].copy_from_slice(&patch);
            same_bytes(&image, &ctx.read(buf, 0, image.len())?, 0)?;
            same_bytes(&image[5..22], &ctx.read(buf, 5, 17)?, 5)
        });
    }
    if r.begin("io.copy", "-", &[]).is_some() {
        let what = "copy 301 bytes from byte 3 of A to byte 5 of B";
        r.check("io.copy", "-", what, |ctx| {
            let a = pattern(1031, 2);
            let mut b = pattern(517, 3);
            let (ba, bb) = (ctx.buffer(&a)?, ctx.buffer(&b)?);
            ctx.dev.copy(ba, 3, bb, 5, 301).map_err(|e| device("copy", e))?;
            b[5..306].copy_from_slice(&a[3..304]);
            same_bytes(&b, &ctx.read(bb, 0, b.len())?, 0)
        });
        let what = "copy 100 bytes from byte 0 to byte 600 of the same buffer";
        r.check("io.copy", "-", what, |ctx| {
            let mut a = pattern(1031, 4);
            let ba = ctx.buffer(&a)?;
            ctx.dev.copy(ba, 0, ba, 600, 100).map_err(|e| device("copy", e))?;
            a.copy_within(0..100, 600);
            same_bytes(&a, &ctx.read(ba, 0, a.len())?, 0)
        });
    }
    if r.begin("io.copy_to_peer", "-", &[]).is_some() {
        // The device as its own peer: the one pair every backend can be checked on alone.
        let what = "copy_to_peer 301 bytes from byte 3 of A to byte 5 of B, both this device's: \
                    copied where it says it reaches itself, untouched where it says no";
        r.check("io.copy_to_peer", "-", what, |ctx| {
            let a = pattern(1031, 7);
            let mut b = pattern(517, 8);
            let (ba, bb) = (ctx.buffer(&a)?, ctx.buffer(&b)?);
            let reaches = ctx.dev.reaches(ctx.dev);
            let copied = ctx
                .dev
                .copy_to_peer(ba, 3, ctx.dev, bb, 5, 301)
                .map_err(|e| device("copy_to_peer", e))?;
            if copied != reaches {
                return Err(Problem::Other(format!(
                    "copy_to_peer said {copied} where reaches said {reaches}"
                )));
            }
            if copied {
                b[5..306].copy_from_slice(&a[3..304]);
            }
            same_bytes(&b, &ctx.read(bb, 0, b.len())?, 0)
        });
    }
    if let Some(dtype) = r.first_claimed(&DType::ALL)
        && r.begin("io.ordering", dtype.name(), &[]).is_some()
    {
        let size = dtype.size_in_bytes();
        let what = format!("write, fill {dtype}[64] with 1, write bytes 8..16, read");
        r.check("io.ordering", dtype.name(), what, |ctx| {
            let buf = ctx.buffer(&pattern(64 * size, 5))?;
            let view = View::new(buf, Layout::contiguous([64]), dtype);
            ctx.run(&Op::Fill { out: view, value: 1.0 })?;
            let patch = pattern(8, 6);
            ctx.write(buf, 8, &patch)?;
            let mut want = encode(dtype, &[1.0; 64]);
            want[8..16].copy_from_slice(&patch);
            same_bytes(&want, &ctx.read(buf, 0, want.len())?, 0)
        });
    }
    if r.begin("io.bounds", "-", &[]).is_some() {
        let k = ErrorKind::InvalidArgument;
        r.check("io.bounds", "-", "write 8 bytes at byte 10 of a 16-byte buffer", |ctx| {
            let buf = ctx.buffer(&[0; 16])?;
            expect_kind("write", ctx.dev.write(buf, 10, &[1; 8]), k)
        });
        r.check("io.bounds", "-", "read 8 bytes at byte 12 of a 16-byte buffer", |ctx| {
            let buf = ctx.buffer(&[0; 16])?;
            expect_kind("read", ctx.dev.read(buf, 12, &mut [0; 8]), k)
        });
        r.check("io.bounds", "-", "copy 8 bytes to byte 10 of a 16-byte buffer", |ctx| {
            let (a, b) = (ctx.buffer(&[0; 16])?, ctx.buffer(&[0; 16])?);
            expect_kind("copy", ctx.dev.copy(a, 0, b, 10, 8), k)
        });
    }
}

/// A buffer id of a device that does not exist.
fn foreign() -> BufferId {
    BufferId { device: DeviceId::fresh(), index: 0 }
}

fn foreign_buffers(r: &mut Runner<'_>) {
    if r.begin("contract.device_mismatch", "-", &[]).is_none() {
        return;
    }
    let k = ErrorKind::DeviceMismatch;
    let op = "contract.device_mismatch";
    r.check(op, "-", "write to a buffer of another device", |ctx| {
        expect_kind("write", ctx.dev.write(foreign(), 0, &[0; 4]), k)
    });
    r.check(op, "-", "read from a buffer of another device", |ctx| {
        expect_kind("read", ctx.dev.read(foreign(), 0, &mut [0; 4]), k)
    });
    r.check(op, "-", "free a buffer of another device", |ctx| {
        expect_kind("free", ctx.dev.free(foreign()), k)
    });
    r.check(op, "-", "copy into a buffer of another device", |ctx| {
        let own = ctx.buffer(&[0; 16])?;
        expect_kind("copy", ctx.dev.copy(own, 0, foreign(), 0, 4), k)
    });
    let Some(dtype) = r.first_claimed(&DType::ALL) else { return };
    let what = format!("fill a {dtype}[4] view of a buffer of another device");
    r.check(op, "-", what, |ctx| {
        let out = View::new(foreign(), Layout::contiguous([4]), dtype);
        expect_kind("run", ctx.dev.run(&Op::Fill { out, value: 0.0 }), k)
    });
    let what = format!("copy a {dtype}[4] view of a buffer of another device into an own one");
    r.check(op, "-", what, |ctx| {
        let own = ctx.buffer(&vec![0; 4 * dtype.size_in_bytes()])?;
        let input = View::new(foreign(), Layout::contiguous([4]), dtype);
        let out = View::new(own, Layout::contiguous([4]), dtype);
        expect_kind("run", ctx.dev.run(&Op::Copy { input, out }), k)
    });
}

fn unknown_buffers(r: &mut Runner<'_>) {
    if r.begin("contract.unknown_buffer", "-", &[]).is_none() {
        return;
    }
    let k = ErrorKind::InvalidArgument;
    r.check("contract.unknown_buffer", "-", "read from a freed buffer", |ctx| {
        let buf = ctx.buffer(&[0; 16])?;
        ctx.forget(buf);
        ctx.dev.free(buf).map_err(|e| device("free", e))?;
        expect_kind("read", ctx.dev.read(buf, 0, &mut [0; 4]), k)
    });
    r.check("contract.unknown_buffer", "-", "read from a never allocated buffer id", |ctx| {
        let buf = BufferId { device: ctx.dev.info().id, index: u64::MAX - 1 };
        expect_kind("read", ctx.dev.read(buf, 0, &mut [0; 4]), k)
    });
}

/// Runs `op` built on a 16-byte buffer that the views overrun.
fn overrun(ctx: &mut Ctx<'_>, op: impl Fn(BufferId, BufferId) -> Op) -> Result<(), Problem> {
    let small = ctx.buffer(&[0; 16])?;
    let big = ctx.buffer(&[0; 1024])?;
    expect_kind("run", ctx.dev.run(&op(small, big)), ErrorKind::InvalidArgument)
}

fn view_bounds(r: &mut Runner<'_>) {
    let Some(dtype) = r.first_claimed(&DType::ALL) else { return };
    let op = "contract.view_bounds";
    if r.begin(op, dtype.name(), &[]).is_none() {
        return;
    }
    let n = 16 / dtype.size_in_bytes() + 3;
    let past = Layout::contiguous([n]);
    let mut offset = Layout::contiguous([2]);
    offset.offset = 100;
    let what = format!("fill a {dtype}{past} view of a 16-byte buffer");
    let l = past.clone();
    r.check(op, dtype.name(), what, |ctx| {
        overrun(ctx, |small, _| Op::Fill { out: View::new(small, l.clone(), dtype), value: 0.0 })
    });
    let what = format!("fill a {dtype}{offset} view of a 16-byte buffer");
    r.check(op, dtype.name(), what, |ctx| {
        overrun(ctx, |small, _| Op::Fill {
            out: View::new(small, offset.clone(), dtype),
            value: 0.0,
        })
    });
    let what = format!("copy from a {dtype}{past} view of a 16-byte buffer");
    r.check(op, dtype.name(), what, |ctx| {
        overrun(ctx, |small, big| Op::Copy {
            input: View::new(small, past.clone(), dtype),
            out: View::new(big, past.clone(), dtype),
        })
    });
}

/// A case whose inputs are zeros of the given shapes (the op is refused before it reads
/// them); `build` may ignore or reshape the views to break the contract.
fn refused(
    inputs: &[(DType, &[usize])],
    out: (DType, &[usize]),
    build: impl Fn(&[View], View) -> Op + 'static,
) -> Case {
    let inputs = inputs
        .iter()
        .map(|&(d, dims)| Operand::new(d, Host::new(dims, vec![0.0; numel(dims)])))
        .collect();
    Case::new(inputs, Output::new(out.0, out.1), Expected::exact(Vec::new()), build)
}

fn validation(r: &mut Runner<'_>) {
    let op = "contract.validate";
    let Some(f) = r.first_claimed(&DType::FLOATS) else { return };
    if r.begin(op, f.name(), &[]).is_none() {
        return;
    }
    let name = f.name();
    let shape = ErrorKind::Shape;
    let case = refused(&[(f, &[3, 4]), (f, &[5, 2])], (f, &[3, 2]), |v, out| Op::Matmul {
        lhs: v[0].clone(),
        rhs: v[1].clone(),
        out,
    });
    r.run_failing(op, name, case, shape, false);
    let case = refused(&[(f, &[3]), (f, &[4])], (f, &[3]), |v, out| Op::Binary {
        op: BinaryOp::Add,
        lhs: v[0].clone(),
        rhs: v[1].clone(),
        out,
    });
    r.run_failing(op, name, case, shape, false);
    if let Some(&g) = DType::FLOATS.iter().find(|&&g| g != f && r.claims(g)) {
        let case = refused(&[(f, &[3]), (g, &[3])], (f, &[3]), |v, out| Op::Binary {
            op: BinaryOp::Mul,
            lhs: v[0].clone(),
            rhs: v[1].clone(),
            out,
        });
        r.run_failing(op, name, case, ErrorKind::DType, false);
    }
    if r.claims(DType::U8) {
        let u8 = DType::U8;
        let case = refused(&[(u8, &[3])], (u8, &[3]), |v, out| Op::Unary {
            op: UnaryOp::Exp,
            input: v[0].clone(),
            out,
        });
        r.run_failing(op, name, case, ErrorKind::UnsupportedDType, false);
    }
    let case = refused(&[(f, &[3, 0])], (f, &[3, 1]), |v, out| Op::Reduce {
        op: ReduceOp::Max,
        input: v[0].clone(),
        out,
        axis: 1,
    });
    r.run_failing(op, name, case, ErrorKind::InvalidArgument, false);
    let case = refused(&[(f, &[3, 4])], (f, &[3, 4]), |v, out| Op::Softmax {
        input: v[0].clone(),
        out,
        axis: 2,
        log: false,
    });
    r.run_failing(op, name, case, ErrorKind::IndexOutOfRange, false);
    // The output is the input's buffer.
    let case = refused(&[(f, &[4])], (f, &[4]), |v, _| Op::Unary {
        op: UnaryOp::Neg,
        input: v[0].clone(),
        out: v[0].clone(),
    });
    r.run_failing(op, name, case, ErrorKind::InvalidArgument, false);
    // An output that writes one element four times (stride 0).
    let case = refused(&[(f, &[4])], (f, &[4]), |v, mut out| {
        out.layout.strides = vec![0];
        Op::Unary { op: UnaryOp::Neg, input: v[0].clone(), out }
    });
    r.run_failing(op, name, case, ErrorKind::InvalidArgument, false);
    if r.claims(DType::U32) {
        // Float indices.
        let case = refused(&[(f, &[4]), (f, &[2])], (f, &[2]), |v, out| Op::Gather {
            input: v[0].clone(),
            indices: v[1].clone(),
            out,
            axis: 0,
        });
        r.run_failing(op, name, case, ErrorKind::DType, false);
    }
}

/// Every dtype the device does not claim must be refused with `UnsupportedDType`.
fn unsupported_dtypes(r: &mut Runner<'_>) {
    let op = "contract.unsupported_dtype";
    for dtype in DType::ALL {
        if r.claims(dtype) || r.begin(op, dtype.name(), &[]).is_none() {
            continue;
        }
        let case =
            Case::new(vec![], Output::new(dtype, &[4]), Expected::exact(vec![]), |_, out| {
                Op::Fill { out, value: 1.0 }
            });
        r.run_failing(op, dtype.name(), case, ErrorKind::UnsupportedDType, false);
    }
}

fn memory(r: &mut Runner<'_>) {
    if r.begin("contract.memory", "-", &[]).is_none() {
        return;
    }
    r.check("contract.memory", "-", "memory() reports free <= total", |ctx| {
        let m = ctx.dev.memory().map_err(|e| device("memory", e))?;
        if m.free <= m.total {
            Ok(())
        } else {
            Err(Problem::Other(format!("memory(): free {} > total {}", m.free, m.total)))
        }
    });
}
