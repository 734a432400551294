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
