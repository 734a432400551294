//! The CPU backend (being written).

/// The CPU device (being written).
#[derive(Debug)]
pub struct CpuDevice;
