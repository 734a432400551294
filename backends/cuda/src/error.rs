//! CUDA, cuBLAS and NVRTC failures as the contract's [`Error`].
//!
//! Out of memory becomes `OutOfMemory`; the errors CUDA documents as sticky (an illegal
//! address, a failed or timed-out launch, an uncorrectable ECC error, ...), after which the
//! context is unusable, become `DeviceLost` and mark the device as failed; anything else is a
//! `Fault` naming the call. All of them report `is_device_fault()`.

use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::CUresult;
use manychips_api::Error;

/// A failure below the contract: a driver, cuBLAS or NVRTC call, or a missing library.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CuError {
    /// A CUDA driver call (`call`, e.g. `cuLaunchKernel`) returned `code`.
    Driver { code: CUresult, call: &'static str },
    /// The emulator's equivalent of a driver error, with what went wrong.
    Emulated { code: CUresult, detail: String },
    /// A cuBLAS call returned `status`.
    Blas { status: cublasStatus_t, call: &'static str },
    /// NVRTC could not compile a kernel source (the log says why).
    Compile { detail: String },
    /// Something the device needs is not there (a library, a symbol, an image).
    Missing { detail: String },
    /// Queued work did not finish in time (a hang, or a gross slowdown).
    Timeout { detail: String },
}

impl CuError {
    pub(crate) fn driver(code: CUresult, call: &'static str) -> CuError {
        CuError::Driver { code, call }
    }

    /// True when the CUDA context can no longer be used: CUDA's sticky errors, which every
    /// later call in the context returns again.
    pub(crate) fn is_sticky(&self) -> bool {
        match self {
            CuError::Driver { code, .. } | CuError::Emulated { code, .. } => sticky(*code),
            _ => false,
        }
    }

    /// The error as the contract reports it for `op` on `device`.
    pub(crate) fn to_error(&self, op: &str, device: &str) -> Error {
        match self {
            CuError::Driver { code, call } => {
                driver_error(op, device, format!("{call} returned {}", code_name(*code)), *code)
            }
            CuError::Emulated { code, detail } => driver_error(
                op,
                device,
                format!("{detail} ({}, emulated)", code_name(*code)),
                *code,
            ),
            CuError::Blas { status, call } => blas_error(op, device, call, *status),
            CuError::Compile { detail } | CuError::Missing { detail } => {
                Error::Fault { op: op.into(), device: device.into(), detail: detail.clone() }
            }
            CuError::Timeout { detail } => {
                Error::Timeout { op: op.into(), device: device.into(), detail: detail.clone() }
            }
        }
    }
}

/// Wraps a raw driver result.
pub(crate) fn check(code: CUresult, call: &'static str) -> Result<(), CuError> {
    if code == CUresult::CUDA_SUCCESS { Ok(()) } else { Err(CuError::driver(code, call)) }
}

/// Wraps a raw cuBLAS status.
pub(crate) fn check_blas(status: cublasStatus_t, call: &'static str) -> Result<(), CuError> {
    if status == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CuError::Blas { status, call })
    }
}

/// The errors after which "the process is left in an inconsistent state and any further
/// CUDA work will return the same error" (CUDA driver API documentation), plus the driver
/// shutting down and an unknown error, which leave nothing safe to do with the context.
pub(crate) fn sticky(code: CUresult) -> bool {
    matches!(
        code,
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            | CUresult::CUDA_ERROR_LAUNCH_FAILED
            | CUresult::CUDA_ERROR_LAUNCH_TIMEOUT
            | CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUresult::CUDA_ERROR_MISALIGNED_ADDRESS
            | CUresult::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUresult::CUDA_ERROR_INVALID_PC
            | CUresult::CUDA_ERROR_ASSERT
            | CUresult::CUDA_ERROR_ECC_UNCORRECTABLE
            | CUresult::CUDA_ERROR_NVLINK_UNCORRECTABLE
            | CUresult::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUresult::CUDA_ERROR_DEINITIALIZED
            | CUresult::CUDA_ERROR_DEVICE_UNAVAILABLE
            | CUresult::CUDA_ERROR_UNKNOWN
    )
}

/// The variant name of a driver result (`CUDA_ERROR_ILLEGAL_ADDRESS`). Formatted from the
/// enum, so it never needs the driver library.
pub(crate) fn code_name(code: CUresult) -> String {
    format!("{code:?}")
}

/// `what` says what failed and with which code.
fn driver_error(op: &str, device: &str, what: String, code: CUresult) -> Error {
    if code == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::OutOfMemory { op: op.into(), device: device.into(), detail: what };
    }
    if sticky(code) {
        return Error::DeviceLost {
            device: device.into(),
            detail: format!(
                "{what} during {op}; the CUDA context is unusable (a sticky error), so the \
                 device stays failed"
            ),
        };
    }
    Error::Fault { op: op.into(), device: device.into(), detail: what }
}

fn blas_error(op: &str, device: &str, call: &str, status: cublasStatus_t) -> Error {
    let detail = format!("{call} returned {status:?}");
    match status {
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => {
            Error::OutOfMemory { op: op.into(), device: device.into(), detail }
        }
        _ => Error::Fault { op: op.into(), device: device.into(), detail },
    }
}

#[cfg(test)]
mod tests {
    use manychips_api::ErrorKind;

    use super::*;

    fn kind(code: CUresult) -> ErrorKind {
        CuError::driver(code, "cuStreamSynchronize").to_error("synchronize", "cuda:0").kind()
    }

    #[test]
    fn driver_results_map_to_distinct_kinds() {
        assert_eq!(kind(CUresult::CUDA_ERROR_OUT_OF_MEMORY), ErrorKind::OutOfMemory);
        for code in [
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
            CUresult::CUDA_ERROR_LAUNCH_TIMEOUT,
            CUresult::CUDA_ERROR_MISALIGNED_ADDRESS,
            CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION,
            CUresult::CUDA_ERROR_ECC_UNCORRECTABLE,
        ] {
            assert_eq!(kind(code), ErrorKind::DeviceLost, "{code:?}");
            assert!(CuError::driver(code, "x").is_sticky());
        }
        for code in [
            CUresult::CUDA_ERROR_INVALID_VALUE,
            CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        ] {
            assert_eq!(kind(code), ErrorKind::Fault, "{code:?}");
            assert!(!CuError::driver(code, "x").is_sticky());
        }
        assert!(!CuError::driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY, "x").is_sticky());
    }

    #[test]
    fn every_cuda_error_is_a_device_fault_naming_call_op_and_device() {
        let e = CuError::driver(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS, "cuStreamSynchronize")
            .to_error("read", "cuda:1");
        assert!(e.is_device_fault());
        let text = e.to_string();
        for part in ["cuda:1", "read", "cuStreamSynchronize", "CUDA_ERROR_ILLEGAL_ADDRESS"] {
            assert!(text.contains(part), "{text}");
        }
        let oom = CuError::Blas {
            status: cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
            call: "cublasGemmStridedBatchedEx",
        }
        .to_error("matmul", "cuda:0");
        assert_eq!(oom.kind(), ErrorKind::OutOfMemory);
        let blas = CuError::Blas {
            status: cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED,
            call: "cublasGemmStridedBatchedEx",
        }
        .to_error("matmul", "cuda:0");
        assert_eq!(blas.kind(), ErrorKind::Fault);
        assert!(blas.to_string().contains("CUBLAS_STATUS_EXECUTION_FAILED"));
        let late = CuError::Timeout { detail: "300 s".into() }.to_error("synchronize", "cuda:0");
        assert_eq!(late.kind(), ErrorKind::Timeout);
        assert!(late.is_device_fault());
        let compile = CuError::Compile { detail: "elementwise.cu: error".into() };
        assert_eq!(compile.to_error("unary.exp", "cuda:0").kind(), ErrorKind::Fault);
        assert!(check(CUresult::CUDA_SUCCESS, "x").is_ok());
        assert!(check_blas(cublasStatus_t::CUBLAS_STATUS_SUCCESS, "x").is_ok());
    }
}
