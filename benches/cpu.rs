//! CPU backend speed, as ratios against baselines run in the same process:
//! - matmul (through the Tensor API) against the `gemm` crate called directly;
//! - elementwise add against a plain loop into a reused buffer;
//! - exp and row softmax against plain scalar loops.
//!
//! `cargo bench --bench cpu` prints criterion's figures, then a table of ratios.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use manychips::{CpuDevice, DType, DeviceRef, Tensor, f16};

fn device() -> (DeviceRef, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dev: DeviceRef = Arc::new(CpuDevice::with_threads(threads).expect("cpu device"));
    (dev, threads)
}

fn matmul(c: &mut Criterion, dev: &DeviceRef, threads: usize) {
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(10).warm_up_time(Duration::from_millis(500));
    for n in [256usize, 512, 1024, 2048] {
        group.measurement_time(Duration::from_secs(if n >= 2048 { 6 } else { 2 }));
        group.throughput(Throughput::Elements((2 * n * n * n) as u64));
        let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, dev).unwrap();
        let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, dev).unwrap();
        group.bench_function(BenchmarkId::new("manychips", n), |bench| {
            bench.iter(|| {
                let out = a.matmul(&b).unwrap();
                dev.synchronize().unwrap();
                out
            })
        });
        let (ha, hb) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let mut dst = vec![0f32; n * n];
        group.bench_function(BenchmarkId::new("gemm", n), |bench| {
            bench.iter(|| direct_gemm(n, &ha, &hb, &mut dst, threads))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("matmul_f16");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    let n = 1024;
    group.throughput(Throughput::Elements((2 * n * n * n) as u64));
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F16, 1, dev).unwrap();
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F16, 2, dev).unwrap();
    group.bench_function(BenchmarkId::new("manychips", n), |bench| {
        bench.iter(|| {
            let out = a.matmul(&b).unwrap();
            dev.synchronize().unwrap();
            out
        })
    });
    let (ha, hb) = (a.to_vec::<f16>().unwrap(), b.to_vec::<f16>().unwrap());
    let mut dst = vec![f16::ZERO; n * n];
    group.bench_function(BenchmarkId::new("gemm", n), |bench| {
        bench.iter(|| direct_gemm(n, &ha, &hb, &mut dst, threads))
    });
    group.finish();
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

fn elementwise(c: &mut Criterion, dev: &DeviceRef) {
    let n = 1 << 22;
    let mut group = c.benchmark_group("add_f32");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes((3 * 4 * n) as u64));
    let a = Tensor::rand(-1.0, 1.0, [n], DType::F32, 1, dev).unwrap();
    let b = Tensor::rand(-1.0, 1.0, [n], DType::F32, 2, dev).unwrap();
    group.bench_function("manychips", |bench| {
        bench.iter(|| {
            let out = a.add(&b).unwrap();
            dev.synchronize().unwrap();
            out
        })
    });
    let (ha, hb) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let mut out = vec![0f32; n];
    group.bench_function("plain_loop", |bench| {
        bench.iter(|| {
            for ((o, x), y) in out.iter_mut().zip(&ha).zip(&hb) {
                *o = x + y;
            }
            black_box(&mut out);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("exp_f32");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes((2 * 4 * n) as u64));
    group.bench_function("manychips", |bench| {
        bench.iter(|| {
            let out = a.exp().unwrap();
            dev.synchronize().unwrap();
            out
        })
    });
    group.bench_function("scalar_loop", |bench| {
        bench.iter(|| {
            for (o, x) in out.iter_mut().zip(&ha) {
                *o = x.exp();
            }
            black_box(&mut out);
        })
    });
    group.finish();

    let (rows, cols) = (4096, 1024);
    let mut group = c.benchmark_group("softmax_f32");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes((2 * 4 * rows * cols) as u64));
    let x = Tensor::randn(0.0, 2.0, [rows, cols], DType::F32, 3, dev).unwrap();
    group.bench_function("manychips", |bench| {
        bench.iter(|| {
            let out = x.softmax(1).unwrap();
            dev.synchronize().unwrap();
            out
        })
    });
    let hx = x.to_vec::<f32>().unwrap();
    let mut out = vec![0f32; rows * cols];
    group.bench_function("scalar_loop", |bench| {
        bench.iter(|| {
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
        })
    });
    group.finish();
}

/// Reads criterion's mean estimate (ns) for one benchmark from this run's output.
fn mean_ns(path: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let file = format!("{target}/criterion/{path}/new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_ratios() {
    println!("\nratio = baseline time / manychips time (higher is better; same process, same run)");
    println!("{:<22} {:>14} {:>14} {:>8}  target", "bench", "manychips", "baseline", "ratio");
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    for n in [256, 512, 1024, 2048] {
        rows.push((
            format!("matmul f32 n={n}"),
            format!("matmul_f32/manychips/{n}"),
            format!("matmul_f32/gemm/{n}"),
            ">= 0.95",
        ));
    }
    rows.push((
        "matmul f16 n=1024".into(),
        "matmul_f16/manychips/1024".into(),
        "matmul_f16/gemm/1024".into(),
        ">= 0.95",
    ));
    rows.push((
        "add f32 4M".into(),
        "add_f32/manychips".into(),
        "add_f32/plain_loop".into(),
        ">= 0.8",
    ));
    rows.push((
        "exp f32 4M".into(),
        "exp_f32/manychips".into(),
        "exp_f32/scalar_loop".into(),
        ">= 1.5",
    ));
    rows.push((
        "softmax 4096x1024".into(),
        "softmax_f32/manychips".into(),
        "softmax_f32/scalar_loop".into(),
        ">= 1.5",
    ));
    for (label, ours, base, target) in rows {
        match (mean_ns(&ours), mean_ns(&base)) {
            (Some(o), Some(b)) => println!(
                "{label:<22} {:>11.3} ms {:>11.3} ms {:>8.2}  {target}",
                o / 1e6,
                b / 1e6,
                b / o
            ),
            _ => println!("{label:<22} (not measured in this run)"),
        }
    }
}

fn main() {
    let (dev, threads) = device();
    let mut c = Criterion::default().configure_from_args();
    matmul(&mut c, &dev, threads);
    elementwise(&mut c, &dev);
    c.final_summary();
    print_ratios();
}
