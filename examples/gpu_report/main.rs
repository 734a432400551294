//! What a lent GPU machine can tell in a few minutes, as one JSON and one text summary: the
//! CUDA libraries found, every device (CUDA, Vulkan, wgpu) with its identity, the conformance
//! kit on each, the CUDA bench table (with attention as the backend runs it), the character
//! transformer's step on `cuda:0` (beside
//! PyTorch's on the same GPU when `--torch` names `scripts/peers/charlm_step.py`'s JSON), a
//! planned matmul split and a data-parallel step over the GPU and the CPU.
//!
//! `scripts/gpu-bundle.sh` builds it into a bundle that runs where there is no Rust; see the
//! README's CUDA section. Here:
//!
//!     cargo run --release --example gpu_report -- --out target/gpu-report
//!     cargo run --release --example gpu_report -- --dry-run   # no GPU: stand-ins, few steps
//!
//! Every section is written to `--out` as soon as it is done, so a run cut short keeps what
//! it measured; sections that would start after `--budget-s` are skipped and say so.

mod bench;
mod out;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use manychips::conformance::{self, Config};
use manychips::plan::{Calibration, DeviceProfile, Planner};
use manychips::{DType, Device, DeviceRef, Fleet, Tensor};
use serde_json::{Value, json};

use out::Out;

/// As in the training examples (`examples/common`): mimalloc, not the system's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KitOnSoftware {
    /// Software rasterizers (lavapipe) are listed but not checked: CI's tests check them.
    Skip,
    /// Two op families only, to run the kit's code path.
    Smoke,
    Full,
}

#[derive(Parser, Debug)]
#[command(about = "Measure this machine's GPUs: devices, conformance kit, CUDA benches, training")]
struct Args {
    /// Where gpu-report.json and gpu-report.txt go.
    #[arg(long, default_value = "target/gpu-report")]
    out: PathBuf,
    /// Timed training steps per model shape (after the warm-up steps).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    steps: u64,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=1000))]
    warmup: u64,
    /// Sections that would start after this many seconds are skipped.
    #[arg(long, default_value_t = 270.0)]
    budget_s: f64,
    /// The JSON of `scripts/peers/charlm_step.py` run on the same GPU, for same-run ratios.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// The conformance kit on software Vulkan devices (lavapipe).
    #[arg(long, value_enum, default_value_t = KitOnSoftware::Skip)]
    kit_software: KitOnSoftware,
    /// No GPU expected: the GPU sections say what they skipped; the training, split and
    /// data-parallel sections run on the devices there are (the CPU at least), small shape,
    /// two steps, so every code path runs.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.budget_s.is_finite() && args.budget_s > 0.0) {
        eprintln!("error: --budget-s must be a positive number of seconds");
        return ExitCode::FAILURE;
    }
    let mut out = match Out::new(&args.out, args.budget_s) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = run(&args, &mut out);
    out.save();
    let [json, text] = out.paths();
    println!("\nwrote {} and {}", json.display(), text.display());
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A software Vulkan implementation: a CPU pretending to be a GPU.
fn is_software(dev: &DeviceRef) -> bool {
    let name = dev.info().name.to_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader"].iter().any(|s| name.contains(s))
}

/// Runs every section; false when one could not run at all (a report was still written).
fn run(args: &Args, out: &mut Out) -> bool {
    out.line(&format!(
        "manychips {} gpu_report{}, commit {}",
        env!("CARGO_PKG_VERSION"),
        if args.dry_run { " (dry run)" } else { "" },
        option_env!("MANYCHIPS_COMMIT").unwrap_or("unknown")
    ));
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.to_string()))
        .and_then(|l| l.split(':').nth(1).map(|m| m.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    out.line(&format!("host: {cpu_model}, {cores} threads"));
    out.set(
        "host",
        json!({ "cpu": cpu_model, "threads": cores, "dry_run": args.dry_run,
                "commit": option_env!("MANYCHIPS_COMMIT") }),
    );

    out.heading("CUDA libraries");
    let mut libraries = serde_json::Map::new();
    for (name, found) in manychips_cuda::libraries() {
        match &found {
            Ok(at) => out.line(&format!("{name}: {at}")),
            Err(why) => out.line(&format!("{name}: not found: {why}")),
        }
        libraries.insert(name.into(), found.map_or_else(|e| json!({ "missing": e }), Value::from));
    }
    out.set("libraries", Value::Object(libraries));

    out.heading("devices");
    let found = manychips::discover();
    let mut devices = Vec::new();
    for dev in &found.devices {
        let info = dev.info();
        out.line(&format!(
            "{:<9} {} | {} | {} | {:.1} GiB | {:?}{}",
            info.label(),
            info.name,
            info.vendor,
            info.driver_version,
            info.memory_total as f64 / (1u64 << 30) as f64,
            info.identity,
            if is_software(dev) { " | software" } else { "" }
        ));
        devices.push(json!({
            "label": info.label(), "name": info.name, "vendor": info.vendor,
            "driver": info.driver_version, "identity": format!("{:?}", info.identity),
            "memory_bytes": info.memory_total, "software": is_software(dev),
            "dtypes": info.dtypes.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        }));
    }
    let unavailable: Vec<String> = found.unavailable.iter().map(|e| e.to_string()).collect();
    for why in &unavailable {
        out.line(&format!("unavailable: {why}"));
    }
    out.set("devices", json!({ "found": devices, "unavailable": unavailable }));
    let Some(cpu) = found.devices.iter().find(|d| d.info().backend == "cpu").cloned() else {
        out.line("no CPU device: nothing else can run");
        return false;
    };
    let gpus: Vec<DeviceRef> =
        found.devices.iter().filter(|d| d.info().backend != "cpu").cloned().collect();

    if out.may_start("kit") {
        out.heading("conformance kit");
        let kit = kit(out, &gpus, args);
        out.set("kit", kit);
    }

    let cuda: Vec<Arc<manychips_cuda::CudaDevice>> = match manychips_cuda::discover() {
        Ok(devices) => devices.into_iter().map(Arc::new).collect(),
        Err(e) => {
            out.line(&format!("\nno CUDA device: {e}"));
            Vec::new()
        }
    };
    if out.may_start("bench") {
        out.heading("CUDA bench table");
        let mut tables: Vec<Value> = cuda.iter().map(|c| bench::cuda(out, c, &cpu)).collect();
        for dev in gpus.iter().filter(|d| d.info().backend != "cuda" && !is_software(d)) {
            tables.push(bench::vulkan_gemm(out, dev));
        }
        if tables.is_empty() {
            out.line("skipped: no CUDA device and no hardware Vulkan or wgpu device");
        }
        out.set("bench", Value::from(tables));
    }

    // The device the training sections run on: the first CUDA device; in a dry run without
    // one, the CPU stands in so that the code runs.
    let primary: Option<DeviceRef> = gpus
        .iter()
        .find(|d| d.info().backend == "cuda")
        .cloned()
        .or_else(|| args.dry_run.then(|| cpu.clone()));
    let Some(primary) = primary else {
        for section in ["train", "split", "data_parallel"] {
            out.line(&format!("{section}: skipped, no CUDA device (--dry-run runs it on the CPU)"));
            out.set(section, json!({ "skipped": "no CUDA device" }));
        }
        return true;
    };
    // Who shares the split and the data-parallel step with it: the CPU, or (when the CPU
    // is the stand-in) the first other device.
    let partner: Option<DeviceRef> =
        if primary.info().backend == "cpu" { gpus.first().cloned() } else { Some(cpu.clone()) };
    let mut pair = vec![primary.clone()];
    pair.extend(partner.clone());
    let profiles = match profiles(&pair) {
        Ok(p) => p,
        Err(e) => {
            out.line(&format!("calibration failed: {e}"));
            out.set("train", json!({ "error": format!("calibration: {e}") }));
            return false;
        }
    };
    let labels = pair.iter().map(|d| d.info().label()).collect::<Vec<_>>().join(" and ");
    let (shapes, warmup, steps) = if args.dry_run {
        (&train::SHAPES[..1], 1, 2)
    } else {
        (&train::SHAPES[..], args.warmup as usize, args.steps as usize)
    };
    let torch: Option<Value> = args.torch.as_ref().and_then(|p| {
        let read = std::fs::read_to_string(p).map_err(|e| e.to_string());
        match read.and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string())) {
            Ok(v) => Some(v),
            Err(e) => {
                out.line(&format!("--torch {}: {e}", p.display()));
                None
            }
        }
    });

    let mut alone_ms = None;
    if out.may_start("train") {
        out.heading(&format!("char transformer on {}", primary.info().label()));
        let mut rows = Vec::new();
        for &shape in shapes {
            let one = vec![(primary.clone(), profiles[0].clone())];
            let mut row = train::steps(one, shape, warmup, steps)
                .unwrap_or_else(|e| json!({ "shape": shape.name, "error": e.to_string() }));
            let torch_ms =
                torch.as_ref().and_then(|t| t["configs"][shape.name]["ms_per_step"].as_f64());
            let ours = row["ms_per_step"].as_f64();
            if shape.name == "small" {
                alone_ms = ours;
            }
            if let (Some(ours), Some(theirs)) = (ours, torch_ms) {
                row["torch_ms_per_step"] = json!(theirs);
                row["ratio_vs_torch"] = json!(theirs / ours);
            }
            out.line(&describe_step(&row));
            rows.push(row);
        }
        if let Some(t) = &torch {
            out.line(&format!("PyTorch {} on {}", t["torch"], t["device"]));
        }
        out.set("train", Value::from(rows));
    }

    if out.may_start("split") {
        out.heading(&format!("planned matmul over {labels}"));
        let split = split(out, &pair, &cpu, if args.dry_run { 512 } else { 4096 });
        out.set("split", split.unwrap_or_else(|e| json!({ "error": e.to_string() })));
    }

    if pair.len() < 2 {
        out.line("data_parallel: skipped, only one device");
        out.set("data_parallel", json!({ "skipped": "only one device" }));
    } else if out.may_start("data_parallel") {
        out.heading(&format!("data-parallel step over {labels}"));
        let both = pair.iter().cloned().zip(profiles.iter().cloned()).collect();
        let mut row = train::steps(both, train::SHAPES[0], warmup, steps)
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        if let (Some(both), Some(alone)) = (row["ms_per_step"].as_f64(), alone_ms) {
            row["alone_ms_per_step"] = json!(alone);
            row["speedup_vs_alone"] = json!(alone / both);
        }
        out.line(&describe_step(&row));
        out.set("data_parallel", row);
    }
    true
}

fn describe_step(row: &Value) -> String {
    if let Some(e) = row["error"].as_str() {
        return format!("{}: {e}", row["shape"].as_str().unwrap_or("step"));
    }
    let mut line = format!(
        "{} ({} layers, dim {}, context {}, batch {}, {} weights): {:.2} ms/step, loss {:.3} -> {:.3} | {}",
        row["shape"].as_str().unwrap_or("?"),
        row["layers"],
        row["dim"],
        row["context"],
        row["batch"],
        row["weights"],
        row["ms_per_step"].as_f64().unwrap_or(f64::NAN),
        row["loss_first"].as_f64().unwrap_or(f64::NAN),
        row["loss_last"].as_f64().unwrap_or(f64::NAN),
        row["shares"].as_str().unwrap_or("")
    );
    if let (Some(t), Some(r)) = (row["torch_ms_per_step"].as_f64(), row["ratio_vs_torch"].as_f64())
    {
        line += &format!(" | PyTorch {t:.2} ms: {r:.2}×");
    }
    if let Some(s) = row["speedup_vs_alone"].as_f64() {
        line += &format!(" | {s:.2}× the primary alone");
    }
    line
}

fn profiles(devices: &[DeviceRef]) -> manychips::Result<Vec<DeviceProfile>> {
    let refs: Vec<&dyn Device> = devices.iter().map(|d| d.as_ref()).collect();
    Calibration::new().load_or_measure_all(&refs, false)
}

fn kit(out: &mut Out, gpus: &[DeviceRef], args: &Args) -> Value {
    let mut reports = Vec::new();
    if gpus.is_empty() {
        out.line("skipped: no GPU device (the CPU's kit runs in the tests)");
    }
    for dev in gpus {
        let label = dev.info().label();
        let config = match (is_software(dev), args.kit_software) {
            (true, KitOnSoftware::Skip) => {
                let why = "a software rasterizer: CI's tests run the kit on it (--kit-software)";
                out.line(&format!("{label} {}: skipped, {why}", dev.info().name));
                reports.push(json!({ "device": label, "skipped": why }));
                continue;
            }
            (true, KitOnSoftware::Smoke) => Config::quick().only("binary.add").only("matmul"),
            _ => Config::full(),
        };
        let start = Instant::now();
        let report = conformance::check_with(dev.as_ref(), &config);
        let secs = start.elapsed().as_secs_f64();
        let failures: Vec<String> = report
            .failures()
            .iter()
            .take(40)
            .map(|f| format!("{} {}: {} — {}", f.op, f.dtype, f.case, f.problem))
            .collect();
        let failed: usize = report.ops.iter().map(|o| o.failed).sum();
        out.line(&format!(
            "{label} {}: {} cases over {} (op, dtype) pairs, {failed} failed, {} pairs skipped, {secs:.1} s",
            dev.info().name,
            report.cases(),
            report.ops.len(),
            report.skipped.len()
        ));
        for f in failures.iter().take(10) {
            out.line(&format!("  FAIL {f}"));
        }
        reports.push(json!({
            "device": label, "name": dev.info().name, "sizes": format!("{:?}", report.sizes),
            "cases": report.cases(), "pairs": report.ops.len(), "failed": failed,
            "failed_ops": report.failed_ops().into_iter().collect::<Vec<_>>(),
            "skipped": report.skipped.iter().map(|s| format!("{} {}: {}", s.op, s.dtype, s.reason)).collect::<Vec<_>>(),
            "failures": failures, "seconds": secs,
        }));
    }
    Value::from(reports)
}

/// An n×n f32 matmul from host memory back to host memory: on `pair[0]` alone, and as the
/// planner splits it over `pair` (and the CPU, the fleet's host).
fn split(out: &mut Out, pair: &[DeviceRef], cpu: &DeviceRef, n: usize) -> manychips::Result<Value> {
    let primary = &pair[0];
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, cpu)?;
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, cpu)?;
    let alone_s = bench::time(3, 0.5, || {
        let c = a.to_device(primary)?.matmul(&b.to_device(primary)?)?;
        c.to_device(cpu)?.to_vec::<f32>().map(drop)
    })?;
    let mut devices = pair.to_vec();
    if !devices.iter().any(|d| d.info().backend == "cpu") {
        devices.push(cpu.clone());
    }
    let fleet = Fleet::from_devices(devices, None)?;
    let mut planner = Planner::for_fleet(&fleet, &Calibration::new())?;
    let planned_s = bench::time(3, 0.5, || planner.matmul(&a, &b)?.to_vec::<f32>().map(drop))?;
    let explain = planner.last_plan().map(|p| p.explain()).unwrap_or_default();
    let gflops = |s: f64| 2.0 * (n as f64).powi(3) / s / 1e9;
    out.line(&explain);
    out.line(&format!(
        "n={n} f32, host to host: {} alone {:.1} ms ({:.0} GFLOP/s), planned {:.1} ms ({:.0} GFLOP/s): {:.2}×",
        primary.info().label(),
        alone_s * 1e3,
        gflops(alone_s),
        planned_s * 1e3,
        gflops(planned_s),
        alone_s / planned_s
    ));
    Ok(json!({
        "n": n, "alone_ms": alone_s * 1e3, "planned_ms": planned_s * 1e3,
        "speedup": alone_s / planned_s, "plan": explain,
    }))
}
