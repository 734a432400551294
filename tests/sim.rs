//! A simulated device is a real device: the full conformance kit passes on a `SimDevice`
//! computing with the CPU, and tensors on it give the CPU's results while its virtual clock
//! runs at the profile's speed.

use std::sync::Arc;
use std::time::Duration;

use manychips::sim::{SimDevice, SimProfile};
use manychips::{CpuDevice, DType, DeviceRef, ErrorKind, Tensor};

fn sim(profile: SimProfile, ordinal: usize) -> Arc<SimDevice> {
    let cpu: DeviceRef = Arc::new(CpuDevice::new().expect("cpu device"));
    Arc::new(SimDevice::new(cpu, profile, ordinal).expect("sim device"))
}

#[test]
fn full_conformance_kit_passes_on_a_sim_device() {
    let dev = sim(SimProfile::new("kit"), 0);
    let report = manychips::conformance::check(&*dev);
    println!("{report}");
    report.assert_ok();
    assert!(dev.clock() > Duration::ZERO);
}

#[test]
fn tensors_on_a_sim_device_match_the_cpu_and_cost_virtual_time() {
    let cpu: DeviceRef = Arc::new(CpuDevice::new().unwrap());
    let dev = sim(SimProfile::new("slow").with_flops(1e9).with_latency(Duration::ZERO), 1);
    let sim_ref: DeviceRef = dev.clone();
    let n = 64;
    let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 1, &cpu).unwrap();
    let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, 2, &cpu).unwrap();
    let want = a.matmul(&b).unwrap().to_vec::<f32>().unwrap();
    let (sa, sb) = (a.to_device(&sim_ref).unwrap(), b.to_device(&sim_ref).unwrap());
    dev.reset_clock();
    let got = sa.matmul(&sb).unwrap();
    // One 64³ matmul at 1 GFLOP/s, the cost of the compute alone.
    let compute = 2.0 * (n * n * n) as f64 / 1e9;
    assert!((dev.clock().as_secs_f64() - compute).abs() < 1e-9, "{:?}", dev.clock());
    assert_eq!(got.to_vec::<f32>().unwrap(), want);
}

#[test]
fn an_injected_loss_surfaces_as_a_device_fault_through_tensors() {
    let dev = sim(SimProfile::new("flaky"), 2);
    let sim_ref: DeviceRef = dev.clone();
    let a = Tensor::ones([4, 4], DType::F32, &sim_ref).unwrap();
    dev.fail_now(ErrorKind::DeviceLost);
    let err = a.matmul(&a).and_then(|t| t.to_vec::<f32>()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeviceLost);
    assert!(err.is_device_fault());
    assert!(err.to_string().contains("sim:2"), "{err}");
}
