// Data-parallel training survives failing devices: each injected fault kind (an error after
// N ops, device lost, random errors, out of memory, a hang, a chip that keeps slowing down)
// on a fleet of the CPU plus simulated chips ends with the parameters of a fault-free run.
// Hot join and re-admission after a hang, and the one loss that cannot be survived (the
// master device) is a clear error.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use manychips::plan::DeviceProfile;
use manychips::sim::{SimDevice, SimProfile};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, CrossEntropy, Ctx, Dropout, Reduction};
use manychips::train::optim::AdamW;
use manychips::train::{DataParallel, FaultPolicy, FleetEvent, Var};
use manychips::{CpuDevice, DType, Device, DeviceRef, ErrorKind, Result, Tensor};

const DIM: usize = 12;
const CLASSES: usize = 5;
const BATCH: usize = 30;
const STEPS: usize = 8;

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::with_threads(1).expect("cpu"))
}

fn sim(host: &DeviceRef, i: usize) -> Arc<SimDevice> {
    let profile = SimProfile::new(format!("sim{i}")).with_latency(Duration::ZERO);
    Arc::new(SimDevice::new(host.clone(), profile, i).expect("sim"))
}

fn data() -> (Arc<Vec<f32>>, Arc<Vec<u32>>) {
    let host = cpu();
    let x = Tensor::randn(0.0, 1.0, [BATCH * STEPS, DIM], DType::F32, 11, &host).unwrap();
    let w = Tensor::randn(0.0, 1.0, [DIM, CLASSES], DType::F32, 12, &host).unwrap();
    let y = x.matmul(&w).unwrap().argmax(1).unwrap().to_vec::<u32>().unwrap();
    (Arc::new(x.to_vec::<f32>().unwrap()), Arc::new(y))
}

fn fleet(devices: Vec<DeviceRef>) -> DataParallel<Mlp> {
    let members = devices
        .into_iter()
        .map(|d| {
            let profile = DeviceProfile::for_device(d.info());
            (d, profile)
        })
        .collect();
    DataParallel::new(members, 3, |s| {
        Ok(Mlp::new(s, &[DIM, 16, CLASSES], Activation::Gelu)?.with_dropout(Dropout::new(0.1, 5)?))
    })
    .unwrap()
}

/// Runs the steps; `before(step, dp)` may inject a fault first. Returns the parameters and
/// every fleet event.
fn train(
    dp: &mut DataParallel<Mlp>,
    mut before: impl FnMut(usize, &mut DataParallel<Mlp>),
) -> (Vec<Vec<f64>>, Vec<FleetEvent>) {
    let (x, y) = data();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    let mut events = Vec::new();
    for step in 0..STEPS {
        before(step, dp);
        let (x, y) = (x.clone(), y.clone());
        let loss =
            move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
                let (a, b) = (step * BATCH + rows.start, step * BATCH + rows.end);
                let input = Tensor::from_slice(&x[a * DIM..b * DIM], [b - a, DIM], device)?;
                let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
                nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[a..b], &opts)
            };
        let report = dp.step(BATCH, loss, &mut opt).expect("the step survives");
        assert_eq!(report.devices.iter().map(|d| d.rows.len()).sum::<usize>(), BATCH);
        for e in &report.events {
            println!("step {step}: {e}");
        }
        events.extend(report.events);
    }
    let params = dp.params().iter().map(|p| p.value().to_f64_vec().unwrap()).collect();
    (params, events)
}

fn fault_free() -> Vec<Vec<f64>> {
    train(&mut fleet(vec![cpu()]), |_, _| {}).0
}

fn assert_same(got: &[Vec<f64>], want: &[Vec<f64>], what: &str) {
    let mut worst: f64 = 0.0;
    for (p, q) in got.iter().zip(want) {
        for (a, b) in p.iter().zip(q) {
            worst = worst.max((a - b).abs() / (1e-3 + b.abs()));
        }
    }
    assert!(worst < 1e-3, "{what}: parameters differ from the fault-free run by {worst:e}");
}

/// CPU master plus two simulated chips on another CPU device, split 1 : 1 : 1.
fn three() -> (DataParallel<Mlp>, Arc<SimDevice>, Arc<SimDevice>) {
    let host = cpu();
    let (a, b) = (sim(&host, 0), sim(&host, 1));
    let mut dp = fleet(vec![cpu(), a.clone() as DeviceRef, b.clone() as DeviceRef]);
    dp.set_fixed_split(Some(vec![1.0, 1.0, 1.0])).unwrap();
    (dp, a, b)
}

fn count(events: &[FleetEvent], f: impl Fn(&FleetEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn evicted(e: &FleetEvent) -> bool {
    matches!(e, FleetEvent::Evicted { .. })
}

#[test]
fn transient_errors_are_retried_and_a_lost_device_is_evicted() {
    let want = fault_free();
    let (mut dp, a, b) = three();
    let (got, events) = train(&mut dp, |step, _| match step {
        2 => a.fail_after(3, ErrorKind::Fault),
        3 => a.fail_after(5, ErrorKind::OutOfMemory),
        5 => b.fail_after(4, ErrorKind::DeviceLost),
        _ => {}
    });
    assert_same(&got, &want, "errors, OOM and a lost device");
    assert_eq!(count(&events, |e| matches!(e, FleetEvent::Retried { .. })), 2, "{events:?}");
    assert_eq!(count(&events, evicted), 1, "{events:?}");
    assert_eq!(dp.evicted(), vec!["sim:1".to_string()]);
}

/// A device that reports a missed deadline itself is treated as the watchdog treats one:
/// evicted at once, never retried ([`FaultPolicy::verdict`], the planner's rule too).
#[test]
fn a_device_reporting_a_timeout_is_evicted_without_a_retry() {
    let want = fault_free();
    let (mut dp, a, _) = three();
    let (got, events) = train(&mut dp, |step, _| {
        if step == 2 {
            a.fail_after(3, ErrorKind::Timeout);
        }
    });
    assert_same(&got, &want, "a reported timeout");
    assert_eq!(count(&events, |e| matches!(e, FleetEvent::Retried { .. })), 0, "{events:?}");
    assert_eq!(count(&events, evicted), 1, "{events:?}");
    assert_eq!(dp.evicted(), vec!["sim:0".to_string()]);
}

#[test]
fn random_failures_are_survived() {
    let want = fault_free();
    let (mut dp, a, _) = three();
    a.fail_randomly(0.05, ErrorKind::Fault, 42);
    let (got, events) = train(&mut dp, |_, _| {});
    assert!(a.injected_failures() > 0, "the seed injected nothing");
    assert_same(&got, &want, "random failures");
    println!("{} failures injected, events {events:?}", a.injected_failures());
}

#[test]
fn a_hung_device_is_evicted_by_the_watchdog_and_readmitted_after_it_heals() {
    let want = fault_free();
    let (mut dp, a, _) = three();
    dp.set_fault_policy(FaultPolicy {
        watchdog_min: Duration::from_millis(300),
        ..Default::default()
    });
    dp.start_trace();
    let hung = a.clone();
    let (got, events) = train(&mut dp, |step, dp| match step {
        2 => hung.hang(),
        5 => {
            hung.heal();
            let back = dp.readmit();
            assert_eq!(back, vec![FleetEvent::Readmitted { device: "sim:0".into() }]);
        }
        _ => {}
    });
    assert_same(&got, &want, "a hang");
    let reasons: Vec<&FleetEvent> = events.iter().filter(|e| evicted(e)).collect();
    assert_eq!(reasons.len(), 1, "{events:?}");
    assert!(format!("{}", reasons[0]).contains("watchdog"), "{}", reasons[0]);
    assert!(dp.evicted().is_empty(), "sim:0 came back");
    // The eviction and the re-admission are instants on sim:0's track of the trace.
    let trace = dp.take_trace().expect("a trace");
    let json: serde_json::Value = serde_json::from_str(&trace.to_json()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    let cats: Vec<&str> = events.iter().filter_map(|e| e["cat"].as_str()).collect();
    for want in ["share", "evicted", "readmitted"] {
        assert!(cats.contains(&want), "no {want} in the trace: {cats:?}");
    }
    let instant = events.iter().find(|e| e["cat"] == "evicted").unwrap();
    assert_eq!(instant["ph"], "i");
}

#[test]
fn a_chip_that_keeps_slowing_down_is_evicted() {
    let want = fault_free();
    let host = cpu();
    let slow = sim(&host, 0);
    slow.set_pacing(true);
    let mut dp = fleet(vec![cpu(), slow.clone() as DeviceRef]);
    dp.set_fixed_split(Some(vec![1.0, 1.0])).unwrap();
    dp.set_fault_policy(FaultPolicy { slow_factor: 1.5, slow_strikes: 2, ..Default::default() });
    let (got, events) = train(&mut dp, |step, _| {
        if step >= 2 {
            // Doubling every step: always well behind what it did last time.
            slow.set_slowdown(2f64.powi(step as i32 * 3)).unwrap();
        }
    });
    assert_same(&got, &want, "a degrading chip");
    let e: Vec<_> = events.iter().filter(|e| evicted(e)).collect();
    assert_eq!(e.len(), 1, "{events:?}");
    assert!(e[0].to_string().contains("slower than predicted"), "{}", e[0]);
}

#[test]
fn a_device_joins_a_running_job() {
    let want = fault_free();
    let host = cpu();
    let mut dp = fleet(vec![cpu()]);
    let newcomer = sim(&host, 7);
    let (got, events) = train(&mut dp, |step, dp| {
        if step == 3 {
            let profile = DeviceProfile::for_device(newcomer.info());
            let joined = dp.join(newcomer.clone() as DeviceRef, &profile).unwrap();
            assert_eq!(joined, FleetEvent::Joined { device: "sim:7".into() });
            dp.set_fixed_split(Some(vec![1.0, 2.0])).unwrap();
        }
    });
    assert!(events.is_empty());
    assert_same(&got, &want, "a join");
    assert_eq!(dp.devices().len(), 2);
}

#[test]
fn losing_the_master_device_is_a_clear_error() {
    let host = cpu();
    let master = sim(&host, 0);
    let mut dp = fleet(vec![master.clone() as DeviceRef, cpu()]);
    dp.set_fixed_split(Some(vec![1.0, 1.0])).unwrap();
    master.fail_after(2, ErrorKind::DeviceLost);
    let (x, y) = data();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
        let input =
            Tensor::from_slice(&x[rows.start * DIM..rows.end * DIM], [rows.len(), DIM], device)?;
        let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[rows], &opts)
    };
    let e = match dp.step(BATCH, loss, &mut opt) {
        Ok(r) => panic!("the step cannot survive its master: {r:?}"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::DeviceLost);
    assert!(e.to_string().contains("resume from the last checkpoint"), "{e}");
}

/// One step on the CPU master plus one simulated chip (1 : 1), with one bucket per parameter
/// (last parameter first) or none; the chip fails once after `fail_after` ops when given.
/// Returns the summed gradients, the parameter names in the order their buckets were handed
/// over, and whether a fault was injected.
fn bucketed_step(
    per_parameter: bool,
    fail_after: Option<u64>,
) -> (Vec<Option<Vec<f32>>>, Vec<String>, bool) {
    let host = cpu();
    let chip = sim(&host, 0);
    let mut dp = fleet(vec![cpu(), chip.clone() as DeviceRef]);
    dp.set_fixed_split(Some(vec![1.0, 1.0])).unwrap();
    if let Some(n) = fail_after {
        chip.fail_after(n, ErrorKind::Fault);
    }
    let (x, y) = data();
    let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
        let input =
            Tensor::from_slice(&x[rows.start * DIM..rows.end * DIM], [rows.len(), DIM], device)?;
        let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[rows], &opts)
    };
    let n = dp.params().len();
    let buckets: Vec<Range<usize>> =
        if per_parameter { (0..n).rev().map(|p| p..p + 1).collect() } else { Vec::new() };
    let mut handed = Vec::new();
    let gradients = dp
        .gradients_bucketed(0..BATCH, BATCH, loss, &buckets, &mut |params, grads| {
            assert_eq!(params.len(), 1);
            assert!(grads.get(params[0].id()).is_some(), "{} arrived empty", params[0].name());
            handed.push(params[0].name().to_string());
            Ok(())
        })
        .expect("the step survives");
    let grads = dp
        .params()
        .iter()
        .map(|p| gradients.grads.get(p.id()).map(|g| g.to_vec::<f32>().unwrap()))
        .collect();
    (grads, handed, chip.injected_failures() > 0)
}

#[test]
fn a_share_failing_anywhere_in_its_backward_pass_keeps_the_gradients_it_sent() {
    // A fault after every possible number of ops: in the forward pass, and at each point of
    // the backward pass, where some of the share's gradients have already been sent (and
    // their buckets possibly handed over). The retry on the same chip sends only the rest,
    // so the sum is bit-identical to the fault-free step and every bucket comes once, in
    // order. Without buckets, every part is summed at the end: a gradient sent twice would
    // show.
    for per_parameter in [true, false] {
        let (want, want_order) = {
            let (g, order, faulted) = bucketed_step(per_parameter, None);
            assert!(!faulted);
            (g, order)
        };
        assert!(want.iter().all(Option::is_some));
        assert_eq!(want_order.len(), if per_parameter { want.len() } else { 0 });
        let mut n = 0;
        loop {
            let (got, order, faulted) = bucketed_step(per_parameter, Some(n));
            if !faulted {
                break; // past the share's last op
            }
            assert_eq!(got, want, "a fault after {n} ops changed the gradients");
            assert_eq!(order, want_order, "a fault after {n} ops changed the buckets");
            n += 1;
        }
        // The forward pass and the seed are 10 ops (the cross-entropy is three); the
        // backward pass about as many again (GELU's and the cross-entropy's are one fused op
        // each).
        assert!(n > 15, "the share ran only {n} ops: the sweep did not reach the backward pass");
        println!("faults after 0..{n} ops all gave the fault-free gradients");
    }
}

/// A one-step loss over `x`/`y` with `reduction`, panicking on the replica whose label is
/// `panic_on` (a bug in the caller's code).
fn loss_with(
    reduction: Reduction,
    panic_on: Option<&'static str>,
) -> impl Fn(&Mlp, &DeviceRef, Range<usize>, &Ctx) -> Result<Var> + Send + Sync + 'static {
    let (x, y) = data();
    move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
        if panic_on == Some(device.info().label().as_str()) {
            panic!("a bug in the loss function");
        }
        let input =
            Tensor::from_slice(&x[rows.start * DIM..rows.end * DIM], [rows.len(), DIM], device)?;
        let opts = CrossEntropy { reduction, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[rows], &opts)
    }
}

#[test]
fn a_loss_already_reduced_over_its_rows_is_an_error() {
    // A mean over each share would weight rows by 1/(share size): the model would depend
    // on how the batch was cut. Refused, whichever reduction hides the rows.
    let host = cpu();
    let mut dp = fleet(vec![cpu(), sim(&host, 0)]);
    dp.set_fixed_split(Some(vec![2.0, 1.0])).unwrap();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let e = dp.step(BATCH, loss_with(reduction, None), &mut opt).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Shape, "{e}");
        assert!(e.to_string().contains("one loss per row"), "{e}");
    }
    assert!(dp.evicted().is_empty(), "a caller's mistake evicts nothing");
    let report = dp.step(BATCH, loss_with(Reduction::None, None), &mut opt).unwrap();
    assert!(report.loss.is_finite());
}

#[test]
fn a_panic_in_the_loss_function_is_the_callers_error_and_evicts_nothing() {
    let host = cpu();
    let chip = sim(&host, 0);
    let mut dp = fleet(vec![cpu(), chip as DeviceRef]);
    dp.set_fixed_split(Some(vec![1.0, 1.0])).unwrap();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    for label in ["sim:0", "cpu:0"] {
        let started = std::time::Instant::now();
        let e = dp.step(BATCH, loss_with(Reduction::None, Some(label)), &mut opt).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
        assert!(e.to_string().contains("a bug in the loss function"), "{e}");
        assert!(!e.is_device_fault());
        assert!(started.elapsed() < Duration::from_secs(4), "no retries, no watchdog wait");
    }
    assert!(dp.evicted().is_empty(), "{:?}", dp.evicted());
    assert_eq!(dp.devices().len(), 2);
    dp.step(BATCH, loss_with(Reduction::None, None), &mut opt).unwrap();
}

#[test]
fn the_master_running_out_of_memory_is_reported_as_out_of_memory() {
    // The master chip has 64 KiB: the parameters fit, one share's activations do not.
    let host = cpu();
    let small = SimProfile::new("small").with_latency(Duration::ZERO).with_memory(64 << 10);
    let master: DeviceRef = Arc::new(SimDevice::new(host, small, 0).unwrap());
    let mut dp = fleet(vec![master]);
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    let (x, y) = (Arc::new(vec![0.5f32; 4096 * DIM]), Arc::new(vec![1u32; 4096]));
    let loss = move |m: &Mlp, device: &DeviceRef, rows: Range<usize>, ctx: &Ctx| -> Result<Var> {
        let input =
            Tensor::from_slice(&x[rows.start * DIM..rows.end * DIM], [rows.len(), DIM], device)?;
        let opts = CrossEntropy { reduction: Reduction::None, ..Default::default() };
        nn::cross_entropy_with(&m.forward(&Var::constant(input), ctx)?, &y[rows], &opts)
    };
    let e = dp.step(4096, loss, &mut opt).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
    let text = e.to_string();
    assert!(text.contains("sim:0") && text.contains("bytes"), "{text}");
    assert!(!text.contains("device lost"), "{text}");
}
