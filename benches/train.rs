//! Training benches.
//!
//! 1. Framework overhead: one training step (forward, backward, AdamW) of the digits MLP and
//!    of the char-LM transformer on the CPU device (and the MLP's on the first Vulkan
//!    device), against replaying the very ops that step enqueued straight on the device
//!    (recorded by a wrapper device). The ratio replay/step is the share of the step spent
//!    in kernels; target ≥ 0.90 (overhead ≤ 10%).
//! 2. Data-parallel throughput: MLP steps at a global batch of 1024 on CPU + lavapipe and on
//!    CPU + two simulated chips, against the CPU alone, in the same process.
//!
//! `cargo bench --bench train`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::hint::black_box;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use manychips::plan::{Calibration, DeviceProfile};
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::checkpoint::write_checkpoint;
use manychips::train::models::{Gpt, GptConfig, Mlp};
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Reduction};
use manychips::train::optim::{AdamW, Optimizer};
use manychips::train::{Checkpoints, DataParallel, ParamStore, Snapshot, Var};
use manychips::{
    BufferId, CpuDevice, DType, Device, DeviceInfo, DeviceRef, MemoryInfo, Op, Result, Tensor,
};

mod common;
use common::Pair;

/// Passes everything to `inner`; while recording, keeps a copy of every op. Buffers those
/// ops touch are never freed afterwards, so the ops can be replayed on buffers that exist.
#[derive(Debug)]
struct Recorder {
    inner: DeviceRef,
    recording: AtomicBool,
    ops: Mutex<Vec<Op>>,
    keep: Mutex<HashSet<BufferId>>,
}

impl Recorder {
    fn new(inner: DeviceRef) -> Arc<Recorder> {
        Arc::new(Recorder {
            inner,
            recording: AtomicBool::new(false),
            ops: Mutex::default(),
            keep: Mutex::default(),
        })
    }

    fn record(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Device for Recorder {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn memory(&self) -> Result<MemoryInfo> {
        self.inner.memory()
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.inner.alloc(bytes)
    }
    fn free(&self, buffer: BufferId) -> Result<()> {
        let keep = self.keep.lock().unwrap_or_else(PoisonError::into_inner);
        if keep.contains(&buffer) {
            return Ok(());
        }
        drop(keep);
        self.inner.free(buffer)
    }
    fn write(&self, dst: BufferId, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: BufferId, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.read(src, offset, dst)
    }
    fn copy(&self, src: BufferId, so: usize, dst: BufferId, d: usize, bytes: usize) -> Result<()> {
        self.inner.copy(src, so, dst, d, bytes)
    }
    fn run(&self, op: &Op) -> Result<()> {
        if self.recording.load(Ordering::SeqCst) {
            let mut keep = self.keep.lock().unwrap_or_else(PoisonError::into_inner);
            keep.extend(op.inputs().iter().map(|v| v.buffer));
            keep.insert(op.output().buffer);
            self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op.clone());
        }
        self.inner.run(op)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn has_attention_kernel(&self) -> bool {
        self.inner.has_attention_kernel()
    }
}

/// A training step to time: builds the loss on `device` and updates the parameters.
type Step = Box<dyn FnMut()>;

/// (step, replay of its ops, number of ops) on `device` for a model whose one step `make`
/// returns.
fn overhead_pair(name: &str, device: DeviceRef, make: impl FnOnce(DeviceRef) -> Step) -> Pair {
    let recorder = Recorder::new(device.clone());
    let mut step = make(recorder.clone() as DeviceRef);
    for _ in 0..3 {
        step(); // warm-up: optimizer state exists, caches are hot
    }
    recorder.record(true);
    step();
    recorder.record(false);
    let ops = recorder.ops();
    println!("{name}: one step enqueues {} ops", ops.len());
    let replay_device = device;
    Pair {
        group: "train_step_overhead".into(),
        label: name.into(),
        ours_name: "full step",
        baseline: "its ops replayed",
        target: ">= 0.90",
        throughput: Throughput::Elements(0),
        ours: Box::new(step),
        base: Box::new(move || {
            for op in &ops {
                replay_device.run(op).expect("replay");
            }
            replay_device.synchronize().expect("sync");
        }),
    }
}

fn mlp_step(device: DeviceRef) -> Step {
    let store = ParamStore::new(&device, 0);
    let model = Mlp::new(&store, &[64, 128, 10], Activation::Relu).expect("mlp");
    let mut opt = AdamW::new(store.params(), 1e-3).expect("lr");
    let x = Tensor::rand(0.0, 1.0, [64, 64], DType::F32, 1, &device).expect("x");
    let y: Vec<u32> = (0..64).map(|i| i % 10).collect();
    Box::new(move || {
        let logits = model.forward(&Var::constant(x.clone()), &Ctx::train(0)).expect("fwd");
        let loss = nn::cross_entropy(&logits, &y).expect("loss");
        let grads = loss.backward().expect("bwd");
        opt.step(&grads).expect("step");
        black_box(loss.tensor().to_scalar::<f32>().expect("read"));
    })
}

fn charlm_step(device: DeviceRef) -> Step {
    let config =
        GptConfig { vocab: 70, context: 64, dim: 96, heads: 4, layers: 2, dtype: DType::F32 };
    let store = ParamStore::new(&device, 0);
    let model = Gpt::new(&store, config).expect("gpt");
    let mut opt = AdamW::new(store.params(), 1e-3).expect("lr");
    let (batch, time) = (32, 64);
    let ids: Vec<u32> = (0..batch * time).map(|i| (i * 7 % 70) as u32).collect();
    let targets: Vec<u32> = (0..batch * time).map(|i| (i * 11 % 70) as u32).collect();
    let ids = Tensor::from_slice(&ids, [batch, time], &device).expect("ids");
    Box::new(move || {
        let loss = nn::cross_entropy(&model.forward(&ids).expect("fwd"), &targets).expect("loss");
        let grads = loss.backward().expect("bwd");
        opt.step(&grads).expect("step");
        black_box(loss.tensor().to_scalar::<f32>().expect("read"));
    })
}

/// Data-parallel MLP steps over `members`, warmed up so the shares have been learned.
fn data_parallel(members: Vec<(DeviceRef, DeviceProfile)>, batch: usize) -> (Step, String) {
    let mut dp =
        DataParallel::new(members, 0, |s| Mlp::new(s, &[64, 512, 512, 10], Activation::Relu))
            .expect("replicas");
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-3).expect("lr");
    let host = Arc::new(CpuDevice::with_threads(1).expect("cpu")) as DeviceRef;
    let x = Tensor::rand(0.0, 1.0, [batch, 64], DType::F32, 1, &host)
        .expect("x")
        .to_vec::<f32>()
        .expect("x");
    let y: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let (x, y) = (Arc::new(x), Arc::new(y));
    let mut step = move || {
        let (x, y) = (x.clone(), y.clone());
        let loss = move |m: &Mlp,
                         device: &DeviceRef,
                         rows: Range<usize>,
                         ctx: &Ctx|
              -> Result<Var> {
            let input =
                Tensor::from_slice(&x[rows.start * 64..rows.end * 64], [rows.len(), 64], device)?;
            let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
            nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[rows], &opts)
        };
        dp.step(batch, loss, &mut opt).expect("step")
    };
    let mut last = String::new();
    for _ in 0..8 {
        last = step().shares_line();
    }
    (Box::new(move || drop(black_box(step()))), last)
}

/// A GPT's training state (parameters and AdamW moments after one step) in host memory.
fn gpt_snapshot(config: GptConfig) -> (Snapshot, Step, Arc<dyn Fn() -> Snapshot>) {
    let device: DeviceRef = Arc::new(CpuDevice::new().expect("cpu"));
    let store = ParamStore::new(&device, 0);
    let model = Gpt::new(&store, config).expect("gpt");
    let opt = Arc::new(Mutex::new(AdamW::new(store.params(), 1e-3).expect("lr")));
    let (batch, time) = (32, config.context);
    let ids: Vec<u32> = (0..batch * time).map(|i| (i * 7 % config.vocab) as u32).collect();
    let targets: Vec<u32> = (0..batch * time).map(|i| (i * 11 % config.vocab) as u32).collect();
    let ids = Tensor::from_slice(&ids, [batch, time], &device).expect("ids");
    let step_opt = opt.clone();
    let step = move || {
        let loss = nn::cross_entropy(&model.forward(&ids).expect("fwd"), &targets).expect("loss");
        let grads = loss.backward().expect("bwd");
        step_opt.lock().unwrap_or_else(PoisonError::into_inner).step(&grads).expect("step");
        black_box(loss.tensor().to_scalar::<f32>().expect("read"));
    };
    step();
    let params = store.params();
    let capture = Arc::new(move || {
        let opt = opt.lock().unwrap_or_else(PoisonError::into_inner);
        Snapshot::capture(1, &params, &*opt, serde_json::json!({})).expect("capture")
    });
    (capture(), Box::new(step), capture)
}

/// Checkpoint stall per step and write throughput against the disk's own.
fn checkpoint_figures(pairs: &mut Vec<Pair>) {
    let dir = std::env::temp_dir().join(format!("manychips-bench-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");

    // Stall: the char transformer's step against capturing its state and queueing the write.
    let small =
        GptConfig { vocab: 70, context: 64, dim: 96, heads: 4, layers: 2, dtype: DType::F32 };
    let (snapshot, mut step, capture) = gpt_snapshot(small);
    let bytes: usize =
        snapshot.params.iter().chain(&snapshot.optimizer).map(|t| t.bytes.len()).sum();
    let mut checkpoints = Checkpoints::open(dir.join("stall"), 2).expect("checkpoints");
    let (mut steps, mut stalls) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        step();
        steps.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        checkpoints.save(capture()).expect("save");
        stalls.push(t.elapsed().as_secs_f64());
        checkpoints.flush().expect("flush"); // not timed: the writer's own time
    }
    let (step_s, stall_s) = (common::median(&mut steps), common::median(&mut stalls));
    println!(
        "checkpoint stall: char transformer ({:.1} MB of state): step {:.2} ms, stall {:.2} ms = {:.1}% of a step",
        bytes as f64 / 1e6,
        step_s * 1e3,
        stall_s * 1e3,
        100.0 * stall_s / step_s
    );

    // Throughput: a larger model's checkpoint against writing as many bytes plainly.
    let big =
        GptConfig { vocab: 70, context: 64, dim: 256, heads: 8, layers: 4, dtype: DType::F32 };
    let (snapshot, _, _) = gpt_snapshot(big);
    let bytes: usize =
        snapshot.params.iter().chain(&snapshot.optimizer).map(|t| t.bytes.len()).sum();
    let plain_data = vec![7u8; bytes];
    let (ckpt_dir, plain_path) = (dir.join("throughput"), dir.join("plain.bin"));
    std::fs::create_dir_all(&ckpt_dir).expect("dir");
    pairs.push(Pair {
        group: "checkpoint_write".into(),
        label: format!("{:.0} MB", bytes as f64 / 1e6),
        ours_name: "write_checkpoint",
        baseline: "fs::write + fsync",
        target: ">= 0.8",
        throughput: Throughput::Bytes(bytes as u64),
        ours: Box::new(move || {
            black_box(write_checkpoint(&ckpt_dir, &snapshot).expect("write"));
        }),
        base: Box::new(move || {
            let mut f = std::fs::File::create(&plain_path).expect("create");
            std::io::Write::write_all(&mut f, &plain_data).expect("write");
            f.sync_all().expect("fsync");
        }),
    });
}

fn main() {
    let cpu = || Arc::new(CpuDevice::new().expect("cpu")) as DeviceRef;
    let mut pairs = vec![overhead_pair("mlp 64-128-10, batch 64", cpu(), mlp_step)];
    checkpoint_figures(&mut pairs);
    pairs.push(overhead_pair("char transformer 2x96, 32x64 tokens", cpu(), charlm_step));

    let batch = 1024;
    let calibration = Calibration::new();
    let found = manychips::Fleet::discover().expect("fleet");
    // The same MLP step on lavapipe, where every op is a dispatch of about 100 µs.
    match found.devices().iter().find(|d| d.info().backend == "vulkan") {
        Some(vk) => {
            pairs.push(overhead_pair("mlp 64-128-10, batch 64, vulkan", vk.clone(), mlp_step))
        }
        None => println!("skipped the MLP step on vulkan: no Vulkan device"),
    }
    let profile = |d: &DeviceRef| calibration.load_or_measure(&**d, false).expect("calibration");
    let cpu = found.cpu().clone();
    let (cpu_step, _) = data_parallel(vec![(cpu.clone(), profile(&cpu))], batch);
    let cpu_step = Rc::new(RefCell::new(cpu_step));
    let mut fleets: Vec<(String, Vec<(DeviceRef, DeviceProfile)>)> = Vec::new();
    if let Some(vk) = found.devices().iter().find(|d| d.info().backend == "vulkan") {
        fleets.push((
            "cpu + lavapipe".into(),
            vec![(cpu.clone(), profile(&cpu)), (vk.clone(), profile(vk))],
        ));
    } else {
        println!("skipped cpu + lavapipe: no Vulkan device");
    }
    // Two simulated chips on one more CPU device: each as fast as a 20 GFLOP/s chip with a
    // 20 µs launch and a 10 GB/s link.
    let host: DeviceRef = Arc::new(CpuDevice::new().expect("cpu"));
    let mut sims = vec![(cpu.clone(), profile(&cpu))];
    for i in 0..2 {
        let p = SimProfile::new(format!("sim{i}"))
            .with_flops(20e9)
            .with_bandwidth(20e9)
            .with_latency(Duration::from_micros(20))
            .with_link(10e9);
        let sim = SimDevice::new(host.clone(), p.clone(), i).expect("sim");
        sim.set_pacing(true);
        let figures = DeviceProfile::simulated(sim.info(), &p);
        sims.push((Arc::new(sim) as DeviceRef, figures));
    }
    fleets.push(("cpu + 2 simulated".into(), sims));
    for (name, members) in fleets {
        let (step, shares) = data_parallel(members, batch);
        println!("{name}: learned shares of {batch}: {shares}");
        let base = cpu_step.clone();
        pairs.push(Pair {
            group: "data_parallel_mlp_step".into(),
            label: format!("{name}, batch {batch}"),
            ours_name: "fleet",
            baseline: "cpu alone",
            target: "report",
            throughput: Throughput::Elements(0),
            ours: step,
            base: Box::new(move || (base.borrow_mut())()),
        });
    }

    let mut c = Criterion::default().configure_from_args();
    common::measure(&mut c, &mut pairs);
    c.final_summary();
    common::print_ratios(&mut pairs);
    println!(
        "(data-parallel: ratio = speed-up of the fleet over the CPU alone; samples/s = {batch} / time)"
    );
}
