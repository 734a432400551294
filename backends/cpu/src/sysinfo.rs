//! What the host says about its CPU and memory (Linux `/proc`; sensible fallbacks elsewhere).

/// Used when `/proc/meminfo` cannot be read (not Linux, a sandbox).
const FALLBACK_TOTAL: u64 = 8 << 30;

/// The CPU model and vendor, e.g. `("AMD EPYC 7B13", "AuthenticAMD")`.
pub(crate) fn cpu_model() -> (String, String) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let name = field("model name").or_else(|| field("Model")).unwrap_or_else(|| "cpu".into());
    let vendor = field("vendor_id").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    (name, vendor)
}

/// `(total, available)` bytes of host memory.
pub(crate) fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|v| v.saturating_mul(1024))
    };
    let total = kib("MemTotal").filter(|&t| t > 0).unwrap_or(FALLBACK_TOTAL);
    let free = kib("MemAvailable").or_else(|| kib("MemFree")).unwrap_or(total / 2).min(total);
    (total, free)
}

/// The size of the largest cache (Linux sysfs), e.g. 32 MiB for an L3; `None` elsewhere.
pub(crate) fn last_level_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    let size = |path: std::path::PathBuf| -> Option<usize> {
        let text = std::fs::read_to_string(path.join("size")).ok()?;
        let text = text.trim();
        let (digits, unit) = match text.strip_suffix('K') {
            Some(d) => (d, 1 << 10),
            None => match text.strip_suffix('M') {
                Some(d) => (d, 1 << 20),
                None => (text, 1),
            },
        };
        digits.parse::<usize>().ok()?.checked_mul(unit)
    };
    dir.filter_map(|entry| size(entry.ok()?.path())).max().filter(|&b| b > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_something_sensible() {
        let (total, free) = super::memory();
        assert!(total > 0 && free <= total);
        let (name, vendor) = super::cpu_model();
        assert!(!name.is_empty() && !vendor.is_empty());
        if let Some(bytes) = super::last_level_cache() {
            assert!(bytes >= 4096, "{bytes}");
        }
    }
}
