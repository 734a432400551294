//! The CUDA bench table, each figure beside what it is measured against in the same run:
//! cuBLAS GEMM (bf16, f16, f32, TF32 at 4096 and 8192) against the card's peak and the
//! backend's tiled kernel, elementwise add against a device-to-device copy of the same bytes,
//! pinned against pageable host transfers, a tiny op's latency against the CPU device's, and
//! the same GEMM through the Vulkan and wgpu views of the card.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use manychips::{BinaryOp, BufferId, DType, Device, DeviceRef, Layout, Op, Result, View};
use manychips_cuda::{CudaDevice, MatmulPath, Staging};
use serde_json::{Value, json};

use crate::out::Out;

/// Median seconds of `f` over at least `reps` runs and about `min_s` seconds, after one
/// warm-up run.
pub fn time(reps: usize, min_s: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < reps || (start.elapsed().as_secs_f64() < min_s && times.len() < 200) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn view(buf: BufferId, dims: &[usize], dtype: DType) -> View {
    View::new(buf, Layout::contiguous(dims), dtype)
}

fn filled(dev: &dyn Device, n: usize, dtype: DType, value: f64) -> Result<BufferId> {
    let buf = dev.alloc(n * dtype.size_in_bytes())?;
    dev.run(&Op::Fill { out: view(buf, &[n], dtype), value })?;
    Ok(buf)
}

/// Dense peak TFLOP/s (bf16, f16, TF32, f32) of the cards this is likely to meet, by name.
fn peak_tflops(name: &str) -> Option<[f64; 4]> {
    let sxm = [989.4, 989.4, 494.7, 66.9];
    if name.contains("H200") || (name.contains("H100") && !name.contains("PCIe")) {
        Some(sxm)
    } else if name.contains("H100") {
        Some([756.0, 756.0, 378.0, 51.2])
    } else if name.contains("A100") {
        Some([312.0, 312.0, 156.0, 19.5])
    } else {
        None
    }
}

/// n×n×n GEMM seconds on `dev`.
fn gemm_s(dev: &dyn Device, n: usize, dtype: DType, reps: usize) -> Result<f64> {
    let (a, b, c) = (
        filled(dev, n * n, dtype, 0.01)?,
        filled(dev, n * n, dtype, 0.02)?,
        filled(dev, n * n, dtype, 0.0)?,
    );
    let op = Op::Matmul {
        lhs: view(a, &[n, n], dtype),
        rhs: view(b, &[n, n], dtype),
        out: view(c, &[n, n], dtype),
    };
    let secs = time(reps, 0.3, || {
        dev.run(&op)?;
        dev.synchronize()
    });
    for buf in [a, b, c] {
        let _ = dev.free(buf);
    }
    secs
}

fn gemm_table(out: &mut Out, cuda: &CudaDevice) -> Result<Vec<Value>> {
    let peaks = peak_tflops(&cuda.info().name);
    let mut rows = Vec::new();
    for n in [4096usize, 8192] {
        let flops = 2.0 * (n as f64).powi(3);
        let cases = [
            ("bf16", DType::BF16, false, 0),
            ("f16", DType::F16, false, 1),
            ("tf32", DType::F32, true, 2),
            ("f32", DType::F32, false, 3),
        ];
        for (name, dtype, tf32, peak_at) in cases {
            cuda.set_matmul_path(MatmulPath::Cublas);
            cuda.set_tf32(tf32);
            let secs = gemm_s(cuda, n, dtype, 5)?;
            cuda.set_tf32(false);
            let tflops = flops / secs / 1e12;
            let of_peak = peaks.map(|p| tflops / p[peak_at]);
            // The tiled kernel as the same-run baseline, at 4096 only (8192 takes seconds).
            let tiled = if n == 4096 && !tf32 {
                cuda.set_matmul_path(MatmulPath::Tiled);
                let s = gemm_s(cuda, n, dtype, 2)?;
                cuda.set_matmul_path(MatmulPath::Cublas);
                Some(flops / s / 1e12)
            } else {
                None
            };
            out.line(&format!(
                "gemm {name:<5} n={n:<5} {tflops:>7.1} TFLOP/s{}{}",
                of_peak.map_or(String::new(), |f| format!("  {:>5.1}% of peak", f * 100.0)),
                tiled.map_or(String::new(), |t| format!(
                    "  (tiled kernel {t:.1}: cuBLAS {:.1}×)",
                    tflops / t
                )),
            ));
            rows.push(json!({ "dtype": name, "n": n, "tflops": tflops, "of_peak": of_peak, "tiled_tflops": tiled }));
        }
    }
    Ok(rows)
}

fn bandwidth(out: &mut Out, cuda: &CudaDevice, cpu: &DeviceRef) -> Result<Value> {
    // add reads 2 × 256 MiB and writes 256 MiB; the copy moves the same 768 MiB.
    let n = 64 << 20;
    let (x, y, z) = (
        filled(cuda, n, DType::F32, 1.0)?,
        filled(cuda, n, DType::F32, 2.0)?,
        filled(cuda, n, DType::F32, 0.0)?,
    );
    let add = Op::Binary {
        op: BinaryOp::Add,
        lhs: view(x, &[n], DType::F32),
        rhs: view(y, &[n], DType::F32),
        out: view(z, &[n], DType::F32),
    };
    let half = 3 * n * 4 / 2;
    let (src, dst) = (cuda.alloc(half)?, cuda.alloc(half)?);
    let add_s = time(10, 0.3, || {
        cuda.run(&add)?;
        cuda.synchronize()
    })?;
    let copy_s = time(10, 0.3, || {
        cuda.copy(src, 0, dst, 0, half)?;
        cuda.synchronize()
    })?;
    let bytes = (3 * n * 4) as f64;
    let (add_gbs, copy_gbs) = (bytes / add_s / 1e9, bytes / copy_s / 1e9);
    out.line(&format!(
        "add f32 64Mi      {add_gbs:>7.0} GB/s  (device copy {copy_gbs:.0} GB/s: {:.2}×)",
        add_gbs / copy_gbs
    ));
    for buf in [x, y, z, src, dst] {
        let _ = cuda.free(buf);
    }

    let size = 256 << 20;
    let host = vec![1u8; size];
    let mut back = vec![0u8; size];
    let buf = cuda.alloc(size)?;
    let mut transfers = serde_json::Map::new();
    for staging in [Staging::Pinned, Staging::Pageable] {
        cuda.set_staging(staging);
        let h2d = time(5, 0.3, || {
            cuda.write(buf, 0, &host)?;
            cuda.synchronize()
        })?;
        let d2h = time(5, 0.3, || {
            cuda.read(buf, 0, &mut back)?;
            black_box(&mut back);
            Ok(())
        })?;
        let name = format!("{staging:?}").to_lowercase();
        let (h, d) = (size as f64 / h2d / 1e9, size as f64 / d2h / 1e9);
        out.line(&format!(
            "{name:<9} 256MiB  host→device {h:>6.1} GB/s, device→host {d:>6.1} GB/s"
        ));
        transfers.insert(name, json!({ "h2d_gbs": h, "d2h_gbs": d }));
    }
    cuda.set_staging(Staging::Pinned);
    let _ = cuda.free(buf);

    let tiny = |dev: &dyn Device| -> Result<f64> {
        let (a, b, c) = (
            filled(dev, 1, DType::F32, 1.0)?,
            filled(dev, 1, DType::F32, 2.0)?,
            filled(dev, 1, DType::F32, 0.0)?,
        );
        let op = Op::Binary {
            op: BinaryOp::Add,
            lhs: view(a, &[1], DType::F32),
            rhs: view(b, &[1], DType::F32),
            out: view(c, &[1], DType::F32),
        };
        time(200, 0.3, || {
            dev.run(&op)?;
            dev.synchronize()
        })
    };
    let (gpu_us, cpu_us) = (tiny(cuda)? * 1e6, tiny(cpu.as_ref())? * 1e6);
    out.line(&format!("tiny op + sync    {gpu_us:>7.1} µs  (cpu:0 {cpu_us:.1} µs)"));
    Ok(json!({
        "add_gbs": add_gbs, "device_copy_gbs": copy_gbs, "add_vs_copy": add_gbs / copy_gbs,
        "transfers_256MiB": transfers, "tiny_op_us": gpu_us, "tiny_op_cpu_us": cpu_us,
    }))
}

/// Causal bf16 attention of 32 heads × 2048 tokens × 128 as `dev` runs it (on CUDA, the
/// decomposition: cuBLAS matmuls, the masked scale, a softmax), forward and backward, in
/// TFLOP/s of the op's own flops: what a fused attention kernel for the GPU backends would
/// have to beat, next to the same device's GEMM rate.
fn attention_row(out: &mut Out, dev: &dyn Device) -> Result<Value> {
    let (dims, dtype) = ([32usize, 2048, 128], DType::BF16);
    let n: usize = dims.iter().product();
    let bufs = [
        filled(dev, n, dtype, 0.01)?,
        filled(dev, n, dtype, 0.02)?,
        filled(dev, n, dtype, 0.03)?,
        filled(dev, n, dtype, 0.01)?,
        filled(dev, n, dtype, 0.0)?,
        filled(dev, 3 * n, dtype, 0.0)?,
    ];
    let [q, k, v, g, o, grads] = bufs.map(|b| view(b, &dims, dtype));
    let grads = view(grads.buffer, &[3, dims[0], dims[1], dims[2]], dtype);
    let (scale, causal) = (1.0 / (dims[2] as f64).sqrt(), true);
    let forward = Op::Attention { q: q.clone(), k: k.clone(), v: v.clone(), out: o, scale, causal };
    let backward = Op::AttentionBackward { q, k, v, d_out: g, out: grads, scale, causal };
    let mut rows = Vec::new();
    for (name, op) in [("forward", &forward), ("backward", &backward)] {
        let secs = time(3, 0.3, || {
            dev.run(op)?;
            dev.synchronize()
        });
        match secs {
            Ok(s) => {
                let tflops = op.flops() / s / 1e12;
                out.line(&format!(
                    "attention bf16 32x2048x128 causal {name}: {:.2} ms, {tflops:.1} TFLOP/s{}",
                    s * 1e3,
                    if dev.has_attention_kernel() { "" } else { " (decomposed)" }
                ));
                rows.push(json!({ "pass": name, "ms": s * 1e3, "tflops": tflops }));
            }
            Err(e) => {
                out.line(&format!("attention {name}: {e}"));
                rows.push(json!({ "pass": name, "error": e.to_string() }));
            }
        }
    }
    for buf in bufs {
        let _ = dev.free(buf);
    }
    Ok(json!({ "kernel": dev.has_attention_kernel(), "rows": rows }))
}

/// The bench table of one CUDA device.
pub fn cuda(out: &mut Out, cuda: &Arc<CudaDevice>, cpu: &DeviceRef) -> Value {
    let label = cuda.info().label();
    out.line(&format!(
        "{label} {}: compute capability {:?}, kernels for {}, cuBLAS {}",
        cuda.info().name,
        cuda.compute_capability(),
        cuda.kernel_target().unwrap_or_default(),
        cuda.has_cublas()
    ));
    let warm = Instant::now();
    if let Err(e) = cuda.warm_up() {
        out.line(&format!("{label}: kernels did not build: {e}"));
        return json!({ "device": label, "error": e.to_string() });
    }
    let warm_s = warm.elapsed().as_secs_f64();
    out.line(&format!("kernels built and loaded in {warm_s:.1} s"));
    let gemm = gemm_table(out, cuda).map_err(|e| e.to_string());
    let bw = bandwidth(out, cuda, cpu).map_err(|e| e.to_string());
    let attention = attention_row(out, cuda.as_ref()).map_err(|e| e.to_string());
    let failed = [("gemm", gemm.as_ref().err()), ("bandwidth", bw.as_ref().err())]
        .into_iter()
        .chain([("attention", attention.as_ref().err())]);
    for (what, r) in failed {
        if let Some(e) = r {
            out.line(&format!("{label} {what}: {e}"));
        }
    }
    json!({
        "device": label, "name": cuda.info().name, "kernel_warm_up_s": warm_s,
        "gemm": gemm.map(Value::from).unwrap_or_else(|e| json!({ "error": e })),
        "bandwidth": bw.unwrap_or_else(|e| json!({ "error": e })),
        "attention": attention.unwrap_or_else(|e| json!({ "error": e })),
    })
}

/// f32 and f16 GEMM at 4096 through a Vulkan or wgpu device.
pub fn vulkan_gemm(out: &mut Out, dev: &DeviceRef) -> Value {
    let label = dev.info().label();
    let mut rows = Vec::new();
    for (name, dtype) in [("f32", DType::F32), ("f16", DType::F16)] {
        if !dev.info().supports(dtype) {
            continue;
        }
        let n = 4096;
        match gemm_s(dev.as_ref(), n, dtype, 3) {
            Ok(s) => {
                let tflops = 2.0 * (n as f64).powi(3) / s / 1e12;
                out.line(&format!("{label} gemm {name} n={n}: {tflops:.2} TFLOP/s"));
                rows.push(json!({ "dtype": name, "n": n, "tflops": tflops }));
            }
            Err(e) => {
                out.line(&format!("{label} gemm {name} n={n}: {e}"));
                rows.push(json!({ "dtype": name, "n": n, "error": e.to_string() }));
            }
        }
    }
    json!({ "device": label, "name": dev.info().name, "gemm": rows })
}
