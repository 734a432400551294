//! Finding the CUDA devices: the libraries first (so cudarc never panics on a missing one),
//! then the driver, then each device.

use cudarc::driver::sys::{self, CUresult};
use manychips_api::{Error, Result};

use crate::CudaDevice;
use crate::device::Opening;
use crate::driver::{Described, can_access_peer, describe, driver_version};
use crate::nvrtc::{supported_archs, target_for};

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "cuda".into(), reason: reason.into() }
}

/// Every CUDA device, in the driver's order (`cuda:0`, ...).
///
/// No driver library, no NVRTC, a driver too old, or no device is `Err(Unavailable)` with the
/// reason, never a panic. cuBLAS is optional: without it matmul runs on the backend's own
/// tiled kernel (the device's `driver_version` says "no cuBLAS").
pub fn discover() -> Result<Vec<CudaDevice>> {
    crate::libs::driver().map_err(unavailable)?;
    crate::libs::nvrtc()
        .map_err(|reason| unavailable(format!("{reason}; without NVRTC no kernel can be built")))?;
    // SAFETY: libcuda is loaded and has every symbol the backend calls (libs::driver).
    match unsafe { sys::cuInit(0) } {
        CUresult::CUDA_SUCCESS => {}
        CUresult::CUDA_ERROR_NO_DEVICE => {
            return Err(unavailable(
                "the CUDA driver found no device (cuInit: CUDA_ERROR_NO_DEVICE)",
            ));
        }
        code => return Err(unavailable(format!("cuInit returned {code:?}"))),
    }
    let mut count = 0;
    // SAFETY: an initialised driver; a valid out-pointer.
    let rc = unsafe { sys::cuDeviceGetCount(&mut count) };
    if rc != CUresult::CUDA_SUCCESS {
        return Err(unavailable(format!("cuDeviceGetCount returned {rc:?}")));
    }
    if count <= 0 {
        return Err(unavailable("the CUDA driver reports no device"));
    }
    let archs = supported_archs().map_err(|e| unavailable(format!("{e:?}")))?;
    let version = driver_version().map_err(|e| unavailable(format!("{e:?}")))?;
    let mut skipped = Vec::new();
    let mut described: Vec<(usize, Described)> = Vec::new();
    for ordinal in 0..count as usize {
        match describe(ordinal) {
            Ok(d) => described.push((ordinal, d)),
            Err(e) => skipped.push(format!("cuda:{ordinal}: {e:?}")),
        }
    }
    let mut devices = Vec::new();
    for (ordinal, d) in &described {
        let peers: Vec<usize> = described
            .iter()
            .filter(|(o, other)| o != ordinal && can_access_peer(d.dev, other.dev).unwrap_or(false))
            .map(|(o, _)| *o)
            .collect();
        let target = match target_for(d.cc, &archs) {
            Ok(t) => t,
            Err(reason) => {
                skipped.push(format!("cuda:{ordinal} {}: {reason}", d.name));
                continue;
            }
        };
        let opening = Opening {
            ordinal: *ordinal,
            described: d.clone(),
            target,
            driver_version: version.clone(),
            peers,
        };
        match CudaDevice::open(opening) {
            Ok(device) => devices.push(device),
            Err(e) => {
                tracing::warn!(name = %d.name, error = %e, "cuda device skipped");
                skipped.push(format!("cuda:{ordinal} {}: {e}", d.name));
            }
        }
    }
    if devices.is_empty() {
        return Err(unavailable(format!("no usable CUDA device ({})", skipped.join("; "))));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use manychips_api::ErrorKind;

    /// Without libcuda (CI, this machine) discovery answers Unavailable with the reason; it
    /// never panics. With a GPU it finds it.
    #[test]
    fn discovery_without_a_driver_is_unavailable_with_a_reason() {
        match super::discover() {
            Ok(devices) => {
                assert!(!devices.is_empty());
                println!("found {} CUDA device(s)", devices.len());
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                let text = e.to_string();
                assert!(text.contains("cuda"), "{text}");
                println!("{text}");
                if crate::libs::driver().is_err() {
                    assert!(text.contains("libcuda"), "{text}");
                }
            }
        }
    }
}
