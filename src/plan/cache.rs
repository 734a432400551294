//! Calibrated profiles kept on disk, one JSON file per device and driver, so calibration runs
//! once per machine rather than once per process.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manychips_api::{Device, DeviceInfo, Result};

use super::calibrate::{Settings, calibrate_peer, calibrate_together, calibrate_with};
use super::profile::DeviceProfile;
use crate::files::Dir;

/// A cache file is one device's figures, a few kilobytes: a larger one is not read.
pub const MAX_CACHE_FILE: u64 = 1 << 20;
/// Calibrations of one device before a noisy one is accepted (and left uncached).
const ATTEMPTS: usize = 3;

/// The env var that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "MANYCHIPS_CACHE_DIR";

/// Size and duration of the concurrent matmul run of [`Calibration::load_or_measure_all`].
const TOGETHER_N: usize = 512;
const TOGETHER_FOR: Duration = Duration::from_millis(500);

/// The default cache directory: `$MANYCHIPS_CACHE_DIR`, else `$XDG_CACHE_HOME/manychips`,
/// else `~/.cache/manychips`; `None` where none of those is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("manychips")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("manychips")))
}

/// Where profiles are cached, and how devices missing from the cache are measured.
#[derive(Clone, Debug)]
pub struct Calibration {
    dir: Option<PathBuf>,
    settings: Settings,
}

impl Default for Calibration {
    fn default() -> Calibration {
        Calibration::new()
    }
}

impl Calibration {
    /// Caches in [`default_cache_dir`]; without one, every call measures afresh.
    pub fn new() -> Calibration {
        Calibration { dir: default_cache_dir(), settings: Settings::default() }
    }

    /// Caches in `dir` (created on first store).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Calibration {
        Calibration { dir: Some(dir.into()), settings: Settings::default() }
    }

    pub fn with_settings(mut self, settings: Settings) -> Calibration {
        self.settings = settings;
        self
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cache file of the device `info` describes, whether it exists or not.
    pub fn path_for(&self, info: &DeviceInfo) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(file_name(info)))
    }

    /// The cached profile of `info`'s device and driver, if one is there and readable. A
    /// corrupt file, one for another device that happens to share the name, or figures
    /// that make no sense, are ignored. The file is read only if it is a regular file (not
    /// a symlink, FIFO or device) of at most [`MAX_CACHE_FILE`] bytes.
    pub fn load(&self, info: &DeviceInfo) -> Option<DeviceProfile> {
        let dir = self.dir.as_ref()?;
        let name = file_name(info);
        let path = dir.join(&name);
        let read = Dir::open(dir).and_then(|d| d.read_file(&name, MAX_CACHE_FILE));
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "calibration cache unreadable");
                return None;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        match DeviceProfile::from_json(&text) {
            Ok(profile) if !profile.matches(info) => {
                tracing::warn!(path = %path.display(), "calibration cache is for another device");
                None
            }
            Ok(profile) => match profile.doubt(self.settings.max_noise) {
                None => Some(profile),
                Some(why) => {
                    tracing::warn!(path = %path.display(), %why, "calibration cache ignored");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "calibration cache corrupt");
                None
            }
        }
    }

    /// Writes `profile` to its cache file atomically (a temp file renamed over it), so a
    /// reader never sees half a file. Returns the path written.
    pub fn store(&self, info: &DeviceInfo, profile: &DeviceProfile) -> io::Result<PathBuf> {
        let Some(path) = self.path_for(info) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no cache directory"));
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let text = profile.to_json().map_err(io::Error::other)?;
        // A temporary name of this process and call, so two processes or threads storing
        // at once never share one; created new (O_EXCL), so a symlink planted at that name
        // is never written through, only skipped.
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (tmp, mut file) = loop {
            let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("json.tmp{}-{n}", std::process::id()));
            match std::fs::File::create_new(&tmp) {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n % 1000 != 999 => {}
                Err(e) => return Err(e),
            }
        };
        let written =
            std::io::Write::write_all(&mut file, text.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(path)
    }

    /// The cached profile of `device`, or a fresh measurement (then cached) when there is
    /// none, it is unreadable, or `refresh` is set. A failure to write the cache is logged,
    /// not returned: the measured profile is still good.
    pub fn load_or_measure(&self, device: &dyn Device, refresh: bool) -> Result<DeviceProfile> {
        let info = device.info();
        if !refresh && let Some(profile) = self.load(info) {
            tracing::debug!(device = %info.label(), "calibration: cached profile used");
            return Ok(profile);
        }
        let profile = self.measure(device)?;
        self.store_logged(info, &profile);
        Ok(profile)
    }

    /// Calibrates `device`; a profile too noisy to trust (other work on the machine) is
    /// measured again, up to [`ATTEMPTS`] times, and the steadiest one returned.
    fn measure(&self, device: &dyn Device) -> Result<DeviceProfile> {
        let mut best = calibrate_with(device, &self.settings)?;
        for _ in 1..ATTEMPTS {
            if best.doubt(self.settings.max_noise).is_none() {
                break;
            }
            let again = calibrate_with(device, &self.settings)?;
            if again.noise < best.noise {
                best = again;
            }
        }
        Ok(best)
    }

    /// [`load_or_measure`](Self::load_or_measure) for every device, plus the concurrent
    /// matmul rate: whenever a profile was measured afresh or lacks that rate, all devices
    /// run matmuls at the same time and every profile records its share.
    pub fn load_or_measure_all(
        &self,
        devices: &[&dyn Device],
        refresh: bool,
    ) -> Result<Vec<DeviceProfile>> {
        let mut profiles = Vec::with_capacity(devices.len());
        let mut stale = false;
        for &device in devices {
            let cached = if refresh { None } else { self.load(device.info()) };
            stale |= cached.as_ref().is_none_or(|p| p.matmul_rate_concurrent.is_none());
            match cached {
                Some(p) => profiles.push(p),
                None => profiles.push(self.measure(device)?),
            }
        }
        if stale {
            let rates = calibrate_together(devices, TOGETHER_N, TOGETHER_FOR)?;
            for ((profile, rate), device) in profiles.iter_mut().zip(rates).zip(devices) {
                profile.matmul_rate_concurrent = Some(rate);
                self.store_logged(device.info(), profile);
            }
        }
        // Copies between devices that reach each other: a pair's link is no one device's
        // figure, so it is measured for this fleet every time (never cached), and a device
        // keeps its fastest.
        for (profile, &from) in profiles.iter_mut().zip(devices) {
            profile.peer_bytes_per_s = None;
            for &to in devices {
                if let Some(rate) = calibrate_peer(from, to, &self.settings)? {
                    profile.peer_bytes_per_s =
                        Some(profile.peer_bytes_per_s.unwrap_or(0.0).max(rate));
                }
            }
        }
        Ok(profiles)
    }

    /// Caches `profile` unless its figures are in doubt (then the next run measures again).
    fn store_logged(&self, info: &DeviceInfo, profile: &DeviceProfile) {
        if self.dir.is_none() {
            return;
        }
        if let Some(why) = profile.doubt(self.settings.max_noise) {
            tracing::warn!(device = %info.label(), %why, "calibration not cached");
            return;
        }
        match self.store(info, profile) {
            Ok(path) => tracing::debug!(path = %path.display(), "calibration cached"),
            Err(e) => tracing::warn!(device = %info.label(), error = %e, "calibration not cached"),
        }
    }
}

/// `backend-name-hash.json`: readable enough to find by eye, unique by the hash of every key
/// field. FNV-1a rather than std's hasher, whose output may change between Rust releases.
fn file_name(info: &DeviceInfo) -> String {
    let key = [
        info.backend.as_str(),
        info.name.as_str(),
        &info.identity.to_string(),
        info.driver_version.as_str(),
    ]
    .join("\u{1f}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}-{}-{hash:016x}.json", sanitize(&info.backend), sanitize(&info.name))
}

fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("manychips-cache-test-{}-{n}", std::process::id()))
    }

    fn cpu() -> manychips_cpu::CpuDevice {
        manychips_cpu::CpuDevice::new().unwrap()
    }

    #[test]
    fn file_names_are_safe_and_keyed_by_driver() {
        let cpu = cpu();
        let mut info = cpu.info().clone();
        info.name = "Weird / Name: *GPU*".into();
        let a = file_name(&info);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{a}");
        assert!(a.starts_with("cpu-weird-name-gpu-"), "{a}");
        info.driver_version.push('x');
        assert_ne!(file_name(&info), a);
    }

    /// Two simulated chips with peer links over one CPU get a measured peer bandwidth from
    /// the fleet's calibration, never cached; a chip without a link gets none.
    #[test]
    fn the_fleet_calibration_measures_peer_copies_and_does_not_cache_them() {
        let dir = temp_dir();
        let cal = Calibration::in_dir(&dir).with_settings(Settings::quick());
        let inner: std::sync::Arc<dyn Device> =
            std::sync::Arc::new(manychips_cpu::CpuDevice::with_threads(1).unwrap());
        let chip = |ordinal, linked: bool| {
            let mut profile = manychips_sim::SimProfile::new(format!("chip {ordinal}"));
            if linked {
                profile = profile.with_peer_link(10e9);
            }
            manychips_sim::SimDevice::new(inner.clone(), profile, ordinal).unwrap()
        };
        let (a, b, plain) = (chip(0, true), chip(1, true), chip(2, false));
        let profiles = cal.load_or_measure_all(&[&a, &b, &plain], false).unwrap();
        let peer: Vec<bool> = profiles.iter().map(|p| p.peer_bytes_per_s.is_some()).collect();
        assert_eq!(peer, [true, true, false]);
        assert!(profiles[0].peer_bytes_per_s.is_some_and(|r| r.is_finite() && r > 0.0));
        // (A profile measured on a busy machine is not cached at all.)
        let cached = cal.load(a.info());
        assert!(cached.is_none_or(|p| p.peer_bytes_per_s.is_none()), "peer rates are not cached");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stored_profiles_load_back_and_skip_measuring() {
        let dir = temp_dir();
        let cal = Calibration::in_dir(&dir).with_settings(Settings::quick());
        let cpu = cpu();
        assert!(cal.load(cpu.info()).is_none());
        let measured = cal.load_or_measure(&cpu, false).unwrap();
        assert_eq!(cal.load(cpu.info()), Some(measured.clone()));
        // A planted profile is returned as is: proof that nothing was measured.
        let planted = DeviceProfile { latency_s: 123.0, ..measured };
        cal.store(cpu.info(), &planted).unwrap();
        assert_eq!(cal.load_or_measure(&cpu, false).unwrap(), planted);
        assert_ne!(cal.load_or_measure(&cpu, true).unwrap().latency_s, 123.0, "refresh measures");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_or_foreign_files_are_ignored_and_remeasured() {
        let dir = temp_dir();
        let cal = Calibration::in_dir(&dir).with_settings(Settings::quick());
        let cpu = cpu();
        let path = cal.path_for(cpu.info()).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "{\"backend\": \"cpu\", trunc").unwrap();
        assert!(cal.load(cpu.info()).is_none());
        let profile = cal.load_or_measure(&cpu, false).unwrap();
        assert!(profile.peak_matmul_rate() > 0.0);
        assert_eq!(cal.load(cpu.info()), Some(profile.clone()), "rewritten");

        let foreign = DeviceProfile { driver_version: "other".into(), ..profile };
        std::fs::write(&path, foreign.to_json().unwrap()).unwrap();
        assert!(cal.load(cpu.info()).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn links_fifos_and_devices_as_the_cache_file_are_ignored_at_once() {
        let dir = temp_dir();
        let cal = Calibration::in_dir(&dir).with_settings(Settings::quick());
        let cpu = cpu();
        let path = cal.path_for(cpu.info()).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let good = DeviceProfile { ..cal.load_or_measure(&cpu, false).unwrap() };
        let real = dir.join("real.json");
        std::fs::write(&real, good.to_json().unwrap()).unwrap();
        for target in [real.as_path(), Path::new("/dev/zero")] {
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(target, &path).unwrap();
            assert!(cal.load(cpu.info()).is_none(), "followed a link to {}", target.display());
        }
        // Writing goes through a fresh file, never through a link planted at its name.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        for n in 0..512 {
            let tmp = path.with_extension(format!("json.tmp{}-{n}", std::process::id()));
            std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        }
        cal.store(cpu.info(), &good).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(cal.load(cpu.info()), Some(good.clone()));
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if made.is_ok_and(|s| s.success()) {
            // Would block for ever if the FIFO were opened for a plain read.
            assert!(cal.load(cpu.info()).is_none());
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![b' '; MAX_CACHE_FILE as usize + 1]).unwrap();
        assert!(cal.load(cpu.info()).is_none(), "an oversized file is not read");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn noisy_or_absurd_profiles_are_not_cached() {
        let dir = temp_dir();
        let cpu = cpu();
        // Runs always vary a little, so nothing meets a bound below 1.
        let strict = Settings { max_noise: 0.5, ..Settings::quick() };
        let cal = Calibration::in_dir(&dir).with_settings(strict);
        let profile = cal.load_or_measure(&cpu, false).unwrap();
        assert!(profile.peak_matmul_rate() > 0.0, "the figures are still used");
        assert!(!cal.path_for(cpu.info()).unwrap().exists(), "but not cached");
        let quick = Calibration::in_dir(&dir).with_settings(Settings::quick());
        let zero = DeviceProfile { bytes_per_s: 0.0, ..profile };
        quick.store(cpu.info(), &zero).unwrap();
        assert!(quick.load(cpu.info()).is_none(), "a cached 0 B/s is not believed");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_directory_every_call_measures() {
        let cal = Calibration { dir: None, settings: Settings::quick() };
        let cpu = cpu();
        assert!(cal.path_for(cpu.info()).is_none());
        assert!(cal.store(cpu.info(), &DeviceProfile::for_device(cpu.info())).is_err());
        assert!(cal.load_or_measure(&cpu, false).unwrap().peak_matmul_rate() > 0.0);
    }
}
