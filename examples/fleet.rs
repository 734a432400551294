//! Prints the fleet: every device this build can reach, once per physical chip, as
//! `MANYCHIPS_DEVICES` selects them, with each device's calibrated figures.
//!
//!     cargo run --release --example fleet
//!     cargo run --release --example fleet -- --recalibrate
//!     MANYCHIPS_DEVICES=-wgpu cargo run --release --example fleet

use std::process::ExitCode;

use manychips::plan::{Calibration, DeviceProfile};
use manychips::{Device, Fleet};

const HELP: &str = "\
usage: fleet [--recalibrate] [--help]

Prints every device this build can reach, one row per physical chip: label, name, vendor,
memory, dtypes and identity; then each device's calibrated figures: f32 matmul GFLOP/s
alone and with every device busy at once, streaming bandwidth, launch latency and host link.

Calibration runs once per device and driver and is cached in $MANYCHIPS_CACHE_DIR, else
$XDG_CACHE_HOME/manychips, else ~/.cache/manychips; --recalibrate measures afresh.

MANYCHIPS_DEVICES selects devices like CUDA_VISIBLE_DEVICES: a comma list of backend,
backend:N or backend:*, each optionally prefixed by - to exclude; e.g. cpu,vulkan:0 or -wgpu.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let recalibrate = args.iter().any(|a| a == "--recalibrate");
    if let Some(other) = args.iter().find(|a| *a != "--recalibrate") {
        eprintln!("unknown argument {other:?}\n\n{HELP}");
        return ExitCode::FAILURE;
    }
    let fleet = match Fleet::discover() {
        Ok(fleet) => fleet,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{fleet}");

    let calibration = Calibration::new();
    let members = fleet.devices();
    let devices: Vec<&dyn Device> = members.iter().map(|d| d.as_ref()).collect();
    let profiles = match calibration.load_or_measure_all(&devices, recalibrate) {
        Ok(profiles) => profiles,
        Err(err) => {
            eprintln!("calibration failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!();
    print_calibration(&devices, &profiles);
    match calibration.dir() {
        Some(dir) => println!("calibration cache: {}", dir.display()),
        None => println!("calibration cache: none (no cache directory; measured afresh)"),
    }
    ExitCode::SUCCESS
}

fn print_calibration(devices: &[&dyn Device], profiles: &[DeviceProfile]) {
    println!(
        "{:<10} {:>12} {:>13} {:>10} {:>11} {:>10} {:>10}  measured",
        "device", "matmul GF/s", "together GF/s", "mem GB/s", "latency µs", "h2d GB/s", "d2h GB/s"
    );
    for (device, p) in devices.iter().zip(profiles) {
        let together =
            p.matmul_rate_concurrent.map_or_else(|| "-".to_string(), |r| format!("{:.1}", r / 1e9));
        println!(
            "{:<10} {:>12.1} {:>13} {:>10.1} {:>11.1} {:>10.2} {:>10.2}  {}",
            device.info().label(),
            p.peak_matmul_rate() / 1e9,
            together,
            p.bytes_per_s / 1e9,
            p.latency_s * 1e6,
            p.host_to_device_bytes_per_s / 1e9,
            p.device_to_host_bytes_per_s / 1e9,
            age(p),
        );
    }
}

/// `4 min ago`, or `-` for figures that were not measured.
fn age(p: &DeviceProfile) -> String {
    let Some(age) = p.age() else { return "-".into() };
    let secs = age.as_secs();
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        7200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}
