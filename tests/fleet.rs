//! The fleet: discovery with one entry per chip, `MANYCHIPS_DEVICES` selection, errors, and
//! membership (evict / join), on real CPU and simulated devices.

use std::sync::Arc;

mod common;

use common::Posing;
use manychips::fleet::DEVICES_VAR;
use manychips::fleet::SameChip;
use manychips::sim::{SimDevice, SimProfile};
use manychips::{
    CpuDevice, DType, DeviceId, DeviceInfo, DeviceRef, ErrorKind, Fleet, Identity, Tensor,
};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::with_threads(1).expect("cpu device"))
}

fn sim(ordinal: usize) -> DeviceRef {
    let profile = SimProfile::new(format!("chip{ordinal}"));
    Arc::new(SimDevice::new(cpu(), profile, ordinal).expect("sim device"))
}

/// cpu:0, sim:1, sim:2.
fn devices() -> Vec<DeviceRef> {
    vec![cpu(), sim(1), sim(2)]
}

fn labels(fleet: &Fleet) -> Vec<String> {
    fleet.devices().iter().map(|d| d.info().label()).collect()
}

#[test]
fn discover_finds_the_cpu_and_each_chip_once() {
    let fleet = match (Fleet::discover(), std::env::var(DEVICES_VAR)) {
        (Ok(fleet), _) => fleet,
        // A selection set outside the test may legitimately select nothing here.
        (Err(err), Ok(value)) => {
            println!("{DEVICES_VAR}={value:?}: {err}");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            return;
        }
        (Err(err), Err(_)) => panic!("discover failed: {err}"),
    };
    println!("{fleet}");
    assert_eq!(fleet.cpu().info().backend, "cpu");
    let labels = labels(&fleet);
    let unique: std::collections::HashSet<&String> = labels.iter().collect();
    assert_eq!(unique.len(), labels.len(), "labels repeat: {labels:?}");
    if std::env::var(DEVICES_VAR).is_ok() {
        return;
    }
    assert!(fleet.get("cpu:0").is_some(), "{labels:?}");
    let software: Vec<String> = fleet
        .devices()
        .iter()
        .filter(|d| d.info().name.contains("llvmpipe"))
        .map(|d| d.info().label())
        .collect();
    let vulkan_seen = fleet.devices().iter().any(|d| d.info().backend == "vulkan");
    if software.is_empty() {
        println!("no lavapipe here; saw {labels:?}");
    } else {
        assert_eq!(software.len(), 1, "lavapipe more than once: {software:?}");
        if vulkan_seen {
            assert!(software[0].starts_with("vulkan:"), "vulkan view preferred: {software:?}");
        }
    }
}

#[test]
fn selection_picks_among_given_devices() {
    let pick = |sel: Option<&str>| labels(&Fleet::from_devices(devices(), sel).unwrap());
    assert_eq!(pick(None), ["cpu:0", "sim:1", "sim:2"]);
    assert_eq!(pick(Some("  ")), ["cpu:0", "sim:1", "sim:2"]);
    assert_eq!(pick(Some("cpu,sim:1")), ["cpu:0", "sim:1"]);
    assert_eq!(pick(Some("-sim")), ["cpu:0"]);
    assert_eq!(pick(Some("sim:*")), ["sim:1", "sim:2"]);
    assert_eq!(pick(Some("-sim:1")), ["cpu:0", "sim:2"]);
    assert_eq!(pick(Some("sim,-sim:2,cpu")), ["cpu:0", "sim:1"]);
}

#[test]
fn the_host_cpu_stays_when_left_out_of_the_members() {
    let fleet = Fleet::from_devices(devices(), Some("sim")).unwrap();
    assert_eq!(fleet.cpu().info().label(), "cpu:0");
    assert!(fleet.get("cpu:0").is_none());
    assert!(fleet.to_string().contains("host: cpu:0 (not a compute member)"), "{fleet}");
}

#[test]
fn malformed_selections_are_clear_errors() {
    let err = Fleet::from_devices(devices(), Some("cpu,sim:x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let msg = err.to_string();
    assert!(msg.contains("\"sim:x\"") && msg.contains("MANYCHIPS_DEVICES=\"cpu,sim:x\""), "{msg}");

    let err = Fleet::from_devices(devices(), Some("cuda:*")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let msg = err.to_string();
    assert!(msg.contains("selects none of: cpu:0, sim:1, sim:2"), "{msg}");
}

#[test]
fn fleets_need_a_cpu_and_unique_labels() {
    let err = Fleet::from_devices(vec![sim(1)], None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("needs a CPU device (its host); given: sim:1"), "{err}");
    let err = Fleet::from_devices(vec![cpu(), sim(1), sim(1)], None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("sim:1"), "{err}");
}

#[test]
fn evict_and_join_change_membership() {
    let mut fleet = Fleet::from_devices(devices(), None).unwrap();
    assert_eq!((fleet.len(), fleet.epoch()), (3, 0));
    let gone = fleet.evict("sim:1").expect("a member");
    assert_eq!(gone.info().label(), "sim:1");
    assert_eq!(labels(&fleet), ["cpu:0", "sim:2"]);
    assert_eq!(fleet.epoch(), 1);
    assert!(fleet.evict("sim:1").is_none());
    assert!(fleet.evict("cuda:0").is_none());
    assert_eq!(fleet.epoch(), 1);

    fleet.join(gone).unwrap();
    assert_eq!(labels(&fleet), ["cpu:0", "sim:2", "sim:1"]);
    assert_eq!(fleet.epoch(), 2);
    let err = fleet.join(sim(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("sim:2 is already a member"), "{err}");
    fleet.join(sim(3)).unwrap();
    assert_eq!(fleet.len(), 4);
}

/// `Fleet::readmit` probes the evicted members: one that works comes back, a lost one
/// stays out.
#[test]
fn readmit_takes_back_the_evicted_devices_that_answer() {
    let lost = Arc::new(SimDevice::new(cpu(), SimProfile::new("lost"), 2).unwrap());
    let mut fleet = Fleet::from_devices(vec![cpu(), sim(1), lost.clone()], None).unwrap();
    fleet.evict("sim:1").unwrap();
    fleet.evict("sim:2").unwrap();
    lost.fail_now(ErrorKind::DeviceLost);
    let events = fleet.readmit(std::time::Duration::from_secs(5));
    assert_eq!(events, [manychips::fleet::FleetEvent::Readmitted { device: "sim:1".into() }]);
    assert_eq!(labels(&fleet), ["cpu:0", "sim:1"]);
    assert_eq!(fleet.membership().evicted()[0].0, "sim:2");
    assert_eq!(fleet.epoch(), 3);
}

#[test]
fn a_failing_sim_device_is_evicted_on_its_device_fault() {
    let flaky = Arc::new(SimDevice::new(cpu(), SimProfile::new("flaky"), 7).unwrap());
    let mut fleet = Fleet::from_devices(vec![cpu(), flaky.clone()], None).unwrap();
    let dev = fleet.get("sim:7").unwrap().clone();
    let a = Tensor::ones([8, 8], DType::F32, &dev).unwrap();
    flaky.fail_after(0, ErrorKind::Fault);
    let err = a.matmul(&a).unwrap_err();
    assert!(err.is_device_fault(), "{err}");
    // What the resilience layer will do: evict the device that faulted, carry on elsewhere.
    assert!(fleet.evict(&dev.info().label()).is_some());
    let host = fleet.cpu().clone();
    let b = Tensor::ones([8, 8], DType::F32, &host).unwrap();
    assert_eq!(b.matmul(&b).unwrap().to_vec::<f32>().unwrap(), vec![8.0; 64]);
}

#[test]
fn the_inventory_table_lists_every_member() {
    let fleet = Fleet::from_devices(devices(), None).unwrap();
    let table = fleet.to_string();
    let header = table.lines().next().unwrap();
    for column in ["device", "name", "vendor", "memory", "dtypes", "identity"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("sim:chip2:2"), "{table}");
    assert!(table.contains("8.0 GiB"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

/// A CPU device that claims to be `backend:ordinal` with the given UUID byte.
fn alias(backend: &str, ordinal: usize, uuid: u8) -> DeviceRef {
    let inner = cpu();
    let info = DeviceInfo {
        id: DeviceId::fresh(),
        backend: backend.into(),
        ordinal,
        name: "Card".into(),
        identity: Identity { uuid: Some([uuid; 16]), ..Identity::default() },
        ..inner.info().clone()
    };
    Arc::new(Posing::new(info, inner))
}

#[test]
fn one_chip_through_several_backends_is_kept_once_after_selection() {
    let all = || vec![cpu(), alias("wgpu", 0, 1), alias("vulkan", 0, 1), alias("vulkan", 1, 2)];
    let fleet = Fleet::from_devices(all(), None).unwrap();
    assert_eq!(labels(&fleet), ["cpu:0", "vulkan:0", "vulkan:1"]);
    assert_eq!(
        fleet.duplicates(),
        [("wgpu:0".to_string(), "vulkan:0".to_string(), SameChip::Uuid)]
    );
    assert!(fleet.to_string().contains("wgpu:0: same chip as vulkan:0 (same UUID), left out"));

    // Selection comes first: asking for the wgpu view gets it.
    let fleet = Fleet::from_devices(all(), Some("-vulkan:0")).unwrap();
    assert_eq!(labels(&fleet), ["cpu:0", "wgpu:0", "vulkan:1"]);
    assert!(fleet.duplicates().is_empty());

    // A second view of a member's chip cannot join.
    let mut fleet = Fleet::from_devices(all(), None).unwrap();
    let err = fleet.join(alias("cuda", 0, 2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("second view of one chip"), "{err}");
    assert_eq!(fleet.epoch(), 0);
}

/// A planner and a data-parallel job built for one fleet share its membership: a device the
/// planner evicts (lost during a split matmul) gets no rows in the job's next step, whose
/// report says why; the fleet lists it out. The job's own eviction reaches the planner.
#[test]
fn schedulers_on_one_fleet_see_each_others_evictions() {
    use manychips::plan::{DeviceProfile, Planner};
    use manychips::train::models::Mlp;
    use manychips::train::nn::{self, Activation, CrossEntropy, Reduction};
    use manychips::train::optim::AdamW;
    use manychips::train::{DataParallel, FleetEvent, Var};

    let host = cpu();
    let chip = |i: usize| {
        SimProfile::new(format!("chip{i}"))
            .with_flops(1e9)
            .with_bandwidth(1e9)
            .with_latency(std::time::Duration::from_micros(20))
            .with_link(4e9)
    };
    let sims: Vec<Arc<SimDevice>> =
        (1..=3).map(|i| Arc::new(SimDevice::new(cpu(), chip(i), i).unwrap())).collect();
    let mut all = vec![host.clone()];
    all.extend(sims.iter().map(|s| s.clone() as DeviceRef));
    let fleet = Fleet::from_devices(all, None).unwrap();
    let profiled = |devices: Vec<DeviceRef>| -> Vec<(DeviceRef, DeviceProfile)> {
        devices
            .into_iter()
            .map(|d| {
                let profile = match d.info().ordinal {
                    i if d.info().backend == "sim" => DeviceProfile::simulated(d.info(), &chip(i)),
                    _ => DeviceProfile::for_device(d.info()),
                };
                (d, profile)
            })
            .collect()
    };
    let sim_refs: Vec<DeviceRef> = sims.iter().map(|s| s.clone() as DeviceRef).collect();
    let mut planner = Planner::new(profiled(sim_refs))
        .unwrap()
        .with_min_gain(-1.0)
        .with_membership(fleet.membership().clone());
    let mut dp = DataParallel::new(profiled(fleet.devices()), 3, |s| {
        Mlp::new(s, &[4, 8, 3], Activation::Relu)
    })
    .unwrap()
    .with_membership(fleet.membership().clone());
    dp.set_fixed_split(Some(vec![1.0; 4])).unwrap();
    let mut opt = AdamW::new(dp.params().to_vec(), 1e-2).unwrap();
    let step = |dp: &mut DataParallel<Mlp>, opt: &mut AdamW| {
        dp.step(
            8,
            |model, device, rows, ctx| {
                let x = Tensor::full(0.5, [rows.len(), 4], DType::F32, device)?;
                let labels: Vec<u32> = rows.clone().map(|r| (r % 3) as u32).collect();
                let opts = CrossEntropy { reduction: Reduction::None, ..CrossEntropy::default() };
                nn::cross_entropy_with(&model.forward(&Var::constant(x), ctx)?, &labels, &opts)
            },
            opt,
        )
        .unwrap()
    };
    let first = step(&mut dp, &mut opt);
    assert!(first.devices.iter().any(|d| d.device == "sim:2"), "{}", first.shares_line());

    // The planner loses sim:2 in a split matmul, evicts it and completes the op.
    sims[1].fail_after(0, ErrorKind::DeviceLost);
    let a = Tensor::ones([256, 256], DType::F32, &host).unwrap();
    let product = planner.matmul(&a, &a).unwrap();
    assert_eq!(product.to_vec::<f32>().unwrap(), vec![256.0; 256 * 256]);
    let evicted = planner.evicted();
    assert_eq!(evicted.len(), 1, "{evicted:?}: {}", planner.last_plan().unwrap().explain());
    assert_eq!(evicted[0].0, "sim:2");
    assert!(fleet.get("sim:2").is_none());
    assert_eq!(fleet.membership().evicted()[0].0, "sim:2");

    // The job's next step leaves it out, and says so.
    let next = step(&mut dp, &mut opt);
    assert!(next.devices.iter().all(|d| d.device != "sim:2"), "{}", next.shares_line());
    let evicted =
        |e: &FleetEvent| matches!(e, FleetEvent::Evicted { device, .. } if device == "sim:2");
    assert!(next.events.iter().any(evicted), "{:?}", next.events);
    assert_eq!(dp.evicted(), vec!["sim:2".to_string()]);

    // The other way: the job loses sim:3; the planner's next op gives it nothing.
    sims[2].fail_after(0, ErrorKind::DeviceLost);
    let after = step(&mut dp, &mut opt);
    assert!(
        after
            .events
            .iter()
            .any(|e| matches!(e, FleetEvent::Evicted { device, .. } if device == "sim:3"))
    );
    planner.start_trace();
    planner.matmul(&a, &a).unwrap();
    let plan = planner.last_plan().unwrap();
    assert!(plan.shares.iter().all(|s| s.device == "sim:1"), "{}", plan.explain());
    let left =
        |e: &FleetEvent| matches!(e, FleetEvent::Evicted { device, .. } if device == "sim:3");
    assert!(plan.events.iter().any(left), "{:?}", plan.events);
    let trace = planner.take_trace().unwrap().to_json();
    assert!(trace.contains("sim:3: evicted: out of the fleet"), "{trace}");
    assert_eq!(labels(&fleet), ["cpu:0", "sim:1"]);
}
