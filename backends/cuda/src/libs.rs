//! Finding the CUDA libraries at run time, without ever letting cudarc panic.
//!
//! cudarc (with `dynamic-loading`) loads each library on its first call and panics when the
//! library, or one symbol, is missing. So before any call the backend checks here that the
//! library loads ([`is_culib_present`](cudarc::driver::sys::is_culib_present)) and that
//! every symbol it will call resolves (an older driver lacks newer entry points). The answers
//! are computed once per process. NVRTC and cuBLAS are first looked for where the loader
//! does not look (pip wheels, `/usr/local/cuda`: [`crate::locate`]).

use std::sync::OnceLock;

use cudarc::nvrtc::sys::nvrtcResult;

/// Driver entry points the backend calls.
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetUuid_v2",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDeviceCanAccessPeer",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxEnablePeerAccess",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemcpyPeerAsync",
    "cuMemsetD8Async",
    "cuMemGetInfo_v2",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
];

/// NVRTC entry points the backend calls.
const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcGetNumSupportedArchs",
    "nvrtcGetSupportedArchs",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcDestroyProgram",
];

/// cuBLAS entry points the backend calls.
const CUBLAS_SYMBOLS: &[&str] = &[
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSetMathMode",
    "cublasGemmStridedBatchedEx",
];

/// The shared-library names cudarc tries for `name` (`libcuda.so`, `libcuda.so.12`, ...).
fn candidates(name: &str) -> String {
    let mut names: Vec<String> = Vec::new();
    for n in cudarc::get_lib_name_candidates(name) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.join(", ")
}

/// Ok when libcuda loads and has every symbol the backend calls; else why not.
pub(crate) fn driver() -> Result<(), String> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: loading libcuda runs its initialisers; the driver library is made to be
            // loaded into any process.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err(format!(
                    "the CUDA driver library is not installed or not on the library path \
                     (looked for {}): no NVIDIA driver here",
                    candidates("cuda")
                ));
            }
            // SAFETY: the library is present (checked above), so `culib` finds it rather than
            // panicking; `get` only looks a symbol up.
            let lib = unsafe { cudarc::driver::sys::culib() };
            let missing: Vec<&str> = DRIVER_SYMBOLS
                .iter()
                .copied()
                .filter(|s| unsafe { lib.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "the CUDA driver lacks {} (this backend calls the CUDA 12 driver API)",
                    missing.join(", ")
                ))
            }
        })
        .clone()
}

/// The CUDA major version the driver supports (13 for driver 580), when a driver loads.
fn driver_major() -> Option<u32> {
    driver().ok()?;
    let mut version = 0;
    // SAFETY: the driver has every symbol the backend calls (`driver`); cuDriverGetVersion
    // needs no cuInit; a valid out-pointer.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS && version > 0)
        .then_some(version as u32 / 1000)
}

/// NVRTC's version when libnvrtc loads and has every symbol the backend calls; else why not.
pub(crate) fn nvrtc() -> Result<(i32, i32), String> {
    static NVRTC: OnceLock<Result<(i32, i32), String>> = OnceLock::new();
    NVRTC
        .get_or_init(|| {
            let searched = crate::locate::prepare(crate::locate::NVRTC, driver_major());
            // SAFETY: as for the driver: NVRTC is an ordinary shared library.
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Err(format!(
                    "NVRTC (the CUDA runtime compiler, which builds the kernels) is not found \
                     (looked for {}; {}); install the CUDA toolkit or `pip install \
                     nvidia-cuda-nvrtc` (CUDA 13) or `nvidia-cuda-nvrtc-cu12`, or name its lib \
                     directory in {}",
                    candidates("nvrtc"),
                    searched.err().unwrap_or_else(|| "it did not load".into()),
                    crate::locate::LIB_PATH_ENV,
                ));
            }
            // SAFETY: present, so `culib` does not panic; `get` only looks a symbol up.
            let lib = unsafe { cudarc::nvrtc::sys::culib() };
            let missing: Vec<&str> = NVRTC_SYMBOLS
                .iter()
                .copied()
                .filter(|s| unsafe { lib.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err())
                .collect();
            if !missing.is_empty() {
                return Err(format!("NVRTC is too old: it lacks {}", missing.join(", ")));
            }
            let (mut major, mut minor) = (0, 0);
            // SAFETY: every symbol resolved; two valid out-pointers.
            let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
            if rc != nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcVersion returned {rc:?}"));
            }
            Ok((major, minor))
        })
        .clone()
}

/// Ok when libcublas loads and has every symbol the backend calls; else why not (matmul then
/// runs on the backend's own tiled kernel).
pub(crate) fn cublas() -> Result<(), String> {
    static CUBLAS: OnceLock<Result<(), String>> = OnceLock::new();
    CUBLAS
        .get_or_init(|| {
            let searched = crate::locate::prepare(crate::locate::CUBLAS, driver_major());
            // SAFETY: as for the driver.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err(format!(
                    "cuBLAS is not found (looked for {}; {})",
                    candidates("cublas"),
                    searched.err().unwrap_or_else(|| "it did not load".into()),
                ));
            }
            // SAFETY: present, so `culib` does not panic; `get` only looks a symbol up.
            let lib = unsafe { cudarc::cublas::sys::culib() };
            let missing: Vec<&str> = CUBLAS_SYMBOLS
                .iter()
                .copied()
                .filter(|s| unsafe { lib.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("cuBLAS is too old: it lacks {}", missing.join(", ")))
            }
        })
        .clone()
}

/// Each CUDA library the backend uses, with the file it runs from and its version, or why it
/// is not there: for reports (`manychips_cuda::libraries()`).
pub fn libraries() -> Vec<(&'static str, Result<String, String>)> {
    let from = |stem: &str| {
        crate::locate::loaded_from(stem)
            .map_or_else(|| "loaded".to_string(), |p| p.display().to_string())
    };
    let driver = driver().map(|()| match driver_major() {
        Some(major) => format!("{} (CUDA {major})", from("libcuda")),
        None => from("libcuda"),
    });
    let nvrtc = nvrtc().map(|(a, b)| format!("{} (NVRTC {a}.{b})", from("libnvrtc")));
    let cublas = cublas().map(|()| from("libcublas"));
    vec![("libcuda", driver), ("libnvrtc", nvrtc), ("libcublas", cublas)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names called as `<prefix><Name>(` in `source`.
    fn calls<'a>(source: &'a str, prefix: &str) -> Vec<&'a str> {
        source
            .match_indices(prefix)
            .filter_map(|(at, _)| {
                let rest = &source[at + prefix.len()..];
                let end = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_')?;
                rest[end..].starts_with('(').then(|| &rest[..end])
            })
            .collect()
    }

    /// A symbol called without being probed would make cudarc panic on a library that
    /// lacks it: every call in the sources must be in the probed lists.
    #[test]
    fn every_symbol_the_backend_calls_is_probed_first() {
        let sources = [
            include_str!("driver.rs"),
            include_str!("discover.rs"),
            include_str!("device.rs"),
            include_str!("nvrtc.rs"),
        ];
        let mut seen = 0;
        for source in sources {
            for name in calls(source, "sys::cu") {
                assert!(DRIVER_SYMBOLS.contains(&format!("cu{name}").as_str()), "cu{name}");
                seen += 1;
            }
            for name in calls(source, "blas::cublas") {
                assert!(CUBLAS_SYMBOLS.contains(&format!("cublas{name}").as_str()), "cublas{name}");
                seen += 1;
            }
            for name in calls(source, "sys::nvrtc") {
                assert!(NVRTC_SYMBOLS.contains(&format!("nvrtc{name}").as_str()), "nvrtc{name}");
                seen += 1;
            }
        }
        assert!(seen > 40, "found only {seen} calls");
    }

    /// Whatever this machine has, probing answers (it never panics), and an absent library
    /// comes with a reason that says what was looked for.
    #[test]
    fn probing_never_panics_and_explains_absence() {
        for (what, result) in
            [("driver", driver().map(|_| ())), ("nvrtc", nvrtc().map(|_| ())), ("cublas", cublas())]
        {
            match result {
                Ok(()) => println!("{what}: present"),
                Err(reason) => {
                    println!("{what}: {reason}");
                    assert!(!reason.is_empty());
                }
            }
        }
        if let Err(reason) = driver() {
            assert!(reason.contains("libcuda.so") || reason.contains("lacks"), "{reason}");
        }
        if let Err(reason) = nvrtc() {
            assert!(reason.contains("libnvrtc") || reason.contains("too old"), "{reason}");
        }
    }
}
