//! A simulated device is a real device: the full conformance kit passes on a `SimDevice`
//! computing with the CPU, and tensors on it give the CPU's results while its virtual clock
//! runs at the profile's speed.

use std::sync::Arc;
use std::time::Duration;

use manychips::sim::{SimDevice, SimProfile};
use manychips::{CpuDevice, DType, Device, DeviceRef, ErrorKind, Tensor};

fn sim(profile: SimProfile, ordinal: usize) -> Arc<SimDevice> {
    let cpu: DeviceRef = Arc::new(CpuDevice::new().expect("cpu device"));
    Arc::new(SimDevice::new(cpu, profile, ordinal).expect("sim device"))
}

#[test]
fn full_conformance_kit_passes_on_a_sim_device() {
    // With a peer link, so the kit's copy to itself goes device to device.
    let dev = sim(SimProfile::new("kit").with_peer_link(50e9), 0);
    let report = manychips::conformance::check(&*dev);
    println!("{report}");
    report.assert_ok();
    assert!(dev.clock() > Duration::ZERO);
}

/// Two chips with peer links over one CPU copy device to device: each clock pays the
/// slower link once, where a copy through the host costs the sender a download and the
/// receiver an upload. Chips without a link, or over two CPU devices, go through the host.
#[test]
fn chips_with_peer_links_copy_device_to_device_over_the_slower_link() {
    let cpu: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
    let chip = |name: &str, peer: Option<f64>, ordinal, inner: &DeviceRef| {
        let mut profile = SimProfile::new(name).with_link(1e9).with_latency(Duration::ZERO);
        if let Some(rate) = peer {
            profile = profile.with_peer_link(rate);
        }
        Arc::new(SimDevice::new(inner.clone(), profile, ordinal).unwrap())
    };
    let (a, b) = (chip("a", Some(4e9), 0, &cpu), chip("b", Some(2e9), 1, &cpu));
    let (a_ref, b_ref): (DeviceRef, DeviceRef) = (a.clone(), b.clone());
    assert!(a.reaches(&*b) && b.reaches(&*a) && a.info().peer_copy);
    let x = Tensor::randn(0.0, 1.0, [250, 1000], DType::F32, 3, &a_ref).unwrap();
    // A strided view: made contiguous on the sender, then copied.
    let x = x.t().unwrap();
    let want = x.to_vec::<f32>().unwrap();
    a.reset_clock();
    b.reset_clock();
    let moved = x.to_device(&b_ref).unwrap();
    assert_eq!(moved.to_vec::<f32>().unwrap(), want);
    assert_eq!(moved.device().info().id, b.info().id);
    // 1 MB over the slower link (2 GB/s); the receiver's clock then reads it back (1 ms).
    let over_link = 1e6 / 2e9;
    assert!((b.clock().as_secs_f64() - (over_link + 1e-3)).abs() < 1e-9, "{:?}", b.clock());
    let sender = a.clock().as_secs_f64();
    assert!(
        sender > over_link && sender < over_link + 1e-4,
        "the transpose, then the link: {sender}"
    );

    // No link on one end, or another inner device: through the host.
    let plain = chip("plain", None, 2, &cpu);
    let other_cpu: DeviceRef = Arc::new(CpuDevice::with_threads(1).unwrap());
    let elsewhere = chip("elsewhere", Some(4e9), 3, &other_cpu);
    for to in [plain, elsewhere] {
        assert!(!a.reaches(&*to));
        let to_ref: DeviceRef = to.clone();
        to.reset_clock();
        let moved = x.to_device(&to_ref).unwrap();
        assert_eq!(moved.to_vec::<f32>().unwrap(), want);
        // An upload of 1 MB at 1 GB/s, then the read back.
        assert!((to.clock().as_secs_f64() - 2e-3).abs() < 1e-9, "{:?}", to.clock());
    }
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
