// The conformance kit on every wgpu adapter: the whole kit with the device's own matmul
// kernel, then matmul alone with each of the three kernels. With `CI` set, finding no
// adapter fails the test; elsewhere it prints what it skipped and why.
//
// `cargo test --release --test wgpu -- --nocapture` prints the tables.

#![cfg(feature = "wgpu")]

use std::time::Instant;

use manychips::Device;
use manychips::conformance::{self, Config};
use manychips_wgpu::{MatmulKernel, WgpuDevice};

fn devices() -> Vec<WgpuDevice> {
    match manychips_wgpu::discover() {
        Ok(devices) => devices,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but no wgpu adapter: {e}");
            println!("skipped: no wgpu device here ({e})");
            Vec::new()
        }
    }
}

#[test]
fn every_wgpu_device_conforms() {
    for device in devices() {
        let start = Instant::now();
        let report = conformance::check(&device);
        println!("{report}");
        println!("{}: full kit in {:.2?}", device.info().label(), start.elapsed());
        report.assert_ok();
    }
}

#[test]
fn every_matmul_kernel_conforms() {
    for device in devices() {
        for kernel in
            [MatmulKernel::Naive, MatmulKernel::RegisterBlocked, MatmulKernel::SharedTiles]
        {
            device.set_matmul_kernel(kernel);
            let report = conformance::check_with(&device, &Config::full().only("matmul"));
            println!("{kernel:?}:\n{report}");
            report.assert_ok();
        }
    }
}

/// Packed outputs (f16, u8) written at odd element offsets leave their neighbours alone.
#[test]
fn packed_outputs_keep_their_neighbours() {
    use manychips::{DType, Layout, Op, View};
    for device in devices() {
        for (dtype, len, offset) in [(DType::F16, 5, 3), (DType::U8, 6, 1), (DType::U8, 3, 2)] {
            let bytes = 16 * dtype.size_in_bytes();
            let buf = device.alloc(bytes).expect("alloc");
            device.write(buf, 0, &vec![0xAB; bytes]).expect("write");
            let mut layout = Layout::contiguous([len]);
            layout.offset = offset;
            let out = View::new(buf, layout, dtype);
            device.run(&Op::Fill { out, value: 1.0 }).expect("fill");
            let mut got = vec![0; bytes];
            device.read(buf, 0, &mut got).expect("read");
            let size = dtype.size_in_bytes();
            let one: &[u8] = if dtype == DType::F16 { &[0x00, 0x3c] } else { &[1] };
            for i in 0..16 {
                let elem = &got[i * size..(i + 1) * size];
                if (offset..offset + len).contains(&i) {
                    assert_eq!(elem, one, "{dtype} element {i}");
                } else {
                    assert!(elem.iter().all(|&b| b == 0xAB), "{dtype} element {i} was touched");
                }
            }
            device.free(buf).expect("free");
        }
    }
}

/// The vec4 elementwise kernel (every advancing operand 32-bit and on the vec4 grid): an
/// add, a multiply by a broadcast element, a bias row subtracted, a u32 → f32 cast and an
/// exp over an output view 4 elements into its buffer give the scalar answers, and the
/// elements around the view keep their bytes.
#[test]
fn aligned_vec4_elementwise_ops_match_and_touch_only_their_view() {
    use manychips::{BinaryOp, DType, Layout, Op, UnaryOp, View};
    let n = 4096 + 64;
    for device in devices() {
        let a: Vec<f32> = (0..n + 4).map(|i| (i % 97) as f32 * 0.25 - 7.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 89) as f32 * 0.5 + 1.0).collect();
        let u: Vec<u32> = (0..n).map(|i| (i * 7919 % 100_003) as u32).collect();
        let upload = |bytes: &[u8]| {
            let buf = device.alloc(bytes.len()).expect("alloc");
            device.write(buf, 0, bytes).expect("write");
            buf
        };
        let (ab, bb, ub) = (
            upload(bytemuck::cast_slice(&a)),
            upload(bytemuck::cast_slice(&b)),
            upload(bytemuck::cast_slice(&u)),
        );
        let two = upload(bytemuck::cast_slice(&[2.5f32]));
        let out = upload(&vec![0xAB; (n + 8) * 4]);
        let at = |buf, offset: usize, dtype| {
            let mut layout = Layout::contiguous([n / 64, 64]);
            layout.offset = offset;
            View::new(buf, layout, dtype)
        };
        let mut scalar = at(two, 0, DType::F32);
        scalar.layout.strides = vec![0, 0];
        // A bias row: the first 64 of `b`, repeated down the rows.
        let mut bias = at(bb, 0, DType::F32);
        bias.layout.strides = vec![0, 1];
        type Want<'a> = Box<dyn Fn(usize) -> f32 + 'a>;
        let cases: Vec<(Op, Want)> = vec![
            (
                Op::Binary {
                    op: BinaryOp::Add,
                    lhs: at(ab, 4, DType::F32),
                    rhs: at(bb, 0, DType::F32),
                    out: at(out, 4, DType::F32),
                },
                Box::new(|i| a[i + 4] + b[i]),
            ),
            (
                Op::Binary {
                    op: BinaryOp::Mul,
                    lhs: at(bb, 0, DType::F32),
                    rhs: scalar,
                    out: at(out, 4, DType::F32),
                },
                Box::new(|i| b[i] * 2.5),
            ),
            (
                Op::Binary {
                    op: BinaryOp::Sub,
                    lhs: at(ab, 0, DType::F32),
                    rhs: bias,
                    out: at(out, 4, DType::F32),
                },
                Box::new(|i| a[i] - b[i % 64]),
            ),
            (
                Op::Cast { input: at(ub, 0, DType::U32), out: at(out, 4, DType::F32) },
                Box::new(|i| u[i] as f32),
            ),
            (
                Op::Unary {
                    op: UnaryOp::Exp,
                    input: at(ab, 0, DType::F32),
                    out: at(out, 4, DType::F32),
                },
                Box::new(|i| a[i].exp()),
            ),
        ];
        for (op, want) in cases {
            device.run(&op).expect("run");
            let mut bytes = vec![0u8; (n + 8) * 4];
            device.read(out, 0, &mut bytes).expect("read");
            let got: &[f32] = bytemuck::cast_slice(&bytes);
            for i in 0..n {
                let w = want(i);
                assert!(
                    (got[i + 4] - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{}: element {i}: {} vs {w}",
                    op.describe(),
                    got[i + 4]
                );
            }
            let words: &[u32] = bytemuck::cast_slice(&bytes);
            for i in (0..4).chain(n + 4..n + 8) {
                assert_eq!(
                    words[i],
                    0xABAB_ABAB,
                    "{}: word {i} outside the view was written",
                    op.describe()
                );
            }
        }
    }
}

/// A view past what the adapter binds at once is a clear error, not a wrong answer; views
/// inside the bindable part of a big buffer still work.
#[test]
fn views_past_the_binding_limit_are_refused() {
    use manychips::{DType, ErrorKind, Layout, Op, View};
    for device in devices() {
        let bytes = 160 << 20;
        let Ok(buf) = device.alloc(bytes) else {
            println!("{}: cannot allocate {bytes} bytes; skipped", device.info().label());
            continue;
        };
        let mut low = Layout::contiguous([1024]);
        low.offset = 1 << 20;
        let op = Op::Fill { out: View::new(buf, low, DType::F32), value: 2.0 };
        device.run(&op).expect("a view inside the binding limit runs");
        let mut got = [0u8; 4];
        device.read(buf, 4 << 20, &mut got).expect("read");
        assert_eq!(f32::from_le_bytes(got), 2.0);
        let mut high = Layout::contiguous([1024]);
        high.offset = (150 << 20) / 4;
        let op = Op::Fill { out: View::new(buf, high, DType::F32), value: 2.0 };
        match device.run(&op) {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
                println!("refused as expected: {e}");
            }
            Ok(()) => {
                // An adapter that binds 160 MiB at once must then compute it right.
                device.read(buf, 150 << 20, &mut got).expect("read");
                assert_eq!(f32::from_le_bytes(got), 2.0);
            }
        }
        device.free(buf).expect("free");
    }
}

/// Loops longer than llvmpipe runs per invocation (65535 iterations in all) must still add
/// up every term: long-k matmul with each kernel, and index_add along a long axis. The kit's
/// random data would hide a few missing terms within tolerance; ones do not.
#[test]
fn long_loops_add_every_term() {
    use manychips::{DType, Layout, Op, View};
    let n = 70_000;
    for device in devices() {
        let ones = device.alloc(n * 4).expect("alloc");
        let zeros = device.alloc(n * 4).expect("alloc");
        let out = device.alloc(4).expect("alloc");
        device.write(ones, 0, bytemuck::cast_slice(&vec![1.0f32; n])).expect("write");
        device.write(zeros, 0, &vec![0; n * 4]).expect("write");
        let read = || {
            let mut got = [0u8; 4];
            device.read(out, 0, &mut got).expect("read");
            f32::from_le_bytes(got)
        };
        let row = View::new(ones, Layout::contiguous([1, n]), DType::F32);
        let col = View::new(ones, Layout::contiguous([n, 1]), DType::F32);
        let one = View::new(out, Layout::contiguous([1, 1]), DType::F32);
        for kernel in
            [MatmulKernel::Naive, MatmulKernel::RegisterBlocked, MatmulKernel::SharedTiles]
        {
            device.set_matmul_kernel(kernel);
            let op = Op::Matmul { lhs: row.clone(), rhs: col.clone(), out: one.clone() };
            device.run(&op).expect("matmul");
            assert_eq!(read(), n as f32, "{kernel:?}");
        }
        device.write(out, 0, &[0; 4]).expect("write");
        let op = Op::IndexAdd {
            src: View::new(ones, Layout::contiguous([n]), DType::F32),
            indices: View::new(zeros, Layout::contiguous([n]), DType::U32),
            out: View::new(out, Layout::contiguous([1]), DType::F32),
            axis: 0,
        };
        device.run(&op).expect("index_add");
        assert_eq!(read(), n as f32, "index_add");
    }
}

#[test]
fn calibration_picks_the_fastest_matmul_kernel() {
    for device in devices() {
        let (best, timings) =
            manychips::pick_matmul_kernel(&device, &|k| device.set_matmul_kernel(k), 256)
                .expect("calibration runs");
        println!("{}: {timings:?} -> {best:?}", device.info().label());
        assert_eq!(device.matmul_kernel(), best, "the winner stays selected");
        let fastest = timings.iter().min_by_key(|(_, t)| *t).map(|(k, _)| *k);
        assert_eq!(fastest, Some(best));
        if device.info().name.contains("llvmpipe") {
            // Measured 6x apart on lavapipe: noise cannot make the naive kernel win.
            assert_ne!(best, MatmulKernel::Naive);
        }
    }
}

/// Freed buffers are kept and handed out again (a fresh wgpu buffer costs a zero fill): work
/// recorded before a free still reads the old contents, and the new owner's write lands
/// after it; the memory count takes the buffer back on reuse.
#[test]
fn freed_buffers_are_reused_in_order() {
    use manychips::{DType, Layout, Op, View};
    let n = 1 << 16;
    let bytes = n * 4;
    let floats = |v: f32| -> Vec<u8> { bytemuck::cast_slice(&vec![v; n]).to_vec() };
    let ends = |device: &WgpuDevice, buf| {
        let mut got = vec![0u8; bytes];
        device.read(buf, 0, &mut got).expect("read");
        let got: &[f32] = bytemuck::cast_slice(&got);
        (got[0], got[n - 1])
    };
    for device in devices() {
        let view = |buf| View::new(buf, Layout::contiguous([n]), DType::F32);
        let free_at_start = device.memory().expect("memory").free;
        let x = device.alloc(bytes).expect("alloc");
        let out = device.alloc(bytes).expect("alloc");
        device.write(x, 0, &floats(2.0)).expect("write");
        // Recorded, not yet submitted: it must still see x's 2.0 after x is freed and its
        // buffer handed to y.
        let op = Op::Affine { input: view(x), out: view(out), mul: 3.0, add: 0.0 };
        device.run(&op).expect("affine");
        device.free(x).expect("free");
        let y = device.alloc(bytes).expect("alloc");
        device.write(y, 0, &floats(5.0)).expect("write");
        assert_eq!(ends(&device, out), (6.0, 6.0));
        assert_eq!(ends(&device, y), (5.0, 5.0));
        // A reused buffer is a fresh allocation again, as the memory count sees it.
        let held = free_at_start - device.memory().expect("memory").free;
        assert_eq!(held, 2 * bytes as u64, "out and y");
        device.free(out).expect("free");
        device.free(y).expect("free");
        assert_eq!(device.memory().expect("memory").free, free_at_start, "all freed");
    }
}

/// A negative index counts from the end; one still out of range is reported as given (the
/// kit checks the error's kind, this its words), and its row reads zero. The float
/// remainder is exact (fmod, then the divisor's sign) where a / b rounds across an integer.
#[test]
fn signed_indices_and_exact_remainders() {
    use manychips::{BinaryOp, DType, ErrorKind, Layout, Op, View};
    for device in devices() {
        let view = |values: &[u8], dims: &[usize], dtype| {
            let buf = device.alloc(values.len()).expect("alloc");
            device.write(buf, 0, values).expect("write");
            View::new(buf, Layout::contiguous(dims), dtype)
        };
        let read = |v: &View| -> Vec<f32> {
            let mut got = vec![0; v.numel() * 4];
            device.read(v.buffer, 0, &mut got).expect("read");
            got.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let data: Vec<u8> = (0..10).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let idx: Vec<u8> = [0i32, -7, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = view(&[0xAB; 24], &[3, 2], DType::F32);
        let op = Op::IndexSelect {
            input: view(&data, &[5, 2], DType::F32),
            indices: view(&idx, &[3], DType::I32),
            out: out.clone(),
            axis: 0,
        };
        let e = device.run(&op).and_then(|()| device.synchronize()).expect_err("-7 of 5");
        assert_eq!(e.kind(), ErrorKind::IndexOutOfRange, "{e}");
        assert!(e.to_string().contains("-7") && e.to_string().contains("length 5"), "{e}");
        assert_eq!(read(&out), [0.0, 1.0, 0.0, 0.0, 8.0, 9.0]);

        let pairs = [(1.0f32, 0.1f32), (-7.0, 0.1), (6.0, -0.3), (1e15, 0.37), (5.0, -1e30)];
        let col = |k: usize| -> Vec<u8> {
            pairs.iter().flat_map(|p| [p.0, p.1][k].to_le_bytes()).collect()
        };
        let n = pairs.len();
        let out = view(&vec![0; 4 * n], &[n], DType::F32);
        let (lhs, rhs) = (view(&col(0), &[n], DType::F32), view(&col(1), &[n], DType::F32));
        device.run(&Op::Binary { op: BinaryOp::Rem, lhs, rhs, out: out.clone() }).expect("rem");
        for (&(a, b), r) in pairs.iter().zip(read(&out)) {
            let m = a % b;
            let want = if m != 0.0 && (m < 0.0) != (b < 0.0) { m + b } else { m };
            assert_eq!(r.to_bits(), want.to_bits(), "{a} % {b}: {r}, want {want}");
        }
    }
}
