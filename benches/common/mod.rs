//! What the benches share: a measurement is a [`Pair`] of the library and a baseline doing
//! the same work; criterion measures both sides, and the ratio table comes from an
//! interleaved pass in the same process, because this machine's speed drifts between
//! criterion's measurement windows by more than the differences being measured.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use manychips::{DType, DeviceRef, Tensor};

/// The benches allocate as the examples do (see `examples/common`): with mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measurement: the library against its baseline on the same work.
pub struct Pair {
    pub group: String,
    pub label: String,
    /// What `ours` is: `manychips`, or a kernel variant's name.
    pub ours_name: &'static str,
    pub baseline: &'static str,
    pub target: &'static str,
    pub throughput: Throughput,
    pub ours: Box<dyn FnMut()>,
    pub base: Box<dyn FnMut()>,
}

/// Criterion figures for both sides of every pair.
pub fn measure(c: &mut Criterion, pairs: &mut [Pair]) {
    for pair in pairs {
        let mut group = c.benchmark_group(pair.group.as_str());
        group.sample_size(10).warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(2)).throughput(pair.throughput.clone());
        group.bench_function(BenchmarkId::new(pair.ours_name, &pair.label), |b| {
            b.iter(&mut pair.ours)
        });
        group.bench_function(BenchmarkId::new(pair.baseline, &pair.label), |b| {
            b.iter(&mut pair.base)
        });
        group.finish();
    }
}

/// The ratio table (baseline time / our time, with each side's rate), following criterion's
/// name filter.
pub fn print_ratios(pairs: &mut [Pair]) {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!(
        "\nratio = baseline time / our time, medians of an interleaved pass (higher is better)"
    );
    println!(
        "{:<30} {:<24} {:>11} {:>11} {:>15} {:>15} {:>7}  target",
        "bench", "ours vs baseline", "ours", "baseline", "ours rate", "baseline rate", "ratio"
    );
    for pair in pairs {
        let name = format!("{}/{}", pair.group, pair.label);
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let (ours, base) = interleaved(pair, Duration::from_secs(3));
        println!(
            "{name:<30} {:<24} {:>8.3} ms {:>8.3} ms {:>15} {:>15} {:>7.2}  {}",
            format!("{} vs {}", pair.ours_name, pair.baseline),
            ours * 1e3,
            base * 1e3,
            rate(&pair.throughput, ours),
            rate(&pair.throughput, base),
            base / ours,
            pair.target
        );
    }
}

/// Work per second: elements count floating-point operations here, so G/s is GFLOP/s.
fn rate(work: &Throughput, seconds: f64) -> String {
    match work {
        Throughput::Elements(n) => format!("{:.2} GFLOP/s", *n as f64 / seconds / 1e9),
        Throughput::Bytes(n) => format!("{:.2} GB/s", *n as f64 / seconds / 1e9),
        _ => "-".into(),
    }
}

/// Median seconds of each side over alternating blocks of runs, taking about `budget` in
/// all. Each block's first run is dropped: it pays for waking that side's thread pool, which
/// went to sleep while the other side ran.
pub fn interleaved(pair: &mut Pair, budget: Duration) -> (f64, f64) {
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

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GELU's backward (`grad · gelu'(x)`) as one fused program against the same arithmetic as
/// sixteen separate tensor ops (what the autograd ran before fusion).
#[allow(dead_code)] // cpu and gpu use it; the other benches share this module
pub fn gelu_backward_pair(dev: &DeviceRef, group: &str, n: usize) -> Pair {
    use manychips::{BinaryOp::*, Instr::*, UnaryOp::Tanh};
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
        group: group.into(),
        label: format!("{}M", n >> 20),
        ours_name: "fused",
        baseline: "unfused_ops",
        target: ">= 2",
        // What the fused pass must move: two inputs read, one output written.
        throughput: Throughput::Bytes((3 * 4 * n) as u64),
        ours: Box::new(move || {
            std::hint::black_box(Tensor::fused(&[&x, &g], &program, DType::F32).unwrap());
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
            std::hint::black_box(g.mul(&slope).unwrap());
            d2.synchronize().unwrap();
        }),
    }
}
