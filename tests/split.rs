// The planner's split on real and simulated devices: shares follow speed, small ops stay
// whole, split results equal single-device results, measurements re-fit the shares, and a
// split really runs on CPU + lavapipe (Vulkan) in CI.

use std::sync::Arc;
use std::time::Duration;

use manychips::fleet::FleetEvent;
use manychips::plan::{DeviceProfile, Plan, Planner};
use manychips::sim::{SimDevice, SimProfile};
use manychips::{
    BinaryOp, CpuDevice, DType, Device, DeviceRef, ErrorKind, ReduceOp, Tensor, UnaryOp,
};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::new().unwrap())
}

/// Simulated chips of the given matmul/elementwise rates over one CPU, with their exact
/// profiles.
fn sims(inner: &DeviceRef, rates: &[f64]) -> Vec<(Arc<SimDevice>, DeviceProfile)> {
    sims_with_link(inner, rates, 4e9)
}

fn sims_with_link(
    inner: &DeviceRef,
    rates: &[f64],
    link: f64,
) -> Vec<(Arc<SimDevice>, DeviceProfile)> {
    rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let profile = SimProfile::new(format!("chip{i}"))
                .with_flops(rate)
                .with_bandwidth(rate)
                .with_latency(Duration::from_micros(20))
                .with_link(link);
            let sim = Arc::new(SimDevice::new(inner.clone(), profile.clone(), i).unwrap());
            let figures = DeviceProfile::simulated(sim.info(), &profile);
            (sim, figures)
        })
        .collect()
}

fn planner(members: &[(Arc<SimDevice>, DeviceProfile)]) -> Planner {
    Planner::new(members.iter().map(|(d, p)| (d.clone() as DeviceRef, p.clone())).collect())
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn fraction(plan: &Plan, label: &str) -> f64 {
    plan.share_of(label).map_or(0.0, |s| s.len as f64 / plan.units as f64)
}

#[test]
fn shares_follow_speed_and_small_ops_stay_whole() {
    let host = cpu();
    // Links fast enough that compute, not the 64 MiB of rhs each chip receives, dominates.
    let members = sims_with_link(&host, &[1e12, 2e12, 4e12], 1e12);
    let planner = planner(&members);
    let t = || Tensor::zeros([4096, 4096], DType::F32, &host).unwrap();
    let (a, b, c) = (t(), t(), t());
    let op = manychips::Op::Matmul { lhs: a.view(), rhs: b.view(), out: c.view() };
    // Inputs and output in host memory outside the fleet: every share pays its transfers.
    let plan = planner.plan(&op, None, None).unwrap();
    println!("{}", plan.explain());
    assert!(plan.is_split());
    assert_eq!(plan.shares.iter().map(|s| s.len).sum::<usize>(), plan.units);
    let (f0, f1, f2) =
        (fraction(&plan, "sim:0"), fraction(&plan, "sim:1"), fraction(&plan, "sim:2"));
    assert!(f0 < f1 && f1 < f2, "{f0} {f1} {f2}");
    assert!((f2 / f0 - 4.0).abs() < 0.8, "compute dominates: shares ≈ 1:2:4, got {f0} {f1} {f2}");
    let finish: Vec<f64> = plan.shares.iter().map(|s| s.predicted.total().as_secs_f64()).collect();
    let spread = finish.iter().cloned().fold(0.0, f64::max)
        / finish.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread < 1.02, "equal finish times: {finish:?}");
    assert!(plan.predicted < plan.best_single.1);

    let t = || Tensor::zeros([8, 8], DType::F32, &host).unwrap();
    let (a, b, c) = (t(), t(), t());
    let op = manychips::Op::Matmul { lhs: a.view(), rhs: b.view(), out: c.view() };
    let plan = planner.plan(&op, None, None).unwrap();
    assert!(!plan.is_split(), "{}", plan.explain());
    assert_eq!(plan.shares[0].device, "sim:2", "whole to the fastest");
}

#[test]
fn split_results_equal_single_device_results() {
    let host = cpu();
    let members = sims(&host, &[1e9, 3e9]);
    // Host as a member too, so shares run in place, on a sim, and come back.
    let mut devices: Vec<(DeviceRef, DeviceProfile)> =
        members.iter().map(|(d, p)| (d.clone() as DeviceRef, p.clone())).collect();
    let host_profile = DeviceProfile::simulated(
        host.info(),
        &SimProfile::new("host").with_flops(2e7).with_bandwidth(2e7),
    );
    devices.insert(0, (host.clone(), host_profile));
    let mut planner = Planner::new(devices).unwrap().with_min_gain(-1.0);
    // Unpaced sims return at once, so measured times would teach nonsense: plan by model.
    planner.set_learning(false);

    let x = Tensor::randn(0.0, 1.0, [3, 40, 24], DType::F32, 1, &host).unwrap();
    let w = Tensor::randn(0.0, 1.0, [24, 36], DType::F32, 2, &host).unwrap();
    let row = Tensor::randn(0.0, 1.0, [1, 36], DType::F32, 3, &host).unwrap();
    let check = |planner: &Planner, got: &Tensor, want: &Tensor, tol: f64, what: &str| {
        let plan = planner.last_plan().unwrap();
        assert!(plan.is_split(), "{what}: {}", plan.explain());
        let d = max_diff(got, want);
        assert!(d <= tol, "{what}: differs by {d}\n{}", plan.explain());
    };

    let got = planner.matmul(&x, &w).unwrap();
    check(&planner, &got, &x.matmul(&w).unwrap(), 1e-4, "batched matmul");
    // A transposed (strided) operand is gathered through a copy on the source device.
    let wt = Tensor::randn(0.0, 1.0, [36, 24], DType::F32, 4, &host).unwrap().t().unwrap();
    let got = planner.matmul(&x, &wt).unwrap();
    check(&planner, &got, &x.matmul(&wt).unwrap(), 1e-4, "transposed rhs");
    // One row: only the columns can be cut, so results land in strided places.
    let one = x.narrow(0, 0, 1).unwrap().narrow(1, 0, 1).unwrap();
    let wide = Tensor::randn(0.0, 1.0, [1, 24, 2048], DType::F32, 10, &host).unwrap();
    let got = planner.matmul(&one, &wide).unwrap();
    assert_eq!(planner.last_plan().unwrap().axis, Some(2));
    check(&planner, &got, &one.matmul(&wide).unwrap(), 1e-4, "column split");

    let y = x.matmul(&w).unwrap();
    let got = planner.binary(BinaryOp::Add, &y, &row).unwrap();
    check(&planner, &got, &y.add(&row).unwrap(), 0.0, "broadcast add");
    let got = planner.unary(UnaryOp::Exp, &y).unwrap();
    check(&planner, &got, &y.exp().unwrap(), 0.0, "exp");
    let got = planner.softmax(&y, 2).unwrap();
    check(&planner, &got, &y.softmax(2).unwrap(), 0.0, "softmax");
    let got = planner.reduce(ReduceOp::Sum, &y, 1, false).unwrap();
    check(&planner, &got, &y.sum(1).unwrap(), 0.0, "sum over rows");
    let got = planner.reduce(ReduceOp::ArgMax, &y, 2, true).unwrap();
    check(&planner, &got, &y.reduce(ReduceOp::ArgMax, 2, true).unwrap(), 0.0, "argmax");

    let h = x.cast(DType::BF16).unwrap();
    let wb = w.cast(DType::BF16).unwrap();
    let got = planner.matmul(&h, &wb).unwrap();
    let want = h.matmul(&wb).unwrap();
    check(&planner, &got, &want, 0.0, "bf16 matmul");
}

#[test]
fn the_result_is_assembled_on_the_requested_device() {
    let host = cpu();
    let members = sims(&host, &[1e9, 1e9]);
    let mut devices: Vec<(DeviceRef, DeviceProfile)> =
        members.iter().map(|(d, p)| (d.clone() as DeviceRef, p.clone())).collect();
    devices.push((
        host.clone(),
        DeviceProfile::simulated(host.info(), &SimProfile::new("h").with_flops(1e9)),
    ));
    let mut planner = Planner::new(devices).unwrap().with_min_gain(-1.0);
    planner.set_learning(false);
    let a = Tensor::randn(0.0, 1.0, [64, 48], DType::F32, 11, &host).unwrap();
    let b = Tensor::randn(0.0, 1.0, [48, 40], DType::F32, 12, &host).unwrap();
    let target: DeviceRef = members[1].0.clone();
    let out = Tensor::zeros([64, 40], DType::F32, &target).unwrap();
    let op = manychips::Op::Matmul { lhs: a.view(), rhs: b.view(), out: out.view() };
    let plan = planner.run(&op, &host, &target).unwrap();
    assert_eq!(plan.shares.len(), 3, "{}", plan.explain());
    // The target's own share lands in place; the others travel to it.
    assert_eq!(plan.share_of("sim:1").unwrap().predicted.download, Duration::ZERO);
    assert!(plan.share_of("sim:0").unwrap().predicted.download > Duration::ZERO);
    let d = max_diff(&out.to_device(&host).unwrap(), &a.matmul(&b).unwrap());
    assert!(d < 1e-4, "differs by {d}");
}

#[test]
fn a_device_that_slows_down_gets_a_refitted_share_within_three_calls() {
    let host = cpu();
    // A simulated chip's kernel times are learned from its virtual clock (its slowdown
    // included), so what the planner learns does not depend on how busy this machine is.
    let members = sims(&host, &[2e8, 2e8, 2e8]);
    let mut planner = planner(&members);
    let a = Tensor::randn(0.0, 1.0, [192, 256], DType::F32, 5, &host).unwrap();
    let b = Tensor::randn(0.0, 1.0, [256, 192], DType::F32, 6, &host).unwrap();
    planner.matmul(&a, &b).unwrap();
    let before = fraction(planner.last_plan().unwrap(), "sim:1");
    assert!((before - 1.0 / 3.0).abs() < 0.05, "{}", planner.last_plan().unwrap().explain());

    members[1].0.set_slowdown(2.0).unwrap();
    let mut after = Vec::new();
    for _ in 0..3 {
        planner.matmul(&a, &b).unwrap();
        after.push(fraction(planner.last_plan().unwrap(), "sim:1"));
    }
    // Speeds 1 : 0.5 : 1 give the slowed chip 1/5 of the rows.
    let plan = planner.last_plan().unwrap();
    println!("{}", plan.explain());
    assert!((after[2] - 0.2).abs() < 0.04, "share of the slowed chip per call: {after:?}");
    assert!(after[0] > after[2] || (after[0] - 0.2).abs() < 0.04, "{after:?}");
    // Factors also absorb what the model leaves out (the per-op latency); what the slowdown
    // must show is the ratio to an unslowed chip's factor.
    let factor = |label| planner.corrections().compute(label, manychips::OpClass::Matmul);
    let ratio = factor("sim:1") / factor("sim:0");
    assert!(
        (ratio - 2.0).abs() < 0.3,
        "learned factors {} vs {}",
        factor("sim:1"),
        factor("sim:0")
    );
}

#[test]
fn explain_and_trace_show_every_share() {
    let host = cpu();
    let members = sims(&host, &[1e9, 2e9]);
    let mut planner = planner(&members).with_min_gain(-1.0);
    planner.start_trace();
    let a = Tensor::randn(0.0, 1.0, [64, 64], DType::F32, 7, &host).unwrap();
    planner.matmul(&a, &a).unwrap();
    let plan = planner.last_plan().unwrap();
    let table = plan.explain();
    println!("{table}");
    for needle in ["sim:0", "sim:1", "makespan", "measured", "predicted"] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
    assert!(plan.shares.iter().all(|s| s.measured.is_some()));
    let trace = planner.take_trace().unwrap();
    let json: serde_json::Value = serde_json::from_str(&trace.to_json()).unwrap();
    let slices = json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X");
    let kernels = slices.filter(|e| e["cat"] == "kernel").count();
    assert_eq!(kernels, 2, "one kernel slice per device");
    let path = std::env::temp_dir().join(format!("manychips-trace-{}.json", std::process::id()));
    trace.write(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 100);
    let _ = std::fs::remove_file(path);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let host = cpu();
    assert!(Planner::new(Vec::new()).is_err());
    let members = sims(&host, &[1e9]);
    let dup = vec![members[0].clone(), members[0].clone()];
    let err =
        Planner::new(dup.into_iter().map(|(d, p)| (d as DeviceRef, p)).collect()).unwrap_err();
    assert!(err.to_string().contains("sim:0"), "{err}");
    let mut planner = planner(&members);
    let a = Tensor::zeros([2, 3], DType::F32, &host).unwrap();
    let err = planner.matmul(&a, &a).unwrap_err();
    assert!(err.to_string().contains("inner dims"), "{err}");
    let modelled = Planner::modelled(vec![("x:0".into(), members[0].1.clone())]).unwrap();
    let op = manychips::Op::Fill { out: a.view(), value: 1.0 };
    assert!(modelled.plan(&op, Some("y:0"), None).unwrap_err().to_string().contains("y:0"));
}

#[cfg(feature = "vulkan")]
#[test]
fn a_split_runs_on_cpu_and_lavapipe() {
    use manychips::ErrorKind;
    let vulkan = match manychips_vulkan::discover() {
        Ok(devices) => devices,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unavailable, "discovery failed: {e}");
            assert!(std::env::var_os("CI").is_none(), "CI is set but no Vulkan device: {e}");
            println!("skipped: no Vulkan device ({e})");
            return;
        }
    };
    let host = cpu();
    let gpu: DeviceRef = Arc::new(vulkan.into_iter().next().unwrap());
    // Equal made-up figures, so the split is even whatever the real speeds: this test is
    // about the result, the bench about the choice.
    let same = SimProfile::new("even").with_flops(1e9);
    let mut planner = Planner::new(vec![
        (host.clone(), DeviceProfile::simulated(host.info(), &same)),
        (gpu.clone(), DeviceProfile::simulated(gpu.info(), &same)),
    ])
    .unwrap();
    let a = Tensor::randn(0.0, 1.0, [96, 80], DType::F32, 8, &host).unwrap();
    let b = Tensor::randn(0.0, 1.0, [80, 72], DType::F32, 9, &host).unwrap();
    let got = planner.matmul(&a, &b).unwrap();
    let plan = planner.last_plan().unwrap();
    println!("{}", plan.explain());
    assert!(plan.is_split() && plan.share_of(&gpu.info().label()).is_some());
    let d = max_diff(&got, &a.matmul(&b).unwrap());
    assert!(d < 1e-3, "differs by {d}");
    let got = planner.softmax(&a, 1).unwrap();
    assert!(max_diff(&got, &a.softmax(1).unwrap()) < 1e-5);
}

/// A discrete-event simulation of 64 chips (speeds spread 10×, some slow links): the plan
/// finishes within 5% of the fluid optimum, well ahead of an even split, and a plan made
/// from figures off by ±25% recovers once three simulated runs fed back.
#[test]
fn simulated_fleet_of_64_finishes_near_the_ideal() {
    use manychips::plan::{Chip, simulate};
    let n = 64;
    let truth: Vec<SimProfile> = (0..n)
        .map(|i| {
            let speed = 10f64.powf(i as f64 / (n - 1) as f64);
            SimProfile::new(format!("chip{i}"))
                .with_flops(1e12 * speed)
                .with_bandwidth(200e9 * speed)
                .with_link(if i % 8 == 3 { 2e9 } else { 32e9 })
        })
        .collect();
    let host = cpu();
    let profile_of = |i: usize, p: &SimProfile, k: f64| {
        let sim = SimDevice::new(host.clone(), p.clone(), i).unwrap();
        let mut figures = DeviceProfile::simulated(sim.info(), p);
        figures.matmul.iter_mut().for_each(|m| m.flops_per_s *= k);
        figures.matmul_rate_concurrent = figures.matmul_rate_concurrent.map(|r| r * k);
        (format!("sim:{i}"), figures)
    };
    let exact =
        Planner::modelled(truth.iter().enumerate().map(|(i, p)| profile_of(i, p, 1.0)).collect())
            .unwrap();
    let chips: Vec<Chip> = truth.iter().cloned().map(Chip::new).collect();
    // Views of buffers that do not exist: planning and simulating never touch the data.
    let device = manychips::DeviceId::fresh();
    let view = |index, dims: [usize; 2]| {
        let buffer = manychips::BufferId { device, index };
        manychips::View::new(buffer, manychips::Layout::contiguous(dims), DType::F32)
    };
    let op = manychips::Op::Matmul {
        lhs: view(0, [64_000, 4096]),
        rhs: view(1, [4096, 4096]),
        out: view(2, [64_000, 4096]),
    };
    let ideal = exact.fluid_bound(&op).unwrap().as_secs_f64();
    let plan = exact.plan(&op, None, None).unwrap();
    let achieved = simulate(&plan, &op, &chips, None).makespan.as_secs_f64();
    assert!(ideal / achieved >= 0.95, "exact figures: {:.3}", ideal / achieved);
    let even = exact.plan_fixed(&op, 0, &vec![1000; n]).unwrap();
    let even_time = simulate(&even, &op, &chips, None).makespan.as_secs_f64();
    assert!(even_time / achieved >= 1.5, "speed-up over an even split {:.2}", even_time / achieved);

    // Every other chip believed 25% faster than it is, the rest 20% slower.
    let off = |i: usize| if i.is_multiple_of(2) { 1.25 } else { 0.8 };
    let mut noisy = Planner::modelled(
        truth.iter().enumerate().map(|(i, p)| profile_of(i, p, off(i))).collect(),
    )
    .unwrap();
    let first = noisy.plan(&op, None, None).unwrap();
    let first_ratio = ideal / simulate(&first, &op, &chips, None).makespan.as_secs_f64();
    for _ in 0..3 {
        let mut run = noisy.plan(&op, None, None).unwrap();
        simulate(&run, &op, &chips, None).record(&mut run);
        noisy.learn(&run);
    }
    let learned = noisy.plan(&op, None, None).unwrap();
    let learned_ratio = ideal / simulate(&learned, &op, &chips, None).makespan.as_secs_f64();
    assert!(first_ratio < 0.9, "the noise should hurt at first: {first_ratio:.3}");
    assert!(learned_ratio >= 0.95, "after 3 runs fed back: {learned_ratio:.3}");
}

#[test]
fn a_device_that_fails_its_share_is_evicted_and_the_op_re_planned() {
    let host = cpu();
    let members = sims(&host, &[1e9, 1e9, 1e9]);
    let mut planner = planner(&members);
    // Plans from the exact profiles only: unpaced chips' wall times would move the shares.
    planner.set_learning(false);
    let (src, _) = &members[0];
    let src: DeviceRef = src.clone();
    let a = Tensor::randn(0.0, 1.0, [96, 64], DType::F32, 1, &src).unwrap();
    let b = Tensor::randn(0.0, 1.0, [64, 48], DType::F32, 2, &src).unwrap();
    let want = a.matmul(&b).unwrap();

    // A transient fault is retried on the same device.
    let (flaky, _) = &members[1];
    flaky.fail_after(0, ErrorKind::Fault);
    let got = planner.matmul(&a, &b).unwrap();
    assert!(max_diff(&got, &want) < 1e-4);
    assert_eq!(flaky.injected_failures(), 1, "the fault must have hit a share");
    assert!(planner.evicted().is_empty(), "a single fault must not evict");
    let plan = planner.last_plan().unwrap();
    let retried = |e: &FleetEvent| matches!(e, FleetEvent::Retried { device, attempt: 1, .. } if device == "sim:1");
    assert!(plan.events.len() == 1 && retried(&plan.events[0]), "{:?}", plan.events);
    assert!(plan.shares.len() > 1, "the op should be split: {}", plan.explain());

    // A lost device is evicted; the op completes on the others with the same result.
    let (lost, _) = &members[2];
    lost.fail_after(0, ErrorKind::DeviceLost);
    let got = planner.matmul(&a, &b).unwrap();
    assert!(max_diff(&got, &want) < 1e-4);
    let evicted = planner.evicted();
    assert_eq!(evicted.len(), 1, "{evicted:?} {}", planner.last_plan().unwrap().explain());
    assert_eq!(evicted[0].0, "sim:2");
    let plan = planner.last_plan().unwrap();
    let gone =
        |e: &FleetEvent| matches!(e, FleetEvent::Evicted { device, .. } if device == "sim:2");
    assert!(plan.events.iter().any(gone), "{:?}", plan.events);
    assert!(plan.shares.iter().all(|s| s.device != "sim:2"), "{}", plan.explain());
    assert!(planner.readmit().is_empty(), "a lost device does not answer the probe");

    // Healed, it answers the probe and takes shares again.
    lost.heal();
    let back = planner.readmit();
    assert_eq!(back, [FleetEvent::Readmitted { device: "sim:2".into() }]);
    assert!(planner.evicted().is_empty());
    let got = planner.matmul(&a, &b).unwrap();
    assert!(max_diff(&got, &want) < 1e-4);
    let plan = planner.last_plan().unwrap();
    assert!(plan.share_of("sim:2").is_some(), "{}", plan.explain());

    // The device holding the operands cannot be replaced: out of memory there is reported
    // as such (after the retries: the chip is fine, the work too big), a loss as a loss.
    let (holder, _) = &members[0];
    holder.fail_randomly(1.0, ErrorKind::OutOfMemory, 0);
    let e = planner.matmul(&a, &b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
    holder.heal();
    holder.fail_after(0, ErrorKind::DeviceLost);
    let e = planner.matmul(&a, &b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeviceLost);
    assert!(e.to_string().contains("lost"), "{e}");
}

#[test]
fn a_hung_device_is_evicted_at_the_watchdogs_deadline_and_the_op_completes() {
    let host = cpu();
    let members = sims(&host, &[1e9, 1e9, 1e9]);
    let mut planner = planner(&members);
    planner.set_learning(false);
    planner.set_fault_policy(manychips::fleet::FaultPolicy {
        watchdog_min: Duration::from_secs(2),
        ..Default::default()
    });
    let (src, _) = &members[0];
    let src: DeviceRef = src.clone();
    let a = Tensor::randn(0.0, 1.0, [96, 64], DType::F32, 1, &src).unwrap();
    let b = Tensor::randn(0.0, 1.0, [64, 48], DType::F32, 2, &src).unwrap();
    let want = a.matmul(&b).unwrap();
    let (hung, _) = &members[1];
    hung.hang();
    let started = std::time::Instant::now();
    let got = planner.matmul(&a, &b).unwrap();
    let waited = started.elapsed();
    hung.heal();
    assert!(max_diff(&got, &want) < 1e-4);
    let evicted = planner.evicted();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].0, "sim:1");
    assert!(evicted[0].1.contains("watchdog"), "{}", evicted[0].1);
    // One deadline, not one per retry: a hang is not retried.
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
}

/// A device whose reads panic (a backend bug), for the planner's gathering of operands.
#[derive(Debug)]
struct PanicsOnRead(DeviceRef);

impl Device for PanicsOnRead {
    fn info(&self) -> &manychips::DeviceInfo {
        self.0.info()
    }
    fn memory(&self) -> manychips::Result<manychips::MemoryInfo> {
        self.0.memory()
    }
    fn alloc(&self, bytes: usize) -> manychips::Result<manychips::BufferId> {
        self.0.alloc(bytes)
    }
    fn free(&self, buffer: manychips::BufferId) -> manychips::Result<()> {
        self.0.free(buffer)
    }
    fn write(&self, dst: manychips::BufferId, offset: usize, src: &[u8]) -> manychips::Result<()> {
        self.0.write(dst, offset, src)
    }
    fn read(&self, _: manychips::BufferId, _: usize, _: &mut [u8]) -> manychips::Result<()> {
        panic!("a backend bug in read");
    }
    fn copy(
        &self,
        src: manychips::BufferId,
        so: usize,
        dst: manychips::BufferId,
        d: usize,
        bytes: usize,
    ) -> manychips::Result<()> {
        self.0.copy(src, so, dst, d, bytes)
    }
    fn run(&self, op: &manychips::Op) -> manychips::Result<()> {
        self.0.run(op)
    }
    fn synchronize(&self) -> manychips::Result<()> {
        self.0.synchronize()
    }
}

#[test]
fn a_panic_while_reading_the_operands_fails_the_op_instead_of_hanging_it() {
    // Each share reads its operands from the source before any starts computing; one that
    // panicked there used to leave the others waiting for it for ever.
    let host = cpu();
    let members = sims(&host, &[1e9, 1e9]);
    let mut planner = planner(&members);
    planner.set_learning(false);
    let src: DeviceRef = Arc::new(PanicsOnRead(host.clone()));
    let a = Tensor::randn(0.0, 1.0, [96, 64], DType::F32, 1, &src).unwrap();
    let b = Tensor::randn(0.0, 1.0, [64, 48], DType::F32, 2, &src).unwrap();
    let started = std::time::Instant::now();
    let e = planner.matmul(&a, &b).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(e.to_string().contains("panicked") || e.kind() == ErrorKind::DeviceLost, "{e}");
}
