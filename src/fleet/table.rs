//! The fleet as an inventory table.

use std::fmt;

use super::Fleet;
use crate::DeviceRef;

const HEADERS: [&str; 6] = ["device", "name", "vendor", "memory", "dtypes", "identity"];

impl fmt::Display for Fleet {
    /// One row per member (label, name, vendor, memory, dtypes, identity), then notes: the
    /// host CPU if it is no member, devices left out as duplicates, backends that found none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 6]> = self.devices().iter().map(row).collect();
        let mut widths = HEADERS.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 6]| -> fmt::Result {
            let [a, b, c, d, e, id] = cells;
            let [wa, wb, wc, wd, we, _] = widths;
            writeln!(f, "{a:<wa$}  {b:<wb$}  {c:<wc$}  {d:>wd$}  {e:<we$}  {id}")
        };
        line(f, HEADERS)?;
        for r in &rows {
            line(f, r.each_ref().map(String::as_str))?;
        }
        let host = self.cpu().info().label();
        if self.get(&host).is_none() {
            writeln!(f, "host: {host} (not a compute member)")?;
        }
        for (dropped, kept, by) in self.duplicates() {
            writeln!(f, "{dropped}: same chip as {kept} ({by}), left out")?;
        }
        for why in self.unavailable() {
            writeln!(f, "none from: {why}")?;
        }
        Ok(())
    }
}

fn row(device: &DeviceRef) -> [String; 6] {
    let info = device.info();
    let dtypes: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
    [
        info.label(),
        info.name.clone(),
        info.vendor.clone(),
        memory(info.memory_total),
        dtypes.join(","),
        info.identity.to_string(),
    ]
}

/// Bytes in GiB (MiB below one GiB); `-` where the backend cannot tell (wgpu on a GPU).
fn memory(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes {
        0 => "-".into(),
        b if b < 1 << 30 => format!("{:.0} MiB", b as f64 / MIB),
        b => format!("{:.1} GiB", b as f64 / (MIB * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::memory;

    #[test]
    fn memory_is_readable() {
        assert_eq!(memory(0), "-");
        assert_eq!(memory(512 << 20), "512 MiB");
        assert_eq!(memory(3 << 29), "1.5 GiB");
    }
}
