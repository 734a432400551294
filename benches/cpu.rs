//! CPU backend speed, as ratios against baselines run in the same process:
//! - matmul (through the Tensor API) against the `gemm` crate called directly;
//! - elementwise add against a plain loop into a reused buffer;
//! - exp and row softmax against plain scalar loops;
//! - a fused elementwise program (GELU's backward) against the same steps as separate ops;
//! - argsort of vocabulary-sized rows against the standard library's sort;
//! - fused attention, forward and backward, against its decomposition into primitive ops
//!   on the same device.
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

/// `argsort` of vocabulary-sized rows (text generation's top-k), against the standard
/// library's stable sort of each row's positions on one thread.
fn argsort_pair(dev: &DeviceRef) -> Pair {
    let (rows, cols) = (8, 50257);
    let x = Tensor::randn(0.0, 2.0, [rows, cols], DType::F32, 4, dev).unwrap();
    let hx = x.to_vec::<f32>().unwrap();
    let mut order: Vec<u32> = Vec::with_capacity(cols);
    let dev = dev.clone();
    Pair {
        group: "argsort_f32".into(),
        label: "8x50257".into(),
        ours_name: "manychips",
        baseline: "std_sort_by",
        target: "report",
        throughput: Throughput::Elements((rows * cols) as u64),
        ours: Box::new(move || {
            black_box(x.argsort(1, true).unwrap());
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || {
            for row in hx.chunks_exact(cols) {
                order.clear();
                order.extend(0..cols as u32);
                order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                black_box(&order);
            }
        }),
    }
}

/// Causal attention of `[heads, tokens, width]`, forward or backward: the fused op
/// (`Op::Attention`, the CPU's kernel) against its decomposition into matmuls, a masked
/// scale and a softmax (`manychips::attention::decompose`, what a backend without a kernel
/// runs), on the same device.
fn attention_pair(dev: &DeviceRef, backward: bool, dims: [usize; 3]) -> Pair {
    let [heads, tokens, width] = dims;
    let t = |seed| Tensor::randn(0.0, 1.0, dims, DType::F32, seed, dev).unwrap();
    let (q, k, v, g) = (t(11), t(12), t(13), t(14));
    let scale = 1.0 / (width as f64).sqrt();
    let out_dims = if backward { vec![3, heads, tokens, width] } else { dims.to_vec() };
    let out = Tensor::zeros(out_dims, DType::F32, dev).unwrap();
    let op = match backward {
        false => manychips::Op::Attention {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            out: out.view(),
            scale,
            causal: true,
        },
        true => manychips::Op::AttentionBackward {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            d_out: g.view(),
            out: out.view(),
            scale,
            causal: true,
        },
    };
    let (dev, base_dev) = (dev.clone(), dev.clone());
    // Each score is 2·width flops for q·kᵀ and 2·width for the weights times v, over about
    // half of the tokens² (causal); the backward pass does 2.5 times that.
    let scores = (heads * tokens * tokens) as f64 / 2.0;
    let flops = scores * 4.0 * width as f64 * if backward { 2.5 } else { 1.0 };
    Pair {
        group: if backward { "attention_backward_f32" } else { "attention_f32" }.into(),
        label: format!("{heads}x{tokens}x{width} causal"),
        ours_name: "fused",
        baseline: "decomposed",
        target: "report",
        throughput: Throughput::Elements(flops as u64),
        ours: Box::new(move || {
            match backward {
                false => drop(black_box(q.attention(&k, &v, scale, true).unwrap())),
                true => drop(black_box(q.attention_backward(&k, &v, &g, scale, true).unwrap())),
            }
            dev.synchronize().unwrap();
        }),
        base: Box::new(move || {
            // `out` is the op's output: kept alive by this closure.
            let _ = &out;
            manychips::attention::decompose(&*base_dev, &op).unwrap();
            base_dev.synchronize().unwrap();
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
    pairs.extend([add_pair(&dev), exp_pair(&dev), softmax_pair(&dev)]);
    pairs.push(common::gelu_backward_pair(&dev, "gelu_backward_f32", 1 << 22));
    pairs.push(argsort_pair(&dev));
    // A long context, then train_charlm's (32 sequences × 4 heads of 64 tokens, 24 wide).
    for dims in [[16, 512, 64], [128, 64, 24]] {
        pairs.extend([attention_pair(&dev, false, dims), attention_pair(&dev, true, dims)]);
    }

    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
}
