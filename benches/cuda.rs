//! The CUDA backend on every CUDA device found, each figure as a ratio against a baseline run
//! in the same process:
//! - cuBLAS GEMM (bf16, f16, f32; n = 4096 and 8192) against the backend's tiled kernel on
//!   the same operands, and f32 in TF32 (the opt-in) against strict f32;
//! - elementwise add against a device-to-device copy moving the same bytes (the card's copy
//!   bandwidth);
//! - host-to-device and device-to-host transfers through pinned staging against pageable
//!   memory;
//! - the fixed cost of a tiny op (a 1-element add, run + synchronize) against the CPU
//!   backend's.
//!
//! Rates print as GFLOP/s (÷1000 for TFLOP/s) and GB/s. `cargo bench --bench cuda`; without a
//! CUDA device it prints why and returns.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use manychips::{BinaryOp, BufferId, CpuDevice, DType, Device, DeviceRef, Layout, Op, View};
use manychips_cuda::{CudaDevice, MatmulPath, Staging};

mod common;
use common::Pair;

fn view(buf: BufferId, dims: &[usize], dtype: DType) -> View {
    View::new(buf, Layout::contiguous(dims), dtype)
}

/// A buffer of `n` elements of `dtype`, filled with `value`.
fn filled(dev: &DeviceRef, n: usize, dtype: DType, value: f64) -> BufferId {
    let buf = dev.alloc(n * dtype.size_in_bytes()).expect("alloc");
    dev.run(&Op::Fill { out: view(buf, &[n], dtype), value }).expect("fill");
    buf
}

fn gemm_pairs(cuda: &Arc<CudaDevice>, dev: &DeviceRef, name: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for n in [4096usize, 8192] {
        let cases = [
            (DType::BF16, false, "cublas", "tiled"),
            (DType::F16, false, "cublas", "tiled"),
            (DType::F32, false, "cublas", "tiled"),
            (DType::F32, true, "cublas_tf32", "cublas_f32"),
        ];
        for (dtype, tf32, ours_name, baseline) in cases {
            let a = filled(dev, n * n, dtype, 0.01);
            let b = filled(dev, n * n, dtype, 0.02);
            let c = filled(dev, n * n, dtype, 0.0);
            let op = Op::Matmul {
                lhs: view(a, &[n, n], dtype),
                rhs: view(b, &[n, n], dtype),
                out: view(c, &[n, n], dtype),
            };
            let run = |path: MatmulPath, tf32: bool| {
                let (cuda, op) = (cuda.clone(), op.clone());
                move || {
                    cuda.set_matmul_path(path);
                    cuda.set_tf32(tf32);
                    cuda.run(&op).expect("matmul");
                    cuda.synchronize().expect("synchronize");
                }
            };
            let base =
                if tf32 { run(MatmulPath::Cublas, false) } else { run(MatmulPath::Tiled, false) };
            pairs.push(Pair {
                group: format!("{name}_gemm_{}{}", dtype, if tf32 { "_tf32" } else { "" }),
                label: format!("{n}"),
                ours_name,
                baseline,
                target: "report",
                throughput: Throughput::Elements((2 * n * n * n) as u64),
                ours: Box::new(run(MatmulPath::Cublas, tf32)),
                base: Box::new(base),
            });
        }
    }
    pairs
}

fn bandwidth_pairs(cuda: &Arc<CudaDevice>, dev: &DeviceRef, name: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    // add: reads 2 × 256 MiB and writes 256 MiB; the copy moves the same 768 MiB (384 MiB
    // read, 384 MiB written).
    let n = 64 << 20;
    let (x, y, z) = (
        filled(dev, n, DType::F32, 1.0),
        filled(dev, n, DType::F32, 2.0),
        filled(dev, n, DType::F32, 0.0),
    );
    let add = Op::Binary {
        op: BinaryOp::Add,
        lhs: view(x, &[n], DType::F32),
        rhs: view(y, &[n], DType::F32),
        out: view(z, &[n], DType::F32),
    };
    let half = 3 * n * 4 / 2;
    let (src, dst) = (dev.alloc(half).expect("alloc"), dev.alloc(half).expect("alloc"));
    let (d1, d2) = (dev.clone(), dev.clone());
    pairs.push(Pair {
        group: format!("{name}_elementwise_add_f32"),
        label: "64Mi".into(),
        ours_name: "add",
        baseline: "dtod_copy",
        target: ">= 0.8",
        throughput: Throughput::Bytes((3 * n * 4) as u64),
        ours: Box::new(move || {
            d1.run(&add).expect("add");
            d1.synchronize().expect("synchronize");
        }),
        base: Box::new(move || {
            d2.copy(src, 0, dst, 0, half).expect("copy");
            d2.synchronize().expect("synchronize");
        }),
    });

    let bytes = 256 << 20;
    let host = vec![1u8; bytes];
    let buffer = dev.alloc(bytes).expect("alloc");
    let staged = |staging: Staging| {
        let (cuda, host) = (cuda.clone(), host.clone());
        move || {
            cuda.set_staging(staging);
            cuda.write(buffer, 0, &host).expect("write");
            cuda.synchronize().expect("synchronize");
        }
    };
    pairs.push(Pair {
        group: format!("{name}_h2d"),
        label: "256MiB".into(),
        ours_name: "pinned",
        baseline: "pageable",
        target: "report",
        throughput: Throughput::Bytes(bytes as u64),
        ours: Box::new(staged(Staging::Pinned)),
        base: Box::new(staged(Staging::Pageable)),
    });
    let read = |staging: Staging| {
        let cuda = cuda.clone();
        let mut back = vec![0u8; bytes];
        move || {
            cuda.set_staging(staging);
            cuda.read(buffer, 0, &mut back).expect("read");
            black_box(&mut back);
        }
    };
    pairs.push(Pair {
        group: format!("{name}_d2h"),
        label: "256MiB".into(),
        ours_name: "pinned",
        baseline: "pageable",
        target: "report",
        throughput: Throughput::Bytes(bytes as u64),
        ours: Box::new(read(Staging::Pinned)),
        base: Box::new(read(Staging::Pageable)),
    });
    pairs
}

/// One-element add, run + synchronize.
fn tiny(dev: &DeviceRef) -> impl FnMut() + use<> {
    let (a, b, c) = (
        filled(dev, 1, DType::F32, 1.0),
        filled(dev, 1, DType::F32, 2.0),
        filled(dev, 1, DType::F32, 0.0),
    );
    let op = Op::Binary {
        op: BinaryOp::Add,
        lhs: view(a, &[1], DType::F32),
        rhs: view(b, &[1], DType::F32),
        out: view(c, &[1], DType::F32),
    };
    let dev = dev.clone();
    move || {
        dev.run(&op).expect("add");
        dev.synchronize().expect("synchronize");
    }
}

fn main() {
    let devices = match manychips_cuda::discover() {
        Ok(devices) => devices,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let cpu: DeviceRef = Arc::new(CpuDevice::new().expect("cpu device"));
    let mut pairs = Vec::new();
    for cuda in devices {
        let cuda = Arc::new(cuda);
        cuda.warm_up().expect("kernels build and load");
        let dev: DeviceRef = cuda.clone();
        let name = dev.info().label().replace(':', "");
        println!(
            "{} {:?} ({}), compute capability {:?}, cuBLAS {}",
            dev.info().label(),
            dev.info().name,
            dev.info().driver_version,
            cuda.compute_capability(),
            cuda.has_cublas()
        );
        pairs.extend(gemm_pairs(&cuda, &dev, &name));
        pairs.extend(bandwidth_pairs(&cuda, &dev, &name));
        pairs.push(Pair {
            group: format!("{name}_tiny_op_latency"),
            label: "add1".into(),
            ours_name: "cuda",
            baseline: "cpu:0",
            target: "report",
            throughput: Throughput::Elements(0),
            ours: Box::new(tiny(&dev)),
            base: Box::new(tiny(&cpu)),
        });
    }
    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
}
