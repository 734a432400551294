//! burn-wgpu's side of `scripts/peer-bench.sh` (`WORK=gpu`): the same GPU work as
//! `examples/peer_bench.rs --work gpu`, printed as one JSON object of milliseconds per item
//! (median of `--reps` runs, each ending in a device sync).
//!
//!     cargo run --release --manifest-path scripts/peers/burn/Cargo.toml -- --reps 7

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, activation};

/// Median milliseconds of `f` and a device sync, the result kept alive until the sync ends
/// (fusion defers work; a result dropped unread might never be computed).
fn median_ms<const D: usize>(reps: usize, device: &Device, f: impl Fn() -> Tensor<D>) -> f64 {
    let warm = f();
    device.sync().expect("sync");
    drop(warm);
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let out = f();
            device.sync().expect("sync");
            let ms = start.elapsed().as_secs_f64() * 1e3;
            drop(out);
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(7);
    let device = Device::wgpu(Default::default());
    let normal = Distribution::Normal(0.0, 1.0);
    let mut times = BTreeMap::new();

    let n = 4 << 20;
    let x = Tensor::<1>::random([n], normal, &device);
    let y = Tensor::<1>::random([n], normal, &device);
    times.insert("add_4M", median_ms(reps, &device, || x.clone() + y.clone()));

    let rows = Tensor::<2>::random([4096, 1024], normal, &device);
    times.insert(
        "softmax_4096x1024",
        median_ms(reps, &device, || activation::softmax(rows.clone(), 1)),
    );

    let k = 1024;
    let a = Tensor::<2>::random([k, k], normal, &device);
    let b = Tensor::<2>::random([k, k], normal, &device);
    times.insert("matmul_1024", median_ms(reps, &device, || a.clone().matmul(b.clone())));

    println!("{}", serde_json::to_string(&times).expect("json"));
}
