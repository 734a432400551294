// The full conformance kit on every CUDA device this machine has, and on the CUDA emulator.
//
// `cargo test --release --test cuda -- --nocapture` prints each device's table. CI has no
// GPU, so finding no CUDA device is not a failure here (unlike Vulkan, which CI runs on
// lavapipe): the test says what it skipped and why. The emulator (this backend's whole host
// side, validation, lowering to kernel launches and cuBLAS calls, buffers, status words and
// errors, over host memory with the kernels interpreted) runs the kit everywhere, CI included.

#[cfg(feature = "cuda")]
mod cuda {
    use std::time::Instant;

    use manychips::conformance::{self, Config};
    use manychips::{Device, ErrorKind};
    use manychips_cuda::{CudaDevice, MatmulPath, ScatterKernel};

    /// Every CUDA device, or `None` after saying why there is none.
    fn devices() -> Option<Vec<CudaDevice>> {
        match manychips_cuda::discover() {
            Ok(devices) => Some(devices),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "discovery failed: {e}");
                println!("skipped: no CUDA device ({e})");
                None
            }
        }
    }

    fn describe(device: &CudaDevice) {
        let info = device.info();
        println!(
            "{} {:?} ({}, driver {}, {}; compute capability {:?}, kernels {:?}, cuBLAS {}; \
             peer copy {})",
            info.label(),
            info.name,
            info.vendor,
            info.driver_version,
            info.identity,
            device.compute_capability(),
            device.kernel_target(),
            device.has_cublas(),
            info.peer_copy
        );
    }

    fn conforms(device: &CudaDevice, config: &Config, what: &str) {
        let start = Instant::now();
        let report = conformance::check_with(device, config);
        println!("{report}");
        println!(
            "{} ({what}): conformance kit took {:.2?}",
            device.info().label(),
            start.elapsed()
        );
        report.assert_ok();
    }

    #[test]
    fn every_cuda_device_conforms() {
        let Some(devices) = devices() else { return };
        for device in &devices {
            describe(device);
            let start = Instant::now();
            device.warm_up().expect("kernels build and load");
            println!("{}: kernels ready in {:.2?}", device.info().label(), start.elapsed());
            conforms(device, &Config::full(), "default settings");
        }
    }

    /// cuBLAS and the tiled kernel both pass, and both scatter kernels.
    #[test]
    fn every_matmul_path_and_scatter_kernel_conforms() {
        let Some(devices) = devices() else { return };
        for device in &devices {
            for path in [MatmulPath::Cublas, MatmulPath::Tiled] {
                device.set_matmul_path(path);
                conforms(device, &Config::full().only("matmul"), &format!("{path:?}"));
            }
            for kernel in [ScatterKernel::Deterministic, ScatterKernel::Atomic] {
                device.set_scatter_kernel(kernel);
                let config = Config::full().only("index_add").only("scatter_add");
                conforms(device, &config, &format!("{kernel:?}"));
            }
        }
    }

    #[test]
    fn discovery_names_each_device() {
        let Some(devices) = devices() else { return };
        for (ordinal, device) in devices.iter().enumerate() {
            let info = device.info();
            assert_eq!(info.backend, "cuda");
            assert_eq!(info.ordinal, ordinal);
            assert!(info.identity.uuid.is_some(), "{} has no UUID", info.label());
            let pci = info.identity.pci_bus_id.as_deref().unwrap_or_default();
            assert_eq!(pci.len(), "0000:00:00.0".len(), "{pci}");
            assert!(info.memory_total > 0);
            // Every dtype, i64 included (integers are computed exactly).
            assert_eq!(info.dtypes, manychips::DType::ALL);
            assert!(device.memory().unwrap().free <= info.memory_total);
        }
    }

    /// The same card through CUDA and Vulkan is one chip to the fleet, kept as CUDA.
    #[test]
    fn the_fleet_keeps_the_cuda_view_of_a_card() {
        let Some(devices) = devices() else { return };
        let fleet = manychips::Fleet::discover().expect("fleet");
        println!("{fleet}");
        for device in &devices {
            let uuid = device.info().identity.uuid;
            let kept: Vec<String> = fleet
                .devices()
                .iter()
                .filter(|d| d.info().identity.uuid.is_some() && d.info().identity.uuid == uuid)
                .map(|d| d.info().label())
                .collect();
            assert_eq!(kept.len(), 1, "{kept:?}");
            assert!(kept[0].starts_with("cuda:"), "{kept:?}");
        }
    }

    /// The emulator passes the whole kit: every op, dtype, layout and contract check goes
    /// through this backend's lowering and bookkeeping, on every machine.
    #[test]
    fn the_emulated_cuda_device_conforms() {
        let device = CudaDevice::emulated().expect("emulator");
        conforms(&device, &Config::full(), "emulated, default settings");
    }

    #[test]
    fn the_emulated_cuda_device_conforms_on_every_path() {
        let device = CudaDevice::emulated().expect("emulator");
        device.set_matmul_path(MatmulPath::Tiled);
        conforms(&device, &Config::full().only("matmul"), "emulated, tiled matmul");
        for kernel in [ScatterKernel::Deterministic, ScatterKernel::Atomic] {
            device.set_scatter_kernel(kernel);
            let config = Config::full().only("index_add").only("scatter_add");
            conforms(&device, &config, &format!("emulated, {kernel:?}"));
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_backend_not_built() {
    println!("skipped: manychips built without the `cuda` feature");
}
