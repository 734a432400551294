//! Finding NVRTC and cuBLAS where the loader does not look.
//!
//! cudarc opens libraries by name (`libnvrtc.so.13`, `libnvrtc.so.12`, …), so only what is
//! on the loader's path is found: `LD_LIBRARY_PATH`, `ld.so.conf`, the system directories.
//! NVIDIA's pip wheels (`site-packages/nvidia/cu13/lib` for CUDA 13, `nvidia/cuda_nvrtc/lib`
//! and `nvidia/cublas/lib` for CUDA 12) and a toolkit under `/usr/local/cuda` usually are not.
//! So before cudarc's first call the backend opens the library itself, by full path, from
//! the first of these that has one:
//!
//! 1. the directories of [`LIB_PATH_ENV`] (colon-separated), whatever their version;
//! 2. the loader's own path (the library opens by name): the user's configuration stands;
//! 3. `$CUDA_HOME`, `$CUDA_PATH` and `/usr/local/cuda` (`lib64`, `targets/x86_64-linux/lib`),
//!    then the `nvidia/*/lib` directories of the Python environments found from `$VIRTUAL_ENV`,
//!    `$CONDA_PREFIX`, every `…/bin` on `$PATH`, `~/.local`, `/usr/local` and `/usr`, and the
//!    venv that `.ci/run` makes. Among these, the newest major version that the driver
//!    supports wins (a CUBIN from NVRTC 13 does not load on a CUDA 12 driver), the first
//!    directory among equals.
//!
//! A library opened by full path keeps its soname (`libnvrtc.so.13`); the loader hands that
//! same library to cudarc's open by name, and to NVRTC's own open of its builtins, which is
//! opened first from the same directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directories searched first for the CUDA libraries, `:`-separated.
pub const LIB_PATH_ENV: &str = "MANYCHIPS_CUDA_LIB_PATH";

/// The CUDA major versions whose libraries the backend can call, newest first.
const MAJORS: [u32; 2] = [13, 12];

/// One library the backend loads: `lib<stem>.so.<major>`, after its companions of the same
/// major from the same directory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub stem: &'static str,
    /// File-name prefixes (before the major) of libraries it opens or links by soname.
    pub companions: &'static [&'static str],
}

pub(crate) const NVRTC: Spec = Spec { stem: "libnvrtc", companions: &["libnvrtc-builtins"] };
pub(crate) const CUBLAS: Spec = Spec { stem: "libcublas", companions: &["libcublasLt"] };

/// Where a library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub major: u32,
}

/// The directories searched after the loader's path, in order (those that exist or not).
pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut toolkits: Vec<PathBuf> = Vec::new();
    toolkits.extend(var("CUDA_HOME"));
    toolkits.extend(var("CUDA_PATH"));
    toolkits.push(PathBuf::from("/usr/local/cuda"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for t in toolkits {
        dirs.push(t.join("lib64"));
        dirs.push(t.join("targets/x86_64-linux/lib"));
    }
    let mut prefixes: Vec<PathBuf> = Vec::new();
    prefixes.extend(var("VIRTUAL_ENV"));
    prefixes.extend(var("CONDA_PREFIX"));
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.ends_with("bin")
                && let Some(prefix) = bin.parent()
            {
                prefixes.push(prefix.to_path_buf());
            }
        }
    }
    if let Some(home) = var("HOME") {
        prefixes.push(home.join(".local"));
    }
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    prefixes
        .push(var("MANYCHIPS_NVRTC_VENV").unwrap_or_else(|| {
            var("HOME").unwrap_or_default().join(".cache/manychips/nvrtc-venv")
        }));
    for prefix in prefixes {
        dirs.extend(wheel_dirs(&prefix));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `prefix/lib/python3*/{site,dist}-packages/nvidia/{cu13,cu12,cuda_nvrtc,cublas}/lib`.
fn wheel_dirs(prefix: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else { return dirs };
    let mut pythons: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    for python in pythons {
        for packages in ["site-packages", "dist-packages"] {
            for wheel in ["cu13", "cu12", "cuda_nvrtc", "cublas"] {
                dirs.push(python.join(packages).join("nvidia").join(wheel).join("lib"));
            }
        }
    }
    dirs
}

/// The library `spec` in `dirs`: the newest major no newer than `driver_major` (when known),
/// the first directory among equals; else the newest of any major.
pub(crate) fn find(spec: Spec, dirs: &[PathBuf], driver_major: Option<u32>) -> Option<Found> {
    let mut found: Vec<Found> = Vec::new();
    for dir in dirs {
        for major in MAJORS {
            let path = dir.join(format!("{}.so.{major}", spec.stem));
            if path.is_file() {
                found.push(Found { path, major });
            }
        }
    }
    // `found` is in search order: the first of the newest is the earliest directory's.
    let newest = |acceptable: &dyn Fn(&Found) -> bool| {
        found.iter().filter(|f| acceptable(f)).min_by_key(|f| std::cmp::Reverse(f.major)).cloned()
    };
    driver_major.and_then(|d| newest(&|f| f.major <= d)).or_else(|| newest(&|_| true))
}

/// Opens `found` (its companions first) and keeps it open for the life of the process.
fn open(spec: Spec, found: &Found) -> Result<(), String> {
    let dir = found.path.parent().unwrap_or(Path::new("."));
    for companion in spec.companions {
        let prefix = format!("{companion}.so.{}", found.major);
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name == prefix || name.starts_with(&format!("{prefix}."))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for path in names {
            // SAFETY: loading a CUDA library runs its initialisers, which are made to run in
            // any process; nothing is called through this handle.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => std::mem::forget(lib),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "companion not opened")
                }
            }
        }
    }
    // SAFETY: as above.
    let lib = unsafe { libloading::Library::new(&found.path) }
        .map_err(|e| format!("{} did not load: {e}", found.path.display()))?;
    std::mem::forget(lib);
    Ok(())
}

/// Whether the loader finds `spec` by one of the names cudarc tries.
fn on_loader_path(spec: Spec) -> bool {
    let name = spec.stem.trim_start_matches("lib");
    cudarc::get_lib_name_candidates(name).iter().any(|candidate| {
        // SAFETY: as in `open`; the handle is dropped again, cudarc opens its own.
        unsafe { libloading::Library::new(candidate) }.is_ok()
    })
}

/// Makes `spec` loadable by name, once per process (see the module comment); what was
/// searched when it is nowhere, for the caller's "not found" reason.
pub(crate) fn prepare(spec: Spec, driver_major: Option<u32>) -> Result<(), String> {
    static NVRTC_DONE: OnceLock<Result<(), String>> = OnceLock::new();
    static CUBLAS_DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = if spec.stem == NVRTC.stem { &NVRTC_DONE } else { &CUBLAS_DONE };
    cell.get_or_init(|| {
        let explicit: Vec<PathBuf> = std::env::var_os(LIB_PATH_ENV)
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        if let Some(found) = find(spec, &explicit, None) {
            return open(spec, &found);
        }
        if on_loader_path(spec) {
            return Ok(());
        }
        let dirs = search_dirs();
        match find(spec, &dirs, driver_major) {
            Some(found) => {
                if driver_major.is_some_and(|d| found.major > d) {
                    tracing::warn!(
                        path = %found.path.display(),
                        "only a CUDA library newer than the driver was found"
                    );
                }
                open(spec, &found)
            }
            None => Err(format!(
                "{} (.so.13 or .so.12) is neither on the loader's path nor in ${LIB_PATH_ENV}, \
                 $CUDA_HOME, /usr/local/cuda or a Python environment's nvidia/*/lib",
                spec.stem
            )),
        }
    })
    .clone()
}

/// The file a loaded library was mapped from (`/proc/self/maps`), to say which one runs.
pub(crate) fn loaded_from(stem: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let needle = format!("/{stem}.so");
    maps.lines()
        .filter_map(|line| line.find('/').map(|at| &line[at..]))
        .find(|path| path.contains(&needle))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn the_newest_major_the_driver_supports_wins() {
        let root = std::env::temp_dir().join(format!("manychips-locate-{}", std::process::id()));
        let toolkit = root.join("cuda/lib64");
        let cu12 = root.join("venv/lib/python3.12/site-packages/nvidia/cuda_nvrtc/lib");
        let cu13 = root.join("venv/lib/python3.12/site-packages/nvidia/cu13/lib");
        touch(&cu12.join("libnvrtc.so.12"));
        touch(&cu13.join("libnvrtc.so.13"));
        touch(&cu13.join("libnvrtc-builtins.so.13.0"));
        let mut dirs = vec![toolkit.clone()];
        dirs.extend(wheel_dirs(&root.join("venv")));
        assert!(dirs.contains(&cu12) && dirs.contains(&cu13), "{dirs:?}");

        let pick = |driver| find(NVRTC, &dirs, driver).map(|f| (f.path, f.major));
        assert_eq!(pick(None), Some((cu13.join("libnvrtc.so.13"), 13)));
        assert_eq!(pick(Some(13)), Some((cu13.join("libnvrtc.so.13"), 13)));
        assert_eq!(pick(Some(12)), Some((cu12.join("libnvrtc.so.12"), 12)));
        // Only a newer one: still found (the caller warns), rather than nothing.
        assert_eq!(pick(Some(11)), Some((cu13.join("libnvrtc.so.13"), 13)));
        // The first directory wins among equal majors.
        touch(&toolkit.join("libnvrtc.so.13"));
        assert_eq!(pick(Some(13)), Some((toolkit.join("libnvrtc.so.13"), 13)));
        assert_eq!(find(CUBLAS, &dirs, None), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_search_covers_toolkits_and_wheels() {
        let dirs = search_dirs();
        assert!(dirs.contains(&PathBuf::from("/usr/local/cuda/lib64")), "{dirs:?}");
        let unique: std::collections::HashSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len(), "searched twice: {dirs:?}");
    }
}
