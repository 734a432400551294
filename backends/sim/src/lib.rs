//! Simulated manychips devices, for tests and benches on fleets no machine here has.
//!
//! A [`SimDevice`] wraps any real device (typically a `CpuDevice`), so every result it
//! returns is really computed; what it simulates is the chip around the results: its name,
//! memory size, and how long each call would take on a chip of the given [`SimProfile`]
//! (speed per op class, memory bandwidth, fixed latency, host link). Time is kept on a
//! virtual clock, so a test can model a 10 TFLOP/s card on a laptop. It can be slowed down or
//! made to fail on command, which is what the fleet's resilience is tested against.
//!
//! The crate depends on the device contract only: it is also the model of how small an
//! out-of-tree backend can be.

mod clock;
mod device;
mod faults;
mod profile;
mod relabel;
mod remap;

pub use device::SimDevice;
pub use profile::{FlopRates, SimProfile};
