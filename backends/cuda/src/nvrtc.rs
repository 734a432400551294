//! Building kernels/cuda with NVRTC: for a device's compute capability, once per process (in
//! memory) and once per machine (on disk, keyed by source hash, architecture and NVRTC
//! version).
//!
//! A device whose architecture NVRTC knows gets a CUBIN for it (`--gpu-architecture=sm_XY`),
//! so the driver has nothing left to JIT; a newer device gets PTX for the newest architecture
//! NVRTC knows below it, which the driver JIT-compiles.

use std::collections::HashMap;
use std::ffi::{CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use crate::error::CuError;
use crate::kernels::Source;

/// What to build kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Compute capability as `10 * major + minor` (90 for 9.0).
    pub arch: u32,
    /// A CUBIN for `sm_<arch>`; else PTX for `compute_<arch>`.
    pub cubin: bool,
}

impl Target {
    pub fn flag(&self) -> String {
        if self.cubin {
            format!("--gpu-architecture=sm_{}", self.arch)
        } else {
            format!("--gpu-architecture=compute_{}", self.arch)
        }
    }

    fn tag(&self) -> String {
        if self.cubin { format!("sm_{}", self.arch) } else { format!("compute_{}", self.arch) }
    }
}

/// Picks the target for a device of compute capability `cc` given the architectures NVRTC
/// supports (`sm` numbers): the device's own when NVRTC knows it, else PTX of the newest one
/// below it (forward compatible through the driver's JIT).
pub(crate) fn target_for(cc: u32, supported: &[u32]) -> Result<Target, String> {
    if supported.contains(&cc) {
        return Ok(Target { arch: cc, cubin: true });
    }
    match supported.iter().copied().filter(|&a| a <= cc).max() {
        Some(arch) => Ok(Target { arch, cubin: false }),
        None => Err(format!(
            "NVRTC cannot build for compute capability {}.{} (it supports sm_{})",
            cc / 10,
            cc % 10,
            supported.iter().map(u32::to_string).collect::<Vec<_>>().join(", sm_")
        )),
    }
}

/// The architectures this NVRTC compiles for (`sm` numbers, e.g. 75, 80, 90).
pub(crate) fn supported_archs() -> Result<Vec<u32>, CuError> {
    crate::libs::nvrtc().map_err(|detail| CuError::Missing { detail })?;
    let mut n = 0;
    // SAFETY: NVRTC is loaded with every symbol (checked above); a valid out-pointer.
    nvrtc_check(unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }, "nvrtcGetNumSupportedArchs")?;
    let mut archs = vec![0i32; n.max(0) as usize];
    // SAFETY: `archs` holds the number of entries NVRTC said it writes.
    nvrtc_check(
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) },
        "nvrtcGetSupportedArchs",
    )?;
    Ok(archs.into_iter().filter_map(|a| u32::try_from(a).ok()).collect())
}

fn nvrtc_check(rc: nvrtcResult, call: &str) -> Result<(), CuError> {
    if rc == nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CuError::Compile { detail: format!("{call} returned {rc:?}") })
    }
}

/// A compiled program: PTX text (NUL-terminated, as cuModuleLoadData wants it) or a CUBIN,
/// and NVRTC's log.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub image: Vec<u8>,
    pub log: String,
}

/// Destroys the program however compilation ends.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

/// Compiles `source` with its options and `arch_flag` (`--gpu-architecture=...`), returning a
/// CUBIN when `cubin`, else PTX. A failed compilation is an error carrying the log; warnings
/// are in [`Compiled::log`] for the caller to judge.
pub(crate) fn compile(source: Source, arch_flag: &str, cubin: bool) -> Result<Compiled, CuError> {
    crate::libs::nvrtc().map_err(|detail| CuError::Missing { detail })?;
    let text = CString::new(source.program())
        .map_err(|_| CuError::Compile { detail: format!("{source} contains a NUL byte") })?;
    let name = CString::new(source.file())
        .map_err(|_| CuError::Compile { detail: "bad program name".into() })?;
    let mut raw: nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded with every symbol; `text` and `name` outlive the program (it is
    // destroyed by `Program` before they drop); no headers.
    let rc = unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            text.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    nvrtc_check(rc, "nvrtcCreateProgram")?;
    let program = Program(raw);
    let mut options: Vec<CString> = Vec::new();
    for o in std::iter::once(arch_flag).chain(source.options().iter().copied()) {
        options.push(
            CString::new(o).map_err(|_| CuError::Compile { detail: format!("bad option {o}") })?,
        );
    }
    let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: a live program; `pointers` holds `len` valid C strings that outlive the call.
    let rc =
        unsafe { sys::nvrtcCompileProgram(program.0, pointers.len() as i32, pointers.as_ptr()) };
    let log = program_log(&program)?;
    if rc != nvrtcResult::NVRTC_SUCCESS {
        return Err(CuError::Compile {
            detail: format!(
                "NVRTC could not compile {source} ({} {}): {rc:?}\n{log}",
                arch_flag,
                source.options().join(" ")
            ),
        });
    }
    let image = if cubin {
        let mut size = 0usize;
        // SAFETY: a compiled program; valid out-pointer.
        nvrtc_check(unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }, "nvrtcGetCUBINSize")?;
        let mut image = vec![0u8; size];
        // SAFETY: `image` holds the size NVRTC reported.
        nvrtc_check(
            unsafe { sys::nvrtcGetCUBIN(program.0, image.as_mut_ptr().cast()) },
            "nvrtcGetCUBIN",
        )?;
        image
    } else {
        let mut size = 0usize;
        // SAFETY: as above.
        nvrtc_check(unsafe { sys::nvrtcGetPTXSize(program.0, &mut size) }, "nvrtcGetPTXSize")?;
        let mut image = vec![0u8; size];
        // SAFETY: as above; the size includes the terminating NUL.
        nvrtc_check(
            unsafe { sys::nvrtcGetPTX(program.0, image.as_mut_ptr().cast()) },
            "nvrtcGetPTX",
        )?;
        if image.last() != Some(&0) {
            image.push(0);
        }
        image
    };
    Ok(Compiled { image, log })
}

fn program_log(program: &Program) -> Result<String, CuError> {
    let mut size = 0usize;
    // SAFETY: a live program; valid out-pointer.
    nvrtc_check(
        unsafe { sys::nvrtcGetProgramLogSize(program.0, &mut size) },
        "nvrtcGetProgramLogSize",
    )?;
    let mut log = vec![0u8; size.max(1)];
    // SAFETY: `log` holds the size NVRTC reported.
    nvrtc_check(
        unsafe { sys::nvrtcGetProgramLog(program.0, log.as_mut_ptr().cast()) },
        "nvrtcGetProgramLog",
    )?;
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Ok(String::from_utf8_lossy(&log[..end]).trim().to_string())
}

/// The lines of an NVRTC log that are errors or warnings, except the notice NVRTC 12 prints
/// for every architecture below sm_75, which no option silences.
pub(crate) fn problems(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("warning") || lower.contains("error")
        })
        .filter(|l| !l.contains("Architectures prior to '<compute/sm>_75' are deprecated"))
        .collect()
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions (unlike `DefaultHasher`),
/// for cache keys that live on disk.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separates the parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The on-disk cache directory, the same convention as the planner's calibration cache:
/// `$MANYCHIPS_CACHE_DIR`, else `$XDG_CACHE_HOME/manychips`, else `~/.cache/manychips`; kernels
/// go into its `cuda-kernels` subdirectory.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(crate::CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("manychips")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("manychips")))
        .map(|d| d.join("cuda-kernels"))
}

/// The cache file of `source` built for `target` by NVRTC `version`.
pub(crate) fn cache_file(
    dir: &Path,
    source: Source,
    target: Target,
    version: (i32, i32),
) -> PathBuf {
    let program = source.program();
    let options = source.options().join(" ");
    let key = fnv1a(&[
        program.as_bytes(),
        options.as_bytes(),
        target.flag().as_bytes(),
        format!("{}.{}", version.0, version.1).as_bytes(),
    ]);
    let stem = source.file().trim_end_matches(".cu");
    let ext = if target.cubin { "cubin" } else { "ptx" };
    dir.join(format!("{stem}-{}-nvrtc{}.{}-{key:016x}.{ext}", target.tag(), version.0, version.1))
}

/// The largest cached image read back (elementwise.cu's PTX is about 2 MB).
const MAX_CACHED_BYTES: u64 = 64 << 20;

/// The bytes of `path` if it is a plain file (not a symlink: the cache directory is the
/// user's, but what it holds is loaded into the driver) of at most `max` bytes. The handle
/// is checked to be the very file the path named when it was looked at, so a file swapped
/// for a link in between is refused too.
fn read_plain_file(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let named = std::fs::symlink_metadata(path).ok()?;
    if !named.file_type().is_file() || named.len() > max {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let opened = file.metadata().ok()?;
    if !same_file(&named, &opened) || opened.len() > max {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// Whether two metadata describe one file (device and inode; elsewhere than Unix only the
/// symlink check above applies).
#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    true
}

/// Reads a cached image; `None` when absent, unreadable, damaged (the file ends with the
/// FNV-1a hash of the image, so a truncated or corrupt file is recompiled, not loaded), a
/// symlink, or larger than [`MAX_CACHED_BYTES`].
pub(crate) fn read_cached(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = read_plain_file(path, MAX_CACHED_BYTES)?;
    if bytes.len() < 9 {
        return None;
    }
    let split = bytes.len() - 8;
    let stored = u64::from_le_bytes(bytes[split..].try_into().ok()?);
    bytes.truncate(split);
    (fnv1a(&[&bytes]) == stored).then_some(bytes)
}

/// Writes an image atomically (a temporary file renamed into place); failures are logged and
/// otherwise ignored: the cache is an optimisation.
pub(crate) fn write_cached(path: &Path, image: &[u8]) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut bytes = image.to_vec();
        bytes.extend_from_slice(&fnv1a(&[image]).to_le_bytes());
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not cache a CUDA kernel image");
    }
}

type Cell = Arc<OnceLock<Result<Arc<Vec<u8>>, CuError>>>;

/// The image of `source` for `target`: from this process's memory, else from the disk cache,
/// else compiled by NVRTC (and cached in both). Concurrent callers for the same image wait
/// for one compilation.
pub(crate) fn image(source: Source, target: Target) -> Result<Arc<Vec<u8>>, CuError> {
    static IMAGES: OnceLock<Mutex<HashMap<(Source, Target), Cell>>> = OnceLock::new();
    let cell = {
        let mut map =
            IMAGES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((source, target)).or_default().clone()
    };
    cell.get_or_init(|| build(source, target, cache_dir().as_deref()).map(Arc::new)).clone()
}

/// Loads from the disk cache in `dir` or compiles (and stores there).
pub(crate) fn build(
    source: Source,
    target: Target,
    dir: Option<&Path>,
) -> Result<Vec<u8>, CuError> {
    let version = crate::libs::nvrtc().map_err(|detail| CuError::Missing { detail })?;
    let path = dir.map(|d| cache_file(d, source, target, version));
    if let Some(image) = path.as_deref().and_then(read_cached) {
        tracing::debug!(%source, target = %target.tag(), "CUDA kernels from the disk cache");
        return Ok(image);
    }
    let start = std::time::Instant::now();
    let compiled = compile(source, &target.flag(), target.cubin)?;
    for line in problems(&compiled.log) {
        tracing::warn!(%source, target = %target.tag(), "NVRTC: {line}");
    }
    tracing::info!(
        %source,
        target = %target.tag(),
        seconds = start.elapsed().as_secs_f64(),
        bytes = compiled.image.len(),
        "compiled CUDA kernels"
    );
    if let Some(path) = &path {
        write_cached(path, &compiled.image);
    }
    Ok(compiled.image)
}

#[cfg(test)]
mod tests;
