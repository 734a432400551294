//! A `SimDevice` over a real CPU device: real results, simulated time, memory and failures.

use std::sync::Arc;
use std::time::Duration;

use manychips_api::{BufferId, DType, Device, ErrorKind, Layout, Op, View};
use manychips_cpu::CpuDevice;
use manychips_sim::{SimDevice, SimProfile};

fn cpu() -> Arc<dyn Device> {
    Arc::new(CpuDevice::with_threads(1).expect("cpu device"))
}

fn sim(profile: SimProfile) -> SimDevice {
    SimDevice::new(cpu(), profile, 1).expect("sim device")
}

fn upload(dev: &dyn Device, values: &[f32]) -> BufferId {
    let buf = dev.alloc(values.len() * 4).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    dev.write(buf, 0, &bytes).unwrap();
    buf
}

fn download(dev: &dyn Device, buf: BufferId, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 4];
    dev.read(buf, 0, &mut bytes).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn matmul(a: BufferId, b: BufferId, out: BufferId, n: usize) -> Op {
    let v = |buf| View::new(buf, Layout::contiguous([n, n]), DType::F32);
    Op::Matmul { lhs: v(a), rhs: v(b), out: v(out) }
}

#[test]
fn reports_itself_as_the_profiled_chip() {
    let inner = cpu();
    let dev =
        SimDevice::new(inner.clone(), SimProfile::new("fast").with_memory(1 << 20), 3).unwrap();
    let info = dev.info();
    assert_eq!(info.label(), "sim:3");
    assert_eq!(info.backend, "sim");
    assert_eq!(info.name, "fast");
    assert_eq!(info.memory_total, 1 << 20);
    assert_eq!(info.identity.other.as_deref(), Some("sim:fast:3"));
    assert_eq!(info.identity.uuid, None);
    assert_eq!(info.dtypes, inner.info().dtypes);
    assert_ne!(info.id, inner.info().id);
    assert_eq!(dev.memory().unwrap().total, 1 << 20);
}

#[test]
fn computes_real_results_and_advances_the_virtual_clock() {
    let latency = Duration::from_micros(10);
    let profile = SimProfile::new("t").with_flops(1e9).with_link(1e9).with_latency(latency);
    let dev = sim(profile.clone());
    let n = 16;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32).collect();
    let identity: Vec<f32> = (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let (ba, bi) = (upload(&dev, &a), upload(&dev, &identity));
    let out = dev.alloc(n * n * 4).unwrap();
    let writes = profile.transfer_time(n * n * 4) * 2;
    assert_eq!(dev.clock(), writes);

    let op = matmul(ba, bi, out, n);
    dev.run(&op).unwrap();
    assert_eq!(dev.clock(), writes + profile.op_time(&op));
    assert_eq!(download(&dev, out, n * n), a);
    assert_eq!(dev.clock(), writes * 3 / 2 + profile.op_time(&op));

    dev.reset_clock();
    assert_eq!(dev.clock(), Duration::ZERO);
}

#[test]
fn slowdown_scales_the_virtual_time() {
    let dev = sim(SimProfile::new("t").with_flops(1e9));
    let n = 32;
    let (a, b, out) = (
        upload(&dev, &vec![1.0; n * n]),
        upload(&dev, &vec![1.0; n * n]),
        dev.alloc(n * n * 4).unwrap(),
    );
    let op = matmul(a, b, out, n);
    dev.reset_clock();
    dev.run(&op).unwrap();
    let once = dev.clock();
    dev.set_slowdown(3.0).unwrap();
    dev.reset_clock();
    dev.run(&op).unwrap();
    let slow = dev.clock();
    assert!((slow.as_secs_f64() / once.as_secs_f64() - 3.0).abs() < 1e-6, "{once:?} vs {slow:?}");
    assert_eq!(dev.set_slowdown(0.0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(dev.set_slowdown(f64::NAN).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(dev.slowdown(), 3.0);
}

#[test]
fn allocations_beyond_the_profile_memory_are_out_of_memory() {
    let dev = sim(SimProfile::new("small").with_memory(1000));
    let a = dev.alloc(600).unwrap();
    let err = dev.alloc(600).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory);
    assert!(err.to_string().contains("sim:1"), "{err}");
    assert_eq!(dev.memory().unwrap().free, 400);
    dev.free(a).unwrap();
    assert_eq!(dev.memory().unwrap().free, 1000);
    dev.alloc(1000).unwrap();
}

#[test]
fn fail_after_fails_the_right_op_once() {
    let dev = sim(SimProfile::new("t"));
    let buf = dev.alloc(16).unwrap();
    let fill = Op::Fill { out: View::new(buf, Layout::contiguous([4]), DType::F32), value: 2.0 };
    dev.fail_after(2, ErrorKind::Fault);
    dev.run(&fill).unwrap();
    dev.run(&fill).unwrap();
    let err = dev.run(&fill).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fault);
    assert!(err.is_device_fault());
    assert!(err.to_string().contains("sim:1"), "{err}");
    dev.run(&fill).unwrap();
    assert_eq!(download(&dev, buf, 4), [2.0; 4]);
    assert_eq!(dev.injected_failures(), 1);
}

#[test]
fn a_lost_device_stays_lost_until_healed() {
    let dev = sim(SimProfile::new("t"));
    let buf = dev.alloc(16).unwrap();
    dev.fail_now(ErrorKind::DeviceLost);
    assert_eq!(dev.synchronize().unwrap_err().kind(), ErrorKind::DeviceLost);
    assert!(dev.is_lost());
    assert_eq!(dev.alloc(4).unwrap_err().kind(), ErrorKind::DeviceLost);
    assert_eq!(dev.read(buf, 0, &mut [0; 4]).unwrap_err().kind(), ErrorKind::DeviceLost);
    dev.heal();
    dev.read(buf, 0, &mut [0; 4]).unwrap();
}

#[test]
fn out_of_memory_can_be_injected() {
    let dev = sim(SimProfile::new("t"));
    dev.fail_now(ErrorKind::OutOfMemory);
    assert_eq!(dev.alloc(4).unwrap_err().kind(), ErrorKind::OutOfMemory);
    dev.alloc(4).unwrap();
}

#[test]
fn buffers_of_the_inner_device_are_foreign() {
    let inner = cpu();
    let dev = SimDevice::new(inner.clone(), SimProfile::new("t"), 0).unwrap();
    let theirs = inner.alloc(16).unwrap();
    assert_eq!(dev.read(theirs, 0, &mut [0; 4]).unwrap_err().kind(), ErrorKind::DeviceMismatch);
    let ours = dev.alloc(16).unwrap();
    assert_eq!(inner.read(ours, 0, &mut [0; 4]).unwrap_err().kind(), ErrorKind::DeviceMismatch);
}

#[test]
fn errors_of_the_inner_device_name_the_simulated_one() {
    let dev = sim(SimProfile::new("t"));
    let buf = dev.alloc(16).unwrap();
    let err = dev.read(buf, 12, &mut [0; 8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let msg = err.to_string();
    assert!(msg.contains("sim:1") && !msg.contains("cpu:0"), "{msg}");
}

#[test]
fn bad_profiles_are_refused() {
    let err = SimDevice::new(cpu(), SimProfile::new("t").with_flops(0.0), 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn dropping_frees_what_it_allocated_on_a_shared_inner_device() {
    let inner = cpu();
    {
        let dev = SimDevice::new(inner.clone(), SimProfile::new("t"), 0).unwrap();
        for _ in 0..4 {
            dev.alloc(1 << 10).unwrap();
        }
    }
    // The CPU pools freed memory, so its byte counts say little; what matters is that the
    // drop neither fails nor hangs and leaves the inner device working.
    let buf = inner.alloc(4).unwrap();
    inner.free(buf).unwrap();
}
