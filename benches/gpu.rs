//! GPU backends on whatever adapters this machine has (lavapipe in CI), each figure as a
//! ratio against a baseline run in the same process:
//! - register-blocked WGSL matmul against the naive kernel (f32, n = 512 and 1024), and the
//!   shared-tile kernel (the default on real GPUs) against it at n = 1024;
//! - the GPU's blocked matmul against the CPU backend's (GFLOP/s side by side);
//! - upload and download against a host memcpy of the same bytes;
//! - an add of dense f32 operands (the `flat` kernel: no index arithmetic, 4 elements per
//!   invocation) against the same add over transposed views (the strided kernel);
//! - row softmax over 4096×1024 f32 against the CPU backend's;
//! - the fixed cost of one tiny op (run + synchronize) against the CPU backend's.
//!
//! `cargo bench --bench gpu`; devices that cannot be found are reported and skipped.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use manychips::{CpuDevice, DType, DeviceRef, MatmulKernel, Op, Tensor};

mod common;
use common::Pair;

/// A GPU device under test, with a way to pick its matmul kernel.
struct Gpu {
    device: DeviceRef,
    set_kernel: Arc<dyn Fn(MatmulKernel)>,
}

fn gpus() -> Vec<Gpu> {
    let mut found = Vec::new();
    #[cfg(feature = "wgpu")]
    match manychips_wgpu::discover() {
        Ok(devices) => {
            for dev in devices {
                let dev = Arc::new(dev);
                let handle = dev.clone();
                found.push(Gpu {
                    device: dev,
                    set_kernel: Arc::new(move |k| handle.set_matmul_kernel(k)),
                });
            }
        }
        Err(err) => println!("skipping wgpu: {err}"),
    }
    #[cfg(feature = "vulkan")]
    match manychips_vulkan::discover() {
        Ok(devices) => {
            for dev in devices {
                let dev = Arc::new(dev);
                let handle = dev.clone();
                found.push(Gpu {
                    device: dev,
                    set_kernel: Arc::new(move |k| handle.set_matmul_kernel(k)),
                });
            }
        }
        Err(err) => println!("skipping vulkan: {err}"),
    }
    found
}

fn matmul_run(a: &Tensor, b: &Tensor) -> impl FnMut() + use<> {
    let (a, b) = (a.clone(), b.clone());
    move || {
        black_box(a.matmul(&b).unwrap());
        a.device().synchronize().unwrap();
    }
}

fn pairs_for(gpu: &Gpu, cpu: &DeviceRef) -> Vec<Pair> {
    use MatmulKernel::{Naive, RegisterBlocked, SharedTiles};
    let dev = &gpu.device;
    let name = dev.info().label();
    let mut pairs = Vec::new();
    for n in [512usize, 1024] {
        let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, dev).unwrap();
        let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, dev).unwrap();
        let (set_blocked, set_naive) = (gpu.set_kernel.clone(), gpu.set_kernel.clone());
        let (mut blocked, mut naive) = (matmul_run(&a, &b), matmul_run(&a, &b));
        pairs.push(Pair {
            group: format!("{name}_matmul_f32"),
            label: format!("{n}"),
            ours_name: "blocked",
            baseline: "naive",
            target: ">= 4",
            throughput: Throughput::Elements((2 * n * n * n) as u64),
            ours: Box::new(move || {
                set_blocked(RegisterBlocked);
                blocked()
            }),
            base: Box::new(move || {
                set_naive(Naive);
                naive()
            }),
        });
    }
    let n = 1024;
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, dev).unwrap();
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, dev).unwrap();
    let (set_tiled, set_naive) = (gpu.set_kernel.clone(), gpu.set_kernel.clone());
    let (mut tiled, mut naive) = (matmul_run(&a, &b), matmul_run(&a, &b));
    pairs.push(Pair {
        group: format!("{name}_matmul_f32"),
        label: format!("{n}_tiled"),
        ours_name: "shared_tiles",
        baseline: "naive",
        target: ">= 4",
        throughput: Throughput::Elements((2 * n * n * n) as u64),
        ours: Box::new(move || {
            set_tiled(SharedTiles);
            tiled()
        }),
        base: Box::new(move || {
            set_naive(Naive);
            naive()
        }),
    });
    let (ca, cb) = (a.to_device(cpu).unwrap(), b.to_device(cpu).unwrap());
    let set_blocked = gpu.set_kernel.clone();
    let mut ours = matmul_run(&a, &b);
    pairs.push(Pair {
        group: format!("{name}_vs_cpu_matmul_f32"),
        label: format!("{n}"),
        ours_name: name.clone().leak(),
        baseline: "cpu:0",
        target: "report",
        throughput: Throughput::Elements((2 * n * n * n) as u64),
        ours: Box::new(move || {
            set_blocked(RegisterBlocked);
            ours()
        }),
        base: Box::new(matmul_run(&ca, &cb)),
    });

    let bytes = 64 << 20;
    let host = vec![1u8; bytes];
    let mut back = vec![0u8; bytes];
    let (upload_src, mut upload_dst) = (host.clone(), vec![0u8; bytes]);
    let (download_src, mut download_dst) = (host.clone(), vec![0u8; bytes]);
    let buffer = dev.alloc(bytes).unwrap();
    let (up, down) = (dev.clone(), dev.clone());
    pairs.push(Pair {
        group: format!("{name}_upload"),
        label: "64MiB".into(),
        ours_name: "write",
        baseline: "host_memcpy",
        target: "report",
        throughput: Throughput::Bytes(bytes as u64),
        ours: Box::new(move || {
            up.write(buffer, 0, &host).unwrap();
            up.synchronize().unwrap();
        }),
        base: Box::new(move || {
            upload_dst.copy_from_slice(&upload_src);
            black_box(&mut upload_dst);
        }),
    });
    pairs.push(Pair {
        group: format!("{name}_download"),
        label: "64MiB".into(),
        ours_name: "read",
        baseline: "host_memcpy",
        target: "report",
        throughput: Throughput::Bytes(bytes as u64),
        ours: Box::new(move || down.read(buffer, 0, &mut back).unwrap()),
        base: Box::new(move || {
            download_dst.copy_from_slice(&download_src);
            black_box(&mut download_dst);
        }),
    });

    // 4M f32 each way: the dense add and the same add with both inputs transposed.
    let side = 2048;
    let x = Tensor::randn(0.0, 1.0, [side, side], DType::F32, 3, dev).unwrap();
    let y = Tensor::randn(0.0, 1.0, [side, side], DType::F32, 4, dev).unwrap();
    let (xt, yt) = (x.transpose(0, 1).unwrap(), y.transpose(0, 1).unwrap());
    let add = |a: Tensor, b: Tensor| {
        move || {
            black_box(a.add(&b).unwrap());
            a.device().synchronize().unwrap();
        }
    };
    pairs.push(Pair {
        group: format!("{name}_add_f32"),
        label: "4M".into(),
        ours_name: "dense",
        baseline: "transposed",
        target: ">= 2",
        throughput: Throughput::Bytes((3 * 4 * side * side) as u64),
        ours: Box::new(add(x, y)),
        base: Box::new(add(xt, yt)),
    });
    let rows = Tensor::randn(0.0, 1.0, [4096, 1024], DType::F32, 5, dev).unwrap();
    let cpu_rows = rows.to_device(cpu).unwrap();
    let softmax = |t: Tensor| {
        move || {
            black_box(t.softmax(1).unwrap());
            t.device().synchronize().unwrap();
        }
    };
    pairs.push(Pair {
        group: format!("{name}_softmax_f32"),
        label: "4096x1024".into(),
        ours_name: name.clone().leak(),
        baseline: "cpu:0",
        target: "report",
        throughput: Throughput::Bytes((2 * 4 * 4096 * 1024) as u64),
        ours: Box::new(softmax(rows)),
        base: Box::new(softmax(cpu_rows)),
    });
    pairs.push(common::gelu_backward_pair(dev, &format!("{name}_gelu_backward_f32"), 1 << 20));
    let tiny = |dev: &DeviceRef| {
        let t = Tensor::zeros([4], DType::F32, dev).unwrap();
        let dev = dev.clone();
        move || {
            dev.run(&Op::Fill { out: t.view(), value: 1.0 }).unwrap();
            dev.synchronize().unwrap();
        }
    };
    pairs.push(Pair {
        group: format!("{name}_tiny_op_latency"),
        label: "fill4".into(),
        ours_name: name.leak(),
        baseline: "cpu:0",
        target: "report",
        throughput: Throughput::Elements(0),
        ours: Box::new(tiny(dev)),
        base: Box::new(tiny(cpu)),
    });
    pairs
}

fn main() {
    let cpu: DeviceRef = Arc::new(CpuDevice::new().expect("cpu device"));
    let gpus = gpus();
    let mut pairs: Vec<Pair> = gpus.iter().flat_map(|gpu| pairs_for(gpu, &cpu)).collect();
    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
}
