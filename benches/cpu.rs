//! CPU backend speed, as ratios against baselines run in the same process:
//! - matmul (through the Tensor API) against the `gemm` crate called directly;
//! - elementwise add against a plain loop into a reused buffer;
//! - exp and row softmax against plain scalar loops.
//!
//! `cargo bench --bench cpu` prints criterion's figures for both sides of every pair, then a
//! ratio table. The ratios come from an interleaved pass (ours, baseline, ours, ...; median
//! of each side), because this machine's speed drifts between criterion's measurement windows
//! by more than the differences being measured.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use manychips::{CpuDevice, DType, DeviceRef, Element, Tensor, f16};

/// One measurement: the library against its baseline on the same work.
struct Pair {
    group: String,
    label: String,
    baseline: &'static str,
    target: &'static str,
    throughput: Throughput,
    ours: Box<dyn FnMut()>,
    base: Box<dyn FnMut()>,
}

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

/// Median seconds of each side over alternating blocks of runs, taking about `budget` in
/// all. Each block's first run is dropped: it pays for waking that side's thread pool, which
/// went to sleep while the other side ran.
fn interleaved(pair: &mut Pair, budget: Duration) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let one_round = time(&mut *pair.ours) + time(&mut *pair.base);
    let block = ((0.02 / one_round) as usize).clamp(2, 50);
    let rounds = ((budget.as_secs_f64() / (one_round * block as f64)) as usize).clamp(5, 200);
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (f, times) in [(&mut pair.ours, &mut ours), (&mut pair.base, &mut base)] {
            f();
            times.extend((1..block).map(|_| time(&mut **f)));
        }
    }
    (median(&mut ours), median(&mut base))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

    let mut c = Criterion::default().configure_from_args();
    for pair in &mut pairs {
        let mut group = c.benchmark_group(pair.group.as_str());
        group.sample_size(10).warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(2)).throughput(pair.throughput.clone());
        group
            .bench_function(BenchmarkId::new("manychips", &pair.label), |b| b.iter(&mut pair.ours));
        group.bench_function(BenchmarkId::new(pair.baseline, &pair.label), |b| {
            b.iter(&mut pair.base)
        });
        group.finish();
    }
    c.final_summary();

    // Criterion's filter selects what it measures; the ratio pass follows the same filter.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!("\nratio = baseline / manychips, medians of an interleaved pass (higher is better)");
    println!(
        "{:<26} {:>12} {:>12} {:>7}  {:<12} target",
        "bench", "manychips", "baseline", "ratio", "baseline is"
    );
    for pair in &mut pairs {
        let name = format!("{}/{}", pair.group, pair.label);
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let (ours, base) = interleaved(pair, Duration::from_secs(3));
        println!(
            "{name:<26} {:>9.3} ms {:>9.3} ms {:>7.2}  {:<12} {}",
            ours * 1e3,
            base * 1e3,
            base / ours,
            pair.baseline,
            pair.target
        );
    }
}
