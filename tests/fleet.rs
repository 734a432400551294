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
