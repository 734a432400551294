//! Prints the fleet: every device this build can reach, once per physical chip, as
//! `MANYCHIPS_DEVICES` selects them.
//!
//!     cargo run --release --example fleet
//!     MANYCHIPS_DEVICES=-wgpu cargo run --release --example fleet

use std::process::ExitCode;

use manychips::Fleet;

const HELP: &str = "\
usage: fleet [--help]

Prints every device this build can reach, one row per physical chip: label, name, vendor,
memory, dtypes and identity.

MANYCHIPS_DEVICES selects devices like CUDA_VISIBLE_DEVICES: a comma list of backend,
backend:N or backend:*, each optionally prefixed by - to exclude; e.g. cpu,vulkan:0 or -wgpu.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if let Some(other) = args.first() {
        eprintln!("unknown argument {other:?}\n\n{HELP}");
        return ExitCode::FAILURE;
    }
    match Fleet::discover() {
        Ok(fleet) => {
            print!("{fleet}");
            println!("calibration: not yet implemented (issue 6 planner)");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
