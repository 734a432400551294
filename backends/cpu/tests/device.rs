//! The device contract: queueing, validation, deferred errors, threads, lifetimes.

mod common;

use std::sync::Arc;

use common::*;
use manychips_api::{DType, Device, ErrorKind, Layout, Op, ReduceOp, UnaryOp, View};
use manychips_cpu::CpuDevice;

#[test]
fn describes_itself() {
    let dev = device();
    let info = dev.info();
    assert_eq!(info.backend, "cpu");
    assert_eq!(info.label(), "cpu:0");
    assert_eq!(info.dtypes, DType::ALL.to_vec());
    assert!(info.driver_version.contains("4 threads"));
    assert!(info.identity.other.as_deref().is_some_and(|s| s.starts_with("cpu:")));
    let mem = dev.memory().unwrap();
    assert!(mem.total > 0 && mem.free <= mem.total);
    assert_ne!(CpuDevice::new().unwrap().info().id, info.id);
    assert!(CpuDevice::with_threads(0).is_err());
    assert!(format!("{dev:?}").contains("cpu:0"));
}

#[test]
fn queued_work_is_seen_by_a_later_read() {
    let dev = device();
    let n = 100_000;
    let x = upload(&dev, &convert::<f32>(&random(n, 1)));
    let y = dev.alloc(n * 4).unwrap();
    let z = dev.alloc(n * 4).unwrap();
    let (xv, yv, zv) = (
        contiguous(x, &[n], DType::F32),
        contiguous(y, &[n], DType::F32),
        contiguous(z, &[n], DType::F32),
    );
    // Each op depends on the one before; nothing waits in between.
    dev.run(&Op::Affine { input: xv.clone(), out: yv.clone(), mul: 2.0, add: 1.0 }).unwrap();
    dev.run(&Op::Affine { input: yv.clone(), out: zv.clone(), mul: 0.5, add: -0.5 }).unwrap();
    dev.write(x, 0, bytemuck::cast_slice(&[7.0f32])).unwrap();
    dev.run(&Op::Copy { input: zv, out: yv }).unwrap();
    let back: Vec<f32> = download(&dev, y, n);
    let xs: Vec<f32> = convert(&random(n, 1));
    for i in 0..n {
        assert!((back[i] - xs[i]).abs() < 1e-6, "{i}: {} vs {}", back[i], xs[i]);
    }
    let first: Vec<f32> = download(&dev, x, 1);
    assert_eq!(first[0], 7.0);
    dev.synchronize().unwrap();
}

#[test]
fn buffers_of_another_device_are_refused() {
    let a = device();
    let b = device();
    let buf = upload(&a, &[1.0f32, 2.0]);
    let mut out = [0u8; 8];
    assert_eq!(b.read(buf, 0, &mut out).unwrap_err().kind(), ErrorKind::DeviceMismatch);
    assert_eq!(b.free(buf).unwrap_err().kind(), ErrorKind::DeviceMismatch);
    let mine = b.alloc(8).unwrap();
    let op = Op::Copy {
        input: contiguous(buf, &[2], DType::F32),
        out: contiguous(mine, &[2], DType::F32),
    };
    let err = b.run(&op).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceMismatch);
    assert!(err.to_string().contains("copy"), "{err}");
    assert_eq!(b.copy(buf, 0, mine, 0, 4).unwrap_err().kind(), ErrorKind::DeviceMismatch);
}

#[test]
fn misuse_is_an_immediate_error() {
    let dev = device();
    let a = upload(&dev, &[1.0f32; 4]);
    let out = dev.alloc(16).unwrap();
    // A view past the end of its buffer.
    let op =
        Op::Copy { input: contiguous(a, &[5], DType::F32), out: contiguous(out, &[5], DType::F32) };
    assert_eq!(dev.run(&op).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // A view whose extent overflows usize.
    let huge = strided(a, &[2, 2], &[usize::MAX / 2, 1], 0, DType::F32);
    let op = Op::Copy { input: huge, out: contiguous(out, &[2, 2], DType::F32) };
    assert_eq!(dev.run(&op).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // Arithmetic on u8.
    let m = upload(&dev, &[1u8; 4]);
    let mo = dev.alloc(4).unwrap();
    let op = Op::Unary {
        op: UnaryOp::Neg,
        input: contiguous(m, &[4], DType::U8),
        out: contiguous(mo, &[4], DType::U8),
    };
    assert_eq!(dev.run(&op).unwrap_err().kind(), ErrorKind::UnsupportedDType);
    // Reads and writes outside a buffer, freed buffers, double frees.
    assert_eq!(dev.write(a, 12, &[0u8; 8]).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        dev.read(a, usize::MAX, &mut [0u8; 2]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    dev.free(a).unwrap();
    assert_eq!(dev.free(a).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(dev.read(a, 0, &mut [0u8; 4]).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // None of that left a deferred error behind.
    dev.synchronize().unwrap();
    assert_eq!(dev.alloc(usize::MAX).unwrap_err().kind(), ErrorKind::OutOfMemory);
}

#[test]
fn index_out_of_range_surfaces_at_synchronize() {
    let dev = device();
    let table = upload(&dev, &convert::<f32>(&random(12, 2)));
    let idx = upload(&dev, &[0u32, 3, 7, 1]);
    let out = dev.alloc(4 * 3 * 4).unwrap();
    let op = Op::IndexSelect {
        input: contiguous(table, &[4, 3], DType::F32),
        indices: contiguous(idx, &[4], DType::U32),
        out: contiguous(out, &[4, 3], DType::F32),
        axis: 0,
    };
    dev.run(&op).unwrap();
    let err = dev.synchronize().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::IndexOutOfRange);
    let msg = err.to_string();
    assert!(
        msg.contains("index_select")
            && msg.contains("cpu:0")
            && msg.contains('7')
            && msg.contains("length 4"),
        "{msg}"
    );
    // Reported once; the device carries on, and in-range rows were still gathered.
    dev.synchronize().unwrap();
    let got: Vec<f32> = download(&dev, out, 12);
    let t: Vec<f32> = convert(&random(12, 2));
    assert_eq!(&got[3..6], &t[9..12]);
    assert_eq!(&got[6..9], &[0.0; 3]);

    // Gather, and a read (rather than synchronize) picking the error up.
    let gi = upload(&dev, &[0u32, 2, 9, 1, 0, 0]);
    let gout = dev.alloc(6 * 4).unwrap();
    let op = Op::Gather {
        input: contiguous(table, &[4, 3], DType::F32),
        indices: contiguous(gi, &[2, 3], DType::U32),
        out: contiguous(gout, &[2, 3], DType::F32),
        axis: 1,
    };
    dev.run(&op).unwrap();
    let mut sink = [0u8; 4];
    assert_eq!(dev.read(gout, 0, &mut sink).unwrap_err().kind(), ErrorKind::IndexOutOfRange);
    dev.read(gout, 0, &mut sink).unwrap();
}

#[test]
fn zero_size_ops_are_no_ops() {
    let dev = device();
    let empty = dev.alloc(0).unwrap();
    dev.write(empty, 0, &[]).unwrap();
    dev.read(empty, 0, &mut []).unwrap();
    let e = |dims: &[usize]| contiguous(empty, dims, DType::F32);
    dev.run(&Op::Unary { op: UnaryOp::Exp, input: e(&[0, 3]), out: e(&[0, 3]) }).unwrap();
    dev.run(&Op::Matmul { lhs: e(&[0, 4]), rhs: e(&[4, 0]), out: e(&[0, 0]) }).unwrap();
    dev.run(&Op::Softmax { input: e(&[3, 0]), out: e(&[3, 0]), axis: 1, log: false }).unwrap();
    dev.run(&Op::Fill { out: e(&[5, 0]), value: 1.0 }).unwrap();
    // Reductions over an empty axis: sum 0, mean NaN; matmul with k = 0 gives zeros.
    let out = upload(&dev, &[9.0f32; 6]);
    let o = |off: usize| strided(out, &[2, 1], &[1, 1], off, DType::F32);
    dev.run(&Op::Reduce { op: ReduceOp::Sum, input: e(&[2, 0]), out: o(0), axis: 1 }).unwrap();
    dev.run(&Op::Reduce { op: ReduceOp::Mean, input: e(&[2, 0]), out: o(2), axis: 1 }).unwrap();
    dev.run(&Op::Matmul {
        lhs: e(&[1, 0]),
        rhs: e(&[0, 2]),
        out: strided(out, &[1, 2], &[2, 1], 4, DType::F32),
    })
    .unwrap();
    let got: Vec<f32> = download(&dev, out, 6);
    assert_eq!(&got[..2], &[0.0, 0.0]);
    assert!(got[2].is_nan() && got[3].is_nan());
    assert_eq!(&got[4..], &[0.0, 0.0]);
    dev.synchronize().unwrap();
    dev.free(empty).unwrap();
}

#[test]
fn two_threads_share_one_device() {
    let dev = Arc::new(device());
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for round in 0..50 {
                    let n = 1000 + round * 7;
                    let data: Vec<f32> = (0..n).map(|i| (i + t * 100_000) as f32).collect();
                    let a = upload(&dev, &data);
                    let b = dev.alloc(n * 4).unwrap();
                    let view = |buf| View::new(buf, Layout::contiguous([n]), DType::F32);
                    dev.run(&Op::Affine { input: view(a), out: view(b), mul: 1.0, add: 1.0 })
                        .unwrap();
                    let got: Vec<f32> = download(&dev, b, n);
                    assert!(
                        got.iter().zip(&data).all(|(g, d)| *g == d + 1.0),
                        "thread {t} round {round}"
                    );
                    dev.free(a).unwrap();
                    dev.free(b).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    dev.synchronize().unwrap();
}

#[test]
fn copies_between_buffers_and_within_one() {
    let dev = device();
    let a = upload(&dev, &[1u8, 2, 3, 4, 5, 6, 7, 8]);
    let b = dev.alloc(8).unwrap();
    dev.copy(a, 2, b, 0, 4).unwrap();
    dev.copy(a, 0, a, 1, 7).unwrap(); // overlapping, within one buffer
    assert_eq!(download::<u8>(&dev, b, 4), vec![3, 4, 5, 6]);
    assert_eq!(download::<u8>(&dev, a, 8), vec![1, 1, 2, 3, 4, 5, 6, 7]);
    // Freed storage is recycled for the next buffer of the same size.
    dev.free(b).unwrap();
    let c = dev.alloc(8).unwrap();
    dev.write(c, 0, &[9; 8]).unwrap();
    assert_eq!(download::<u8>(&dev, c, 8), vec![9; 8]);
}
