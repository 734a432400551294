//! The planner: calibrate each device, price ops on it, and split ops across the fleet so
//! all devices finish together.
//!
//! 1. Calibrate: [`calibrate()`] measures a device through the Device API alone;
//!    [`Calibration`] caches the result on disk per device and driver.
//! 2. Price: [`predict`] / [`transfer`] give an op's or a host transfer's time from a
//!    [`DeviceProfile`].
//! 3. Split: a [`Planner`] cuts an op along an output axis ([`cut_axes`]) into shares whose
//!    predicted finish times (inputs in, kernel, result out) are equal, leaving out devices
//!    whose fixed costs exceed their gain, and gives small ops whole to the best device. It
//!    runs the shares concurrently, one thread per device, and assembles the result.
//! 4. Learn: measured times update a correction per device × op class ([`Corrections`]).
//! 5. Show: [`Plan::explain`] is a table of shares, predicted and measured; a [`Trace`]
//!    opens in ui.perfetto.dev.
//!
//! [`simulate`] runs a plan on simulated chips as a discrete-event simulation, for fleets
//! of up to thousands of chips that no machine here has.

mod cache;
mod calibrate;
mod cut;
mod execute;
mod learn;
mod on_tensors;
mod packed;
mod planned;
mod planner;
mod price;
mod profile;
mod simulate;
mod split;
mod stopwatch;
mod trace;
mod watchdog;

pub use cache::{CACHE_DIR_ENV, Calibration, default_cache_dir};
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub use calibrate::calibrate_picking_kernel;
pub use calibrate::{Settings, calibrate, calibrate_peer, calibrate_together, calibrate_with};
pub use cut::{cut, cut_axes};
pub use execute::Timing;
pub use learn::{Corrections, LEARNING_RATE};
pub use planned::{Phases, Plan, Share};
pub use planner::{MIN_GAIN, Planner};
pub use price::{Direction, predict, transfer};
pub use profile::{DeviceProfile, MatmulPoint};
pub use simulate::{Chip, Simulated, simulate};
pub use split::{Linear, equal_finish, fluid_makespan, makespan, proportional};
pub(crate) use stopwatch::Stopwatch;
pub use trace::{Event, Trace};

/// The result of a scoped thread that ran one device's work; a panic there becomes a
/// `Fault` naming `op` and the device, which the fleet can act on like any device fault.
pub(crate) fn joined<T>(
    handle: std::thread::ScopedJoinHandle<'_, manychips_api::Result<T>>,
    op: &str,
    device: &dyn manychips_api::Device,
) -> manychips_api::Result<T> {
    handle.join().unwrap_or_else(|_| {
        Err(manychips_api::Error::Fault {
            op: op.into(),
            device: device.info().label(),
            detail: "the thread running this device's work panicked".into(),
        })
    })
}
