//! Micro-benchmarks that measure a device through the Device API alone, so any backend
//! (including a third party's) can be calibrated without knowing it.

use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manychips_api::{BinaryOp, BufferId, DType, Device, Layout, Op, Result, View};

use super::profile::{DeviceProfile, MatmulPoint};

/// How long and how big the micro-benchmarks are.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Time spent repeating one measurement before taking its median; a slow device whose
    /// first run already exceeds it is measured once.
    pub per_measurement: Duration,
    /// Most repetitions of one measurement.
    pub max_repeats: usize,
    /// f32 matmul sizes, ascending; larger sizes are skipped once one size exceeds
    /// `per_measurement` (a slow device would spend seconds on them).
    pub matmul_sizes: Vec<usize>,
    /// Size of the f16/bf16 product, measured where the device supports the dtype.
    pub half_matmul_size: usize,
    /// Elements of each operand of the bandwidth-measuring add.
    pub stream_elements: usize,
    /// Bytes of the host↔device transfers.
    pub transfer_bytes: usize,
    /// A profile whose measurements varied more than this (median ÷ fastest run) was taken
    /// while other work competed for the device: it is measured again, and not cached if it
    /// stays that noisy.
    pub max_noise: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            per_measurement: Duration::from_millis(200),
            max_repeats: 50,
            matmul_sizes: vec![128, 512],
            half_matmul_size: 512,
            stream_elements: 4 << 20,
            transfer_bytes: 16 << 20,
            max_noise: 1.5,
        }
    }
}

impl Settings {
    /// Small and short: for tests, where the figures only need to be positive.
    pub fn quick() -> Settings {
        Settings {
            per_measurement: Duration::from_millis(20),
            max_repeats: 5,
            matmul_sizes: vec![64, 128],
            half_matmul_size: 64,
            stream_elements: 1 << 16,
            transfer_bytes: 1 << 18,
            max_noise: f64::INFINITY,
        }
    }
}

/// Measures `device` with the default [`Settings`].
pub fn calibrate(device: &dyn Device) -> Result<DeviceProfile> {
    calibrate_with(device, &Settings::default())
}

/// Measures `device`: matmul rates, streaming bandwidth, per-op latency and host link.
/// The concurrent matmul rate is left `None`: it depends on the other devices, see
/// [`calibrate_together`].
pub fn calibrate_with(device: &dyn Device, settings: &Settings) -> Result<DeviceProfile> {
    let info = device.info();
    let mut profile = DeviceProfile::for_device(info);
    // Latency first: the throughput figures are corrected by it.
    let latency = measure_latency(device, settings)?;
    profile.latency_s = latency;

    let mut noise: f64 = 1.0;
    for &n in &settings.matmul_sizes {
        let Timed { median: t, spread } = measure_matmul(device, DType::F32, n, settings)?;
        noise = noise.max(spread);
        let flops = 2.0 * (n as f64).powi(3);
        profile.matmul.push(MatmulPoint {
            dtype: DType::F32.to_string(),
            n,
            flops_per_s: flops / without_latency(t, latency),
        });
        if t > settings.per_measurement.as_secs_f64() {
            tracing::debug!(device = %info.label(), n, "calibrate: larger matmuls skipped, slow");
            break;
        }
    }
    for dtype in [DType::F16, DType::BF16] {
        if info.supports(dtype) {
            let n = settings.half_matmul_size;
            let Timed { median: t, spread } = measure_matmul(device, dtype, n, settings)?;
            noise = noise.max(spread);
            profile.matmul.push(MatmulPoint {
                dtype: dtype.to_string(),
                n,
                flops_per_s: 2.0 * (n as f64).powi(3) / without_latency(t, latency),
            });
        }
    }

    let (op_bytes, op_flops, Timed { median: t, spread }) = measure_stream(device, settings)?;
    profile.noise = noise.max(spread);
    profile.bytes_per_s = op_bytes / without_latency(t, latency);
    profile.elementwise_flops_per_s = op_flops / without_latency(t, latency);

    let (up, down) = measure_link(device, settings)?;
    let bytes = settings.transfer_bytes as f64;
    profile.host_to_device_bytes_per_s = bytes / without_latency(up, latency);
    profile.device_to_host_bytes_per_s = bytes / without_latency(down, latency);

    profile.measured_at =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    tracing::info!(
        device = %info.label(),
        gflops = profile.peak_matmul_rate() / 1e9,
        gbps = profile.bytes_per_s / 1e9,
        latency_us = latency * 1e6,
        "calibrated"
    );
    Ok(profile)
}

/// Picks the fastest WGSL matmul kernel on `device` (switching with `set_kernel`), then
/// calibrates it with that kernel selected.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub fn calibrate_picking_kernel(
    device: &dyn Device,
    settings: &Settings,
    set_kernel: &dyn Fn(manychips_wgsl::MatmulKernel),
) -> Result<DeviceProfile> {
    let n = settings.matmul_sizes.last().copied().unwrap_or(256).min(256);
    let (kernel, _) = manychips_wgsl::pick_matmul_kernel(device, set_kernel, n)?;
    tracing::debug!(device = %device.info().label(), ?kernel, "calibrate: matmul kernel picked");
    calibrate_with(device, settings)
}

/// Runs an f32 `n`×`n`×`n` matmul on every device at the same time, for `duration`, and
/// returns each device's achieved rate in FLOP/s (in `devices`' order). Devices that share
/// hardware slow each other down here, which measuring each alone would hide.
pub fn calibrate_together(
    devices: &[&dyn Device],
    n: usize,
    duration: Duration,
) -> Result<Vec<f64>> {
    let barrier = Barrier::new(devices.len());
    let flops = 2.0 * (n as f64).powi(3);
    std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .map(|&device| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<f64> {
                    let fixture = MatmulFixture::new(device, DType::F32, n);
                    // Every thread reaches the barrier, even on a failed alloc, or the
                    // others would wait for ever.
                    barrier.wait();
                    let fixture = fixture?;
                    let result = (|| {
                        let start = Instant::now();
                        let mut done = 0u64;
                        // At least one op, so a device slower than `duration` still counts.
                        while done == 0 || start.elapsed() < duration {
                            device.run(&fixture.op)?;
                            device.synchronize()?;
                            done += 1;
                        }
                        Ok(done as f64 * flops / start.elapsed().as_secs_f64())
                    })();
                    fixture.free(device)?;
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(devices)
            .map(|(h, &device)| super::joined(h, "calibrate_together", device))
            .collect()
    })
}

/// Bandwidth of copies from `from` to `to` that go without the host
/// ([`Device::reaches`]), bytes/s: the median time of a `transfer_bytes` copy. `None` where
/// `from` does not reach `to` (or is `to`): such copies go through the host, priced by the
/// two devices' own link figures.
pub fn calibrate_peer(
    from: &dyn Device,
    to: &dyn Device,
    settings: &Settings,
) -> Result<Option<f64>> {
    if from.info().id == to.info().id || !from.reaches(to) {
        return Ok(None);
    }
    let bytes = settings.transfer_bytes.max(1);
    with_buffers(from, &[bytes], |src| {
        with_buffers(to, &[bytes], |dst| {
            let mut direct = true;
            let t = median_time(settings, || {
                direct &= from.copy_to_peer(src[0], 0, to, dst[0], 0, bytes)?;
                to.synchronize()
            })?;
            // A backend that reaches a device but then declines the copy is taken at its word.
            Ok(direct.then(|| bytes as f64 / t.max(f64::MIN_POSITIVE)))
        })
    })
}

/// Seconds of `t` spent computing: the per-op latency taken out, but never more than half,
/// so a noisy latency cannot make a rate infinite or negative.
fn without_latency(t: f64, latency: f64) -> f64 {
    (t - latency).max(t / 2.0).max(f64::MIN_POSITIVE)
}

/// A measured time: the median over repeats, and how far it is above the fastest repeat.
struct Timed {
    median: f64,
    /// Median ÷ fastest: 1 on a quiet machine, large when other work got in the way.
    spread: f64,
}

/// Median of `f`'s time over repeats, after one untimed warm-up (first-use pipeline builds
/// and page faults are not the steady state).
fn median_time(settings: &Settings, f: impl FnMut() -> Result<()>) -> Result<f64> {
    timed(settings, f).map(|t| t.median)
}

fn timed(settings: &Settings, mut f: impl FnMut() -> Result<()>) -> Result<Timed> {
    let warm = Instant::now();
    f()?;
    let first = warm.elapsed();
    if first > settings.per_measurement {
        return Ok(Timed { median: first.as_secs_f64(), spread: 1.0 });
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < settings.max_repeats.max(1)
        && (times.is_empty() || start.elapsed() < settings.per_measurement)
    {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(Timed { median, spread: median / times[0].max(f64::MIN_POSITIVE) })
}

fn contiguous(buffer: BufferId, dims: &[usize], dtype: DType) -> View {
    View::new(buffer, Layout::contiguous(dims.to_vec()), dtype)
}

/// Allocates `buffers` of the given byte sizes, runs `body` with them and frees them,
/// whether `body` succeeded or not.
fn with_buffers<T>(
    device: &dyn Device,
    sizes: &[usize],
    body: impl FnOnce(&[BufferId]) -> Result<T>,
) -> Result<T> {
    let mut buffers = Vec::with_capacity(sizes.len());
    let mut result = Ok(());
    for &bytes in sizes {
        match device.alloc(bytes.max(1)) {
            Ok(b) => buffers.push(b),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let out = result.and_then(|()| body(&buffers));
    for b in buffers {
        if let Err(e) = device.free(b) {
            tracing::warn!(device = %device.info().label(), error = %e, "calibrate: free failed");
        }
    }
    out
}

fn measure_latency(device: &dyn Device, settings: &Settings) -> Result<f64> {
    with_buffers(device, &[4], |b| {
        let op = Op::Fill { out: contiguous(b[0], &[1], DType::F32), value: 1.0 };
        let many = Settings { max_repeats: settings.max_repeats.max(1) * 4, ..settings.clone() };
        median_time(&many, || {
            device.run(&op)?;
            device.synchronize()
        })
    })
}

/// An `n`×`n`×`n` matmul with its operands allocated and filled with ones.
struct MatmulFixture {
    op: Op,
    buffers: [BufferId; 3],
}

impl MatmulFixture {
    fn new(device: &dyn Device, dtype: DType, n: usize) -> Result<MatmulFixture> {
        let bytes = n * n * dtype.size_in_bytes();
        let mut buffers = Vec::new();
        for _ in 0..3 {
            match device.alloc(bytes) {
                Ok(b) => buffers.push(b),
                Err(e) => {
                    for b in buffers {
                        let _ = device.free(b);
                    }
                    return Err(e);
                }
            }
        }
        let buffers = [buffers[0], buffers[1], buffers[2]];
        let view = |b| contiguous(b, &[n, n], dtype);
        let op = Op::Matmul { lhs: view(buffers[0]), rhs: view(buffers[1]), out: view(buffers[2]) };
        let fixture = MatmulFixture { op, buffers };
        // Unwritten memory may hold NaNs or denormals, which run slower on some hardware.
        let filled = (|| {
            for &b in &fixture.buffers[..2] {
                device.run(&Op::Fill { out: view(b), value: 1.0 })?;
            }
            device.synchronize()
        })();
        match filled {
            Ok(()) => Ok(fixture),
            Err(e) => {
                let _ = fixture.free(device);
                Err(e)
            }
        }
    }

    fn free(self, device: &dyn Device) -> Result<()> {
        for b in self.buffers {
            device.free(b)?;
        }
        Ok(())
    }
}

fn measure_matmul(
    device: &dyn Device,
    dtype: DType,
    n: usize,
    settings: &Settings,
) -> Result<Timed> {
    let fixture = MatmulFixture::new(device, dtype, n)?;
    let t = timed(settings, || {
        device.run(&fixture.op)?;
        device.synchronize()
    });
    fixture.free(device)?;
    t
}

/// Returns the add's bytes and flops as the pricing model counts them, and its time.
fn measure_stream(device: &dyn Device, settings: &Settings) -> Result<(f64, f64, Timed)> {
    let n = settings.stream_elements.max(1);
    let bytes = n * DType::F32.size_in_bytes();
    with_buffers(device, &[bytes, bytes, bytes], |b| {
        let view = |i: usize| contiguous(b[i], &[n], DType::F32);
        for i in 0..2 {
            device.run(&Op::Fill { out: view(i), value: 1.0 })?;
        }
        let op = Op::Binary { op: BinaryOp::Add, lhs: view(0), rhs: view(1), out: view(2) };
        let t = timed(settings, || {
            device.run(&op)?;
            device.synchronize()
        })?;
        Ok((op.bytes(), op.flops(), t))
    })
}

/// Times of one host→device write and one device→host read of `transfer_bytes`.
fn measure_link(device: &dyn Device, settings: &Settings) -> Result<(f64, f64)> {
    let bytes = settings.transfer_bytes.max(1);
    with_buffers(device, &[bytes], |b| {
        let mut host = vec![1u8; bytes];
        let up = median_time(settings, || {
            device.write(b[0], 0, &host)?;
            device.synchronize()
        })?;
        let down = median_time(settings, || device.read(b[0], 0, &mut host))?;
        Ok((up, down))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_latency_never_goes_to_zero() {
        assert_eq!(without_latency(1.0, 0.25), 0.75);
        assert_eq!(without_latency(1.0, 2.0), 0.5);
        assert!(without_latency(0.0, 0.0) > 0.0);
    }

    /// Simulated chips with peer links over one CPU reach each other: a copy between them
    /// is measured; a chip without a link, or a device and itself, gives `None`.
    #[test]
    fn peer_bandwidth_is_measured_only_between_devices_that_reach_each_other() {
        use std::sync::Arc;
        let cpu: Arc<dyn Device> = Arc::new(manychips_cpu::CpuDevice::with_threads(1).unwrap());
        let chip = |ordinal, linked: bool| {
            let mut profile = manychips_sim::SimProfile::new("chip");
            if linked {
                profile = profile.with_peer_link(10e9);
            }
            manychips_sim::SimDevice::new(cpu.clone(), profile, ordinal).unwrap()
        };
        let (a, b, plain) = (chip(0, true), chip(1, true), chip(2, false));
        let settings = Settings::quick();
        let rate = calibrate_peer(&a, &b, &settings).unwrap().expect("a reaches b");
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert_eq!(calibrate_peer(&a, &plain, &settings).unwrap(), None);
        assert_eq!(calibrate_peer(&a, &a, &settings).unwrap(), None);
        assert_eq!(calibrate_peer(cpu.as_ref(), &a, &settings).unwrap(), None);
    }

    #[test]
    fn quick_calibration_of_the_cpu_gives_positive_figures() {
        let cpu = manychips_cpu::CpuDevice::new().unwrap();
        let p = calibrate_with(&cpu, &Settings::quick()).unwrap();
        assert!(p.matches(cpu.info()));
        assert!(p.peak_matmul_rate() > 0.0);
        for figure in [
            p.bytes_per_s,
            p.elementwise_flops_per_s,
            p.latency_s,
            p.host_to_device_bytes_per_s,
            p.device_to_host_bytes_per_s,
        ] {
            assert!(figure.is_finite() && figure > 0.0, "{p:?}");
        }
        assert!(p.measured_at > 0);
    }
}
