//! CPU backend speed, as ratios against baselines run in the same process:
//! - matmul (through the Tensor API) against the `gemm` crate called directly;
//! - elementwise add against a plain loop into a reused buffer;
//! - exp and row softmax against plain scalar loops;
//! - a fused elementwise program (GELU's backward) against the same steps as separate ops.
//!
//! `cargo bench --bench cpu` prints criterion's figures for both sides of every pair, then a
//! ratio table. The ratios come from an interleaved pass (ours, baseline, ours, ...; median
//! of each side), because this machine's speed drifts between criterion's measurement windows
//! by more than the differences being measured.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use manychips::{CpuDevice, DType, DeviceRef, Element, Tensor, f16};

mod common;
use common::Pair;

fn matmul_pair<T: Element + From<u8>>(
    n: usize,
    dtype: DType,
    dev: &DeviceRef,
    threads: usize,
) -> Pair {
    let a = Tensor::randn(0.0, 1.0, [n, n], dtype, 1, dev).unwrap();
    let b = Tensor::randn(0.0, 1.0, [n, n], dtype, 2, dev).unwrap();
    let (ha, hb) = (a.to_vec::<T>().unwrap(), b.to_vec::<T>().unwrap());
    let mut dst = vec![T::from(0); n * n];
    let dev = dev.clone();
    Pair {
        group: format!("matmul_{dtype}"),
        label: format!("{n}"),
        ours_name: "manychips",
        baseline: "gemm",
        target: ">= 0.95",
        throughput: Throughput::Elements((2 * n * n * n) as u64),
        ours: Box::new(move || {
            black_box(a.matmul(&b).unwrap());
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || direct_gemm(n, &ha, &hb, &mut dst, threads)),
    }
}

fn direct_gemm<T: 'static + Copy + From<u8>>(
    n: usize,
    a: &[T],
    b: &[T],
    dst: &mut [T],
    threads: usize,
) {
    let (zero, one): (T, T) = (T::from(0), T::from(1));
    let s = n as isize;
    // SAFETY: all three are n*n row-major matrices (column stride 1, row stride n).
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            dst.as_mut_ptr(),
            1,
            s,
            false,
            a.as_ptr(),
            1,
            s,
            b.as_ptr(),
            1,
            s,
            zero,
            one,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        )
    }
    black_box(dst);
}

fn add_pair(dev: &DeviceRef) -> Pair {
    let n = 1 << 22;
    let a = Tensor::rand(-1.0, 1.0, [n], DType::F32, 1, dev).unwrap();
    let b = Tensor::rand(-1.0, 1.0, [n], DType::F32, 2, dev).unwrap();
    let (ha, hb) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let mut out = vec![0f32; n];
    let dev = dev.clone();
    Pair {
        group: "add_f32".into(),
        label: "4M".into(),
        ours_name: "manychips",
        baseline: "plain_loop",
        target: ">= 0.8",
        throughput: Throughput::Bytes((3 * 4 * n) as u64),
        ours: Box::new(move || {
            black_box(a.add(&b).unwrap());
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || {
            for ((o, x), y) in out.iter_mut().zip(&ha).zip(&hb) {
                *o = x + y;
            }
            black_box(&mut out);
        }),
    }
}

fn exp_pair(dev: &DeviceRef) -> Pair {
    let n = 1 << 22;
    let a = Tensor::rand(-10.0, 10.0, [n], DType::F32, 1, dev).unwrap();
    let ha = a.to_vec::<f32>().unwrap();
    let mut out = vec![0f32; n];
    let dev = dev.clone();
    Pair {
        group: "exp_f32".into(),
        label: "4M".into(),
        ours_name: "manychips",
        baseline: "scalar_loop",
        target: ">= 1.5",
        throughput: Throughput::Bytes((2 * 4 * n) as u64),
        ours: Box::new(move || {
            black_box(a.exp().unwrap());
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || {
            for (o, x) in out.iter_mut().zip(&ha) {
                *o = x.exp();
            }
            black_box(&mut out);
        }),
    }
}

fn softmax_pair(dev: &DeviceRef) -> Pair {
    let (rows, cols) = (4096, 1024);
    let x = Tensor::randn(0.0, 2.0, [rows, cols], DType::F32, 3, dev).unwrap();
    let hx = x.to_vec::<f32>().unwrap();
    let mut out = vec![0f32; rows * cols];
    let dev = dev.clone();
    Pair {
        group: "softmax_f32".into(),
        label: "4096x1024".into(),
        ours_name: "manychips",
        baseline: "scalar_loop",
        target: ">= 1.5",
        throughput: Throughput::Bytes((2 * 4 * rows * cols) as u64),
        ours: Box::new(move || {
            black_box(x.softmax(1).unwrap());
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || {
            for (row, o) in hx.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0;
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                for o in o.iter_mut() {
                    *o /= sum;
                }
            }
            black_box(&mut out);
        }),
    }
}

/// GELU's backward (`grad · gelu'(x)`) as one fused program against the same arithmetic as
/// sixteen separate tensor ops (what the autograd ran before fusion).
fn fused_pair(dev: &DeviceRef) -> Pair {
    use manychips::{BinaryOp::*, Instr::*, UnaryOp::Tanh};
    let n = 1 << 22;
    let x = Tensor::randn(0.0, 2.0, [n], DType::F32, 4, dev).unwrap();
    let g = Tensor::randn(0.0, 1.0, [n], DType::F32, 5, dev).unwrap();
    let (c, k) = (0.044_715, 0.797_884_560_802_865_4);
    let program = vec![
        Input(0),
        Input(1),
        Binary(Mul, 0, 0),
        Affine(2, c, 1.0),
        Binary(Mul, 0, 3),
        Affine(4, k, 0.0),
        Unary(Tanh, 5),
        Affine(6, 0.5, 0.5),
        Binary(Mul, 6, 6),
        Affine(8, -1.0, 1.0),
        Binary(Mul, 0, 9),
        Affine(2, 3.0 * c, 1.0),
        Binary(Mul, 10, 11),
        Affine(12, 0.5 * k, 0.0),
        Binary(Add, 7, 13),
        Binary(Mul, 1, 14),
    ];
    let (x2, g2, d1, d2) = (x.clone(), g.clone(), dev.clone(), dev.clone());
    Pair {
        group: "gelu_backward_f32".into(),
        label: "4M".into(),
        ours_name: "fused",
        baseline: "unfused_ops",
        target: ">= 2",
        // What the fused pass must move: two inputs read, one output written.
        throughput: Throughput::Bytes((3 * 4 * n) as u64),
        ours: Box::new(move || {
            black_box(Tensor::fused(&[&x, &g], &program, DType::F32).unwrap());
            d1.synchronize().unwrap();
        }),
        base: Box::new(move || {
            let (x, g) = (&x2, &g2);
            let x2 = x.mul(x).unwrap();
            let t =
                x.mul(&x2.affine(c, 1.0).unwrap()).unwrap().affine(k, 0.0).unwrap().tanh().unwrap();
            let left = t.affine(0.5, 0.5).unwrap();
            let sech2 = t.mul(&t).unwrap().affine(-1.0, 1.0).unwrap();
            let right = x.mul(&sech2).unwrap().mul(&x2.affine(3.0 * c, 1.0).unwrap()).unwrap();
            let slope = left.add(&right.affine(0.5 * k, 0.0).unwrap()).unwrap();
            black_box(g.mul(&slope).unwrap());
            d2.synchronize().unwrap();
        }),
    }
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev: DeviceRef = Arc::new(CpuDevice::with_threads(threads).expect("cpu device"));
    let mut pairs: Vec<Pair> = [256, 512, 1024, 2048]
        .into_iter()
        .map(|n| matmul_pair::<f32>(n, DType::F32, &dev, threads))
        .collect();
    pairs.push(matmul_pair::<f16>(1024, DType::F16, &dev, threads));
    pairs.extend([add_pair(&dev), exp_pair(&dev), softmax_pair(&dev), fused_pair(&dev)]);

    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
}
