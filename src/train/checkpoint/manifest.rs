//! `manifest.json`: what a checkpoint holds, checksummed, and the rules a manifest must
//! follow before anything it names is opened.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::DType;

/// The manifest layout this build writes and reads. Format 1 had no checksum of its own.
pub(super) const FORMAT: u32 = 2;
pub(super) const MODEL_FILE: &str = "model.safetensors";
pub(super) const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub(super) const MANIFEST: &str = "manifest.json";
/// The files a checkpoint consists of, each listed once in its manifest.
pub(super) const FILES: [&str; 2] = [MODEL_FILE, OPTIMIZER_FILE];
/// A manifest is a list of names and shapes: far below this even for large models. Bounds
/// the read of a hostile one (a link to `/dev/zero`, a huge file).
pub(super) const MANIFEST_MAX_BYTES: u64 = 64 << 20;
/// The largest header a safetensors file may have (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    pub format: u32,
    /// Training steps completed; equal to the step in the directory's name.
    pub step: u64,
    pub optimizer_step: u64,
    pub files: Vec<FileEntry>,
    pub tensors: Vec<TensorEntry>,
    pub state: serde_json::Value,
    /// CRC-32 of this manifest serialized without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_crc32: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct TensorEntry {
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

impl TensorEntry {
    /// Its dtype, and its size in bytes (checked: a hostile shape must not overflow).
    pub fn dtype_and_bytes(&self) -> Result<(DType, u64), String> {
        let dtype = DType::ALL
            .into_iter()
            .find(|d| d.name() == self.dtype)
            .ok_or_else(|| format!("tensor {:?}: unknown dtype {:?}", self.name, self.dtype))?;
        let bytes = self
            .shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {:?}: shape {:?} overflows", self.name, self.shape))?;
        Ok((dtype, bytes))
    }
}

/// The checksum of a manifest: CRC-32 of its JSON value without the checksum field,
/// serialized compactly with sorted keys (what `serde_json::Value` writes), so any tool can
/// recompute it whatever the file's whitespace.
pub fn manifest_crc(value: &serde_json::Value) -> u32 {
    let mut body = value.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.remove(CRC_FIELD);
    }
    crc32fast::hash(&serde_json::to_vec(&body).unwrap_or_default())
}

const CRC_FIELD: &str = "manifest_crc32";

impl Manifest {
    /// The manifest's bytes, its checksum filled in.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let unsealed = Manifest { manifest_crc32: None, ..self.clone() };
        let value = serde_json::to_value(&unsealed).map_err(|e| e.to_string())?;
        let sealed = Manifest { manifest_crc32: Some(manifest_crc(&value)), ..unsealed };
        serde_json::to_vec_pretty(&sealed).map_err(|e| e.to_string())
    }

    /// Parses and checks a manifest read from the directory of checkpoint `step`.
    pub fn parse(bytes: &[u8], step: u64) -> Result<Manifest, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
        let format = value.get("format").and_then(|f| f.as_u64());
        if format != Some(FORMAT.into()) {
            let found = format.map_or_else(|| "none".to_string(), |f| f.to_string());
            return Err(format!("manifest format {found} (this build reads {FORMAT})"));
        }
        let Some(saved) = value.get(CRC_FIELD) else {
            return Err("the manifest has no checksum".into());
        };
        let crc = manifest_crc(&value);
        if saved.as_u64() != Some(crc.into()) {
            let said = saved.as_u64().map_or_else(|| saved.to_string(), |c| format!("{c:08x}"));
            return Err(format!("manifest CRC-32 {crc:08x}, it says {said} (edited or corrupted)"));
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| format!("manifest: {e}"))?;
        manifest.check(step)?;
        Ok(manifest)
    }

    /// The rules beyond the checksum: the directory's step, the defined file names, each
    /// once, and tensors that name a listed file, a known dtype and a size that fits.
    fn check(&self, step: u64) -> Result<(), String> {
        if self.step != step {
            return Err(format!("the manifest says step {}, the directory step {step}", self.step));
        }
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        let mut want = FILES.to_vec();
        want.sort_unstable();
        if sorted != want {
            return Err(format!("the manifest lists files {names:?}, a checkpoint has {FILES:?}"));
        }
        let mut seen = HashSet::new();
        let mut payload: HashMap<&str, u64> = HashMap::new();
        for t in &self.tensors {
            if !FILES.contains(&t.file.as_str()) {
                return Err(format!("tensor {:?} is in unknown file {:?}", t.name, t.file));
            }
            if !seen.insert((t.file.as_str(), t.name.as_str())) {
                return Err(format!("tensor {:?} is listed twice in {}", t.name, t.file));
            }
            let (_, bytes) = t.dtype_and_bytes()?;
            let sum = payload.entry(t.file.as_str()).or_insert(0);
            *sum = sum.checked_add(bytes).ok_or_else(|| format!("{} overflows", t.file))?;
        }
        // A file is its tensors plus a header: a larger one is never read (its length is
        // what bounds the read).
        for f in &self.files {
            let tensors = payload.get(f.name.as_str()).copied().unwrap_or(0);
            let most = tensors.saturating_add(8 + MAX_HEADER_BYTES);
            if f.bytes > most {
                return Err(format!(
                    "{} is said to hold {} bytes, more than its tensors ({tensors} bytes) and \
                     a header can take",
                    f.name, f.bytes
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            step: 30,
            optimizer_step: 30,
            files: FILES
                .iter()
                .map(|f| FileEntry { name: f.to_string(), bytes: 100, crc32: 7 })
                .collect(),
            tensors: vec![TensorEntry {
                file: MODEL_FILE.into(),
                name: "w".into(),
                dtype: "f32".into(),
                shape: vec![2, 3],
            }],
            state: serde_json::json!({ "seed": 1, "loss_scale": 0.1 }),
            manifest_crc32: None,
        }
    }

    /// `f` applied to the manifest's JSON, and the checksum recomputed when `seal`.
    fn forged(seal: bool, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value =
            serde_json::from_slice(&sample().to_bytes().unwrap()).unwrap();
        f(&mut value);
        if seal {
            value[CRC_FIELD] = manifest_crc(&value).into();
        }
        serde_json::to_vec(&value).unwrap()
    }

    fn edited(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value =
            serde_json::from_slice(&sample().to_bytes().unwrap()).unwrap();
        f(&mut value);
        serde_json::to_vec_pretty(&value).unwrap()
    }

    #[test]
    fn round_trips_and_detects_edits() {
        let bytes = sample().to_bytes().unwrap();
        let back = Manifest::parse(&bytes, 30).unwrap();
        assert_eq!(Manifest { manifest_crc32: None, ..back }, sample());
        let e = Manifest::parse(&bytes, 31).unwrap_err();
        assert!(e.contains("step 30"), "{e}");
        let e = Manifest::parse(&edited(|v| v["step"] = 31.into()), 31).unwrap_err();
        assert!(e.contains("CRC"), "{e}");
        let e = Manifest::parse(&edited(|v| v["state"]["seed"] = 2.into()), 30).unwrap_err();
        assert!(e.contains("CRC"), "{e}");
        let e = Manifest::parse(&edited(|v| v["extra"] = 1.into()), 30).unwrap_err();
        assert!(e.contains("CRC"), "{e}");
        let e = Manifest::parse(&forged(true, |v| v["extra"] = 1.into()), 30).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = Manifest::parse(
            &edited(|v| {
                v.as_object_mut().unwrap().remove("manifest_crc32");
            }),
            30,
        )
        .unwrap_err();
        assert!(e.contains("no checksum"), "{e}");
        // Recomputing the checksum (whitespace aside) is what a careful forger does; the
        // other rules still hold.
        let back = Manifest::parse(&forged(true, |_| {}), 30).unwrap();
        assert_eq!(back.step, 30);
        let e = Manifest::parse(&forged(true, |v| v["step"] = 31.into()), 30).unwrap_err();
        assert!(e.contains("step 31"), "{e}");
        let e = Manifest::parse(&forged(true, |v| v["format"] = 1.into()), 30).unwrap_err();
        assert!(e.contains("format 1"), "{e}");
    }

    #[test]
    fn only_the_defined_files() {
        for files in [vec!["../x", OPTIMIZER_FILE], vec!["/etc/hostname"], vec![MODEL_FILE]] {
            let mut m = sample();
            m.files = files
                .iter()
                .map(|f| FileEntry { name: f.to_string(), bytes: 1, crc32: 0 })
                .collect();
            let e = Manifest::parse(&m.to_bytes().unwrap(), 30).unwrap_err();
            assert!(e.contains("lists files"), "{e}");
        }
        let mut m = sample();
        m.tensors[0].shape = vec![usize::MAX, 4];
        let e = Manifest::parse(&m.to_bytes().unwrap(), 30).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let mut m = sample();
        m.files[0].bytes = 1 << 40;
        let e = Manifest::parse(&m.to_bytes().unwrap(), 30).unwrap_err();
        assert!(e.contains("more than its tensors"), "{e}");
    }
}
