//! The one error type of the device contract.
//!
//! Every message names the op, the device and (in `detail`) the shapes and dtypes involved.
//! [`Error::is_device_fault`] separates the caller's mistakes from faults of the chip, which
//! the fleet reacts to by evicting the device.

/// A `Result` whose error is the contract's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit together (matmul inner dims, broadcast, reshape element count).
    #[error("{op} on {device}: shape mismatch: {detail}")]
    Shape { op: String, device: String, detail: String },

    /// Dtypes that do not fit together (e.g. adding f32 to f16, a float index).
    #[error("{op} on {device}: dtype mismatch: {detail}")]
    DType { op: String, device: String, detail: String },

    /// The device cannot compute this dtype (it is absent from its `DeviceInfo::dtypes`), or
    /// the op is not defined for it (arithmetic on u8).
    #[error("{op} on {device}: dtype {dtype} is not supported{detail}")]
    UnsupportedDType { op: String, device: String, dtype: crate::DType, detail: String },

    /// Tensors or buffers that live on different devices were combined.
    #[error("{op}: device mismatch: {detail}")]
    DeviceMismatch { op: String, detail: String },

    /// An index (a dimension, or a value of an index tensor) outside its range.
    #[error("{op} on {device}: index out of range: {detail}")]
    IndexOutOfRange { op: String, device: String, detail: String },

    /// Any other invalid argument (unknown buffer, view past the end of its buffer, ...).
    #[error("{op} on {device}: invalid argument: {detail}")]
    InvalidArgument { op: String, device: String, detail: String },

    /// The device could not allocate memory.
    #[error("{op} on {device}: out of memory: {detail}")]
    OutOfMemory { op: String, device: String, detail: String },

    /// The device is gone (driver reset, hardware fault, sticky context error).
    #[error("{device}: device lost: {detail}")]
    DeviceLost { device: String, detail: String },

    /// The device missed a deadline (a hang or a gross slowdown).
    #[error("{op} on {device}: timed out: {detail}")]
    Timeout { op: String, device: String, detail: String },

    /// Any other fault reported by the device or its driver.
    #[error("{op} on {device}: device fault: {detail}")]
    Fault { op: String, device: String, detail: String },

    /// A backend that has no usable device here (no driver, no library), and why.
    #[error("backend {backend} unavailable: {reason}")]
    Unavailable { backend: String, reason: String },

    /// A checkpoint that could not be written, or read back whole and verified.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: String, detail: String },

    /// The caller's own code (a loss closure run on a device's thread) panicked: a bug to
    /// report as it is, not a fault of the device it happened to run on.
    #[error("{op}: the caller's code panicked: {detail}")]
    Panicked { op: String, detail: String },
}

/// The coarse class of an [`Error`], for code that reacts to errors (tests, the fleet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Shape,
    DType,
    UnsupportedDType,
    DeviceMismatch,
    IndexOutOfRange,
    InvalidArgument,
    OutOfMemory,
    DeviceLost,
    Timeout,
    Fault,
    Unavailable,
    Checkpoint,
    Panicked,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Shape { .. } => ErrorKind::Shape,
            Error::DType { .. } => ErrorKind::DType,
            Error::UnsupportedDType { .. } => ErrorKind::UnsupportedDType,
            Error::DeviceMismatch { .. } => ErrorKind::DeviceMismatch,
            Error::IndexOutOfRange { .. } => ErrorKind::IndexOutOfRange,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::OutOfMemory { .. } => ErrorKind::OutOfMemory,
            Error::DeviceLost { .. } => ErrorKind::DeviceLost,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Fault { .. } => ErrorKind::Fault,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Checkpoint { .. } => ErrorKind::Checkpoint,
            Error::Panicked { .. } => ErrorKind::Panicked,
        }
    }

    /// The same error naming `device` as where it happened: a backend's helper (a kernel
    /// library, an inner device) does not know the label its caller goes by.
    pub fn on_device(mut self, device: &str) -> Error {
        match &mut self {
            Error::Shape { device: d, .. }
            | Error::DType { device: d, .. }
            | Error::UnsupportedDType { device: d, .. }
            | Error::IndexOutOfRange { device: d, .. }
            | Error::InvalidArgument { device: d, .. }
            | Error::OutOfMemory { device: d, .. }
            | Error::DeviceLost { device: d, .. }
            | Error::Timeout { device: d, .. }
            | Error::Fault { device: d, .. } => *d = device.to_string(),
            Error::DeviceMismatch { .. }
            | Error::Unavailable { .. }
            | Error::Checkpoint { .. }
            | Error::Panicked { .. } => {}
        }
        self
    }

    /// The device the error names, where it names one.
    pub fn device(&self) -> Option<&str> {
        match self {
            Error::Shape { device, .. }
            | Error::DType { device, .. }
            | Error::UnsupportedDType { device, .. }
            | Error::IndexOutOfRange { device, .. }
            | Error::InvalidArgument { device, .. }
            | Error::OutOfMemory { device, .. }
            | Error::DeviceLost { device, .. }
            | Error::Timeout { device, .. }
            | Error::Fault { device, .. } => Some(device),
            Error::DeviceMismatch { .. }
            | Error::Unavailable { .. }
            | Error::Checkpoint { .. }
            | Error::Panicked { .. } => None,
        }
    }

    /// True for faults of the device itself (lost, out of memory, hung, driver error), which
    /// the fleet answers by evicting the device and re-planning; false for caller mistakes.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::OutOfMemory | ErrorKind::DeviceLost | ErrorKind::Timeout | ErrorKind::Fault
        )
    }
}
