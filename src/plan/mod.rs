//! The planner: calibrate each device, price ops on it, and (later) split ops across the
//! fleet so all devices finish together.
//!
//! Steps here: [`calibrate()`] measures a device through the Device API alone, [`Calibration`]
//! caches the result on disk per device and driver, and [`predict`] / [`transfer`] price an
//! op or a host transfer from a [`DeviceProfile`].

mod cache;
mod calibrate;
mod price;
mod profile;

pub use cache::{CACHE_DIR_ENV, Calibration, default_cache_dir};
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
pub use calibrate::calibrate_picking_kernel;
pub use calibrate::{Settings, calibrate, calibrate_together, calibrate_with};
pub use price::{Direction, predict, transfer};
pub use profile::{DeviceProfile, MatmulPoint};
