//! Quick timings of the CPU device against direct baselines: a plain loop, scalar `exp`, gemm
//! called directly. Not a criterion bench (those live in the workspace's `benches/`); run
//! with `cargo run --release -p manychips-cpu --example cpu_timing`. Each line is a median.

use std::time::Instant;

use manychips_api::{BinaryOp, DType, Device, Layout, Op, UnaryOp, View};
use manychips_cpu::CpuDevice;

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn upload(dev: &CpuDevice, data: &[f32]) -> manychips_api::BufferId {
    let b = dev.alloc(data.len() * 4).unwrap();
    dev.write(b, 0, bytemuck::cast_slice(data)).unwrap();
    b
}

fn main() {
    let dev = CpuDevice::new().unwrap();
    println!("{} threads", dev.threads());
    let v = |b, dims: &[usize], dt| View::new(b, Layout::contiguous(dims), dt);

    for n in [1usize << 16, 1 << 20, 1 << 24] {
        let a: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.001).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 777) as f32 * 0.002).collect();
        let mut o = vec![0f32; n];
        let reps = if n > 1 << 22 { 9 } else { 51 };
        let base = median(
            || {
                for i in 0..n {
                    o[i] = a[i] + b[i];
                }
                std::hint::black_box(&mut o);
            },
            reps,
        );
        let (ba, bb, bo) = (upload(&dev, &a), upload(&dev, &b), dev.alloc(n * 4).unwrap());
        let op = Op::Binary {
            op: BinaryOp::Add,
            lhs: v(ba, &[n], DType::F32),
            rhs: v(bb, &[n], DType::F32),
            out: v(bo, &[n], DType::F32),
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "add n={n}: plain loop {:.1} us, device {:.1} us, ratio {:.2}",
            base * 1e6,
            ours * 1e6,
            base / ours
        );

        let base = median(
            || {
                for i in 0..n {
                    o[i] = a[i].exp();
                }
                std::hint::black_box(&mut o);
            },
            reps,
        );
        let op = Op::Unary {
            op: UnaryOp::Exp,
            input: v(ba, &[n], DType::F32),
            out: v(bo, &[n], DType::F32),
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "exp n={n}: scalar exp {:.1} us, device {:.1} us, ratio {:.2}",
            base * 1e6,
            ours * 1e6,
            base / ours
        );
        let op = Op::Unary {
            op: UnaryOp::GeluTanh,
            input: v(ba, &[n], DType::F32),
            out: v(bo, &[n], DType::F32),
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!("gelu_tanh n={n}: device {:.1} us", ours * 1e6);

        let row = 1024;
        let rows = n / row;
        let base = median(
            || {
                for r in 0..rows {
                    let x = &a[r * row..(r + 1) * row];
                    let y = &mut o[r * row..(r + 1) * row];
                    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let mut s = 0.0;
                    for (d, &v) in y.iter_mut().zip(x) {
                        *d = (v - m).exp();
                        s += *d;
                    }
                    for d in y.iter_mut() {
                        *d /= s;
                    }
                }
                std::hint::black_box(&mut o);
            },
            reps,
        );
        let op = Op::Softmax {
            input: v(ba, &[rows, row], DType::F32),
            out: v(bo, &[rows, row], DType::F32),
            axis: 1,
            log: false,
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "softmax [{rows}, {row}]: scalar {:.1} us, device {:.1} us, ratio {:.2}",
            base * 1e6,
            ours * 1e6,
            base / ours
        );
        let op = Op::Reduce {
            op: manychips_api::ReduceOp::Sum,
            input: v(ba, &[rows, row], DType::F32),
            out: v(bo, &[rows, 1], DType::F32),
            axis: 1,
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "sum rows [{rows}, {row}]: device {:.1} us ({:.1} GB/s)",
            ours * 1e6,
            n as f64 * 4.0 / ours / 1e9
        );
        for buf in [ba, bb, bo] {
            dev.free(buf).unwrap();
        }
    }

    for n in [512usize, 2048] {
        let a: Vec<f32> = (0..n * n).map(|i| i as f32).collect();
        let (ba, bo) = (upload(&dev, &a), dev.alloc(n * n * 4).unwrap());
        let input = View::new(
            ba,
            Layout { shape: [n, n].into(), strides: vec![1, n], offset: 0 },
            DType::F32,
        );
        let op = Op::Copy { input, out: v(bo, &[n, n], DType::F32) };
        let mut o = vec![0f32; n * n];
        let base = median(
            || {
                for i in 0..n {
                    for j in 0..n {
                        o[i * n + j] = a[j * n + i];
                    }
                }
                std::hint::black_box(&mut o);
            },
            9,
        );
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            9,
        );
        println!(
            "transpose n={n}: naive loop {:.1} us, device {:.1} us, ratio {:.2}",
            base * 1e6,
            ours * 1e6,
            base / ours
        );
    }

    let threads = dev.threads();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    for n in [64usize, 256, 512, 1024, 2048] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut c = vec![0f32; n * n];
        let reps = if n >= 1024 { 5 } else { 21 };
        let base = median(
            || {
                pool.install(|| unsafe {
                    gemm::gemm(
                        n,
                        n,
                        n,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        n as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(threads),
                    )
                })
            },
            reps,
        );
        let (ba, bb, bo) = (upload(&dev, &a), upload(&dev, &b), dev.alloc(n * n * 4).unwrap());
        let op = Op::Matmul {
            lhs: v(ba, &[n, n], DType::F32),
            rhs: v(bb, &[n, n], DType::F32),
            out: v(bo, &[n, n], DType::F32),
        };
        let ours = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "matmul f32 n={n}: gemm {:.1} us, device {:.1} us, ratio {:.3}",
            base * 1e6,
            ours * 1e6,
            base / ours
        );
        // f16: gemm's native f16 against the same via the device.
        let ah: Vec<half::f16> = a.iter().map(|&x| half::f16::from_f32(x)).collect();
        let bh: Vec<half::f16> = b.iter().map(|&x| half::f16::from_f32(x)).collect();
        let mut ch = vec![half::f16::ZERO; n * n];
        let base16 = median(
            || {
                pool.install(|| unsafe {
                    gemm::gemm(
                        n,
                        n,
                        n,
                        ch.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        ah.as_ptr(),
                        1,
                        n as isize,
                        bh.as_ptr(),
                        1,
                        n as isize,
                        half::f16::ZERO,
                        half::f16::ONE,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(threads),
                    )
                })
            },
            reps,
        );
        let (ha, hb, ho) = (
            dev.alloc(n * n * 2).unwrap(),
            dev.alloc(n * n * 2).unwrap(),
            dev.alloc(n * n * 2).unwrap(),
        );
        dev.write(ha, 0, bytemuck::cast_slice(&ah)).unwrap();
        dev.write(hb, 0, bytemuck::cast_slice(&bh)).unwrap();
        let op = Op::Matmul {
            lhs: v(ha, &[n, n], DType::F16),
            rhs: v(hb, &[n, n], DType::F16),
            out: v(ho, &[n, n], DType::F16),
        };
        let ours16 = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        let op = Op::Matmul {
            lhs: v(ha, &[n, n], DType::BF16),
            rhs: v(hb, &[n, n], DType::BF16),
            out: v(ho, &[n, n], DType::BF16),
        };
        let oursbf = median(
            || {
                dev.run(&op).unwrap();
                dev.synchronize().unwrap();
            },
            reps,
        );
        println!(
            "matmul f16 n={n}: gemm {:.1} us, device {:.1} us, ratio {:.3}; bf16 (staged) device {:.1} us",
            base16 * 1e6,
            ours16 * 1e6,
            base16 / ours16,
            oursbf * 1e6
        );
        for buf in [ba, bb, bo, ha, hb, ho] {
            dev.free(buf).unwrap();
        }
    }
    let noop = Op::Fill {
        out: View::new(dev.alloc(4).unwrap(), Layout::contiguous([1]), DType::F32),
        value: 0.0,
    };
    let t = median(
        || {
            dev.run(&noop).unwrap();
            dev.synchronize().unwrap();
        },
        1001,
    );
    println!("tiny op round trip: {:.1} us", t * 1e6);
    latency(&dev);
}

/// Median queue latencies: how long `run` takes to return, and a `synchronize` round trip.
fn latency(dev: &CpuDevice) {
    let noop = Op::Fill {
        out: View::new(dev.alloc(4).unwrap(), Layout::contiguous([1]), DType::F32),
        value: 0.0,
    };
    let mut run_t = vec![];
    let mut sync_t = vec![];
    let mut sync_only = vec![];
    for _ in 0..1000 {
        let s = Instant::now();
        dev.run(&noop).unwrap();
        run_t.push(s.elapsed().as_secs_f64() * 1e6);
        let s = Instant::now();
        dev.synchronize().unwrap();
        sync_t.push(s.elapsed().as_secs_f64() * 1e6);
        let s = Instant::now();
        dev.synchronize().unwrap();
        sync_only.push(s.elapsed().as_secs_f64() * 1e6);
    }
    for v in [&mut run_t, &mut sync_t, &mut sync_only] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "run {:.1} us, sync after run {:.1} us, bare sync {:.1} us",
        run_t[500], sync_t[500], sync_only[500]
    );
}
