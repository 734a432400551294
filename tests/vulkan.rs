// The full conformance kit on every Vulkan device this machine has (lavapipe in CI).
//
// `cargo test --release --test vulkan -- --nocapture` prints each device's table. With `CI`
// set, finding no Vulkan device is a failure: a GPU test that silently skips in CI does not
// count. Elsewhere the test says what it skipped and why.

#[cfg(feature = "vulkan")]
mod vulkan {
    use std::time::Instant;

    use manychips::conformance::{self, Config};
    use manychips::{Device, ErrorKind};
    use manychips_vulkan::{MatmulKernel, VulkanDevice};

    /// Every Vulkan device, or `None` (after saying why) where the test may skip.
    fn devices() -> Option<Vec<VulkanDevice>> {
        match manychips_vulkan::discover() {
            Ok(devices) => Some(devices),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "discovery failed: {e}");
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but no Vulkan device was found: {e}"
                );
                println!("skipped: no Vulkan device ({e})");
                None
            }
        }
    }

    fn conforms(config: &Config) {
        let Some(devices) = devices() else { return };
        for device in &devices {
            let info = device.info();
            println!(
                "{} {:?} ({}, driver {}, {}; dtypes {:?}; {:?})",
                info.label(),
                info.name,
                info.vendor,
                info.driver_version,
                info.identity,
                info.dtypes,
                device.features()
            );
            let start = Instant::now();
            let report = conformance::check_with(device, config);
            println!("{report}");
            println!("{}: conformance kit took {:.2?}", info.label(), start.elapsed());
            report.assert_ok();
        }
    }

    #[test]
    fn every_vulkan_device_conforms() {
        conforms(&Config::full());
    }

    /// Every matmul variant passes the kit, not only the one each device picks by default.
    #[test]
    fn every_matmul_kernel_conforms() {
        let Some(devices) = devices() else { return };
        for device in devices {
            for kernel in
                [MatmulKernel::Naive, MatmulKernel::RegisterBlocked, MatmulKernel::SharedTiles]
            {
                device.set_matmul_kernel(kernel);
                let report = conformance::check_with(&device, &Config::full().only("matmul"));
                println!("{kernel:?}: {report}");
                report.assert_ok();
            }
        }
    }

    /// A negative index counts from the end; one still out of range is reported as given
    /// (the kit checks the error's kind, this its words), and its row reads zero.
    #[test]
    fn out_of_range_indices_are_named_as_given() {
        use manychips::{BinaryOp, DType, Layout, Op, View};
        let Some(devices) = devices() else { return };
        let view = |device: &VulkanDevice, values: &[u8], dims: &[usize], dtype| {
            let buf = device.alloc(values.len()).expect("alloc");
            device.write(buf, 0, values).expect("write");
            View::new(buf, Layout::contiguous(dims), dtype)
        };
        let f32s = |bytes: &[u8]| -> Vec<f32> {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        for device in &devices {
            let data: Vec<u8> = (0..10).flat_map(|v| (v as f32).to_le_bytes()).collect();
            let input = view(device, &data, &[5, 2], DType::F32);
            let idx: Vec<u8> = [0i32, -7, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
            let indices = view(device, &idx, &[3], DType::I32);
            let out = view(device, &[0xAB; 24], &[3, 2], DType::F32);
            let op = Op::IndexSelect { input, indices, out: out.clone(), axis: 0 };
            let e = device.run(&op).and_then(|()| device.synchronize()).expect_err("-7 of 5");
            assert_eq!(e.kind(), ErrorKind::IndexOutOfRange, "{e}");
            assert!(e.to_string().contains("-7") && e.to_string().contains("length 5"), "{e}");
            let mut got = vec![0; 24];
            device.read(out.buffer, 0, &mut got).expect("read");
            assert_eq!(f32s(&got), [0.0, 1.0, 0.0, 0.0, 8.0, 9.0]);

            // The float remainder is exact (fmod, then the divisor's sign), also where
            // a / b rounds across an integer or the quotient is large.
            let pairs = [(1.0f32, 0.1f32), (-7.0, 0.1), (6.0, -0.3), (1e15, 0.37), (5.0, -1e30)];
            let col = |k: usize| -> Vec<u8> {
                pairs.iter().flat_map(|p| [p.0, p.1][k].to_le_bytes()).collect()
            };
            let n = pairs.len();
            let (lhs, rhs) =
                (view(device, &col(0), &[n], DType::F32), view(device, &col(1), &[n], DType::F32));
            let out = view(device, &vec![0; 4 * n], &[n], DType::F32);
            device.run(&Op::Binary { op: BinaryOp::Rem, lhs, rhs, out: out.clone() }).expect("rem");
            let mut got = vec![0; 4 * n];
            device.read(out.buffer, 0, &mut got).expect("read");
            for (&(a, b), r) in pairs.iter().zip(f32s(&got)) {
                let m = a % b;
                let want = if m != 0.0 && (m < 0.0) != (b < 0.0) { m + b } else { m };
                assert_eq!(r.to_bits(), want.to_bits(), "{a} % {b}: {r}, want {want}");
            }
        }
    }

    /// `sort` and `topk` are compositions of the kit's ops (bit views, integer compares,
    /// `where`): on a Vulkan device they give the CPU's order, NaNs and ties included.
    #[test]
    fn sort_and_topk_match_the_cpu() {
        use std::sync::Arc;

        use manychips::{CpuDevice, DType, DeviceRef, Tensor};
        let Some(devices) = devices() else { return };
        let cpu: DeviceRef = Arc::new(CpuDevice::new().expect("cpu"));
        let data: Vec<f32> = (0..3 * 37)
            .map(|i| if i % 17 == 3 { f32::NAN } else { ((i * 7919) % 23) as f32 - 11.0 })
            .collect();
        let ints: Vec<i32> = (0..3 * 37).map(|i: i32| (i * 7919) % 23 - 11).collect();
        for device in devices {
            let dev: DeviceRef = Arc::new(device);
            for descending in [false, true] {
                let order = |d: &DeviceRef| {
                    let x = Tensor::from_slice(&data, [3, 37], d).expect("upload");
                    x.argsort(-1, descending).expect("argsort").to_vec::<u32>().expect("read")
                };
                assert_eq!(order(&dev), order(&cpu), "descending {descending}");
            }
            let top = |d: &DeviceRef| {
                let x = Tensor::from_slice(&ints, [3, 37], d).expect("upload");
                let (v, i) = x.topk(5, 1, true).expect("topk");
                (v.to_vec::<i32>().expect("values"), i.to_vec::<u32>().expect("positions"))
            };
            assert_eq!(top(&dev), top(&cpu));
            let halves = Tensor::from_slice(&data, [3, 37], &dev).expect("upload");
            let sorted = halves.cast(DType::BF16).expect("bf16").sort(1, false).expect("sort");
            assert_eq!(sorted.0.dims(), &[3, 37]);
        }
    }

    #[test]
    fn discovery_names_each_device() {
        let Some(devices) = devices() else { return };
        for (ordinal, device) in devices.iter().enumerate() {
            let info = device.info();
            assert_eq!(info.backend, "vulkan");
            assert_eq!(info.ordinal, ordinal);
            assert!(info.identity.uuid.is_some(), "{} has no UUID", info.label());
            assert!(info.memory_total > 0);
            assert!(!info.dtypes.is_empty());
        }
    }
}

#[cfg(not(feature = "vulkan"))]
#[test]
fn vulkan_backend_not_built() {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the `vulkan` feature is off, so no Vulkan device was tested"
    );
    println!("skipped: manychips built without the `vulkan` feature");
}
