//! Writing a checkpoint: a temporary directory, every file fsynced, renamed into place.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};

use super::manifest::{
    FORMAT, FileEntry, MANIFEST, MODEL_FILE, Manifest, OPTIMIZER_FILE, TensorEntry,
};
use super::{HostTensor, Snapshot, dir_name, fail, io};
use crate::{DType, Result};

pub(super) fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::U32 => StDtype::U32,
        DType::U8 => StDtype::U8,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
    }
}

fn safetensors_bytes(tensors: &[HostTensor], path: &Path) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(st_dtype(t.dtype), t.dims.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| fail(path, format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| fail(path, format!("serialize: {e}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create_new(path).map_err(|e| io(path, "create", e))?;
    file.write_all(bytes).map_err(|e| io(path, "write", e))?;
    file.sync_all().map_err(|e| io(path, "fsync", e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| io(path, "fsync directory", e))
}

/// The name of the temporary directory this process writes checkpoint `step` in.
pub(super) fn temp_name(step: u64) -> String {
    format!(".tmp-{}-{}", dir_name(step), std::process::id())
}

/// Writes `snapshot` under `dir` atomically; returns the checkpoint's path.
pub fn write_checkpoint(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf> {
    let name = dir_name(snapshot.step);
    let tmp = dir.join(temp_name(snapshot.step));
    let target = dir.join(&name);
    // A leftover of this process id (never a symlink's target: removal does not follow).
    if tmp.symlink_metadata().is_ok() {
        fs::remove_dir_all(&tmp)
            .or_else(|_| fs::remove_file(&tmp))
            .map_err(|e| io(&tmp, "remove stale temporary", e))?;
    }
    fs::create_dir(&tmp).map_err(|e| io(&tmp, "create", e))?;
    let mut files = Vec::new();
    let mut tensors = Vec::new();
    for (file, list) in [(MODEL_FILE, &snapshot.params), (OPTIMIZER_FILE, &snapshot.optimizer)] {
        let bytes = safetensors_bytes(list, &tmp.join(file))?;
        write_synced(&tmp.join(file), &bytes)?;
        files.push(FileEntry {
            name: file.into(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        });
        tensors.extend(list.iter().map(|t| TensorEntry {
            file: file.into(),
            name: t.name.clone(),
            dtype: t.dtype.name().into(),
            shape: t.dims.clone(),
        }));
    }
    let manifest = Manifest {
        format: FORMAT,
        step: snapshot.step,
        optimizer_step: snapshot.optimizer_step,
        files,
        tensors,
        state: snapshot.state.clone(),
        manifest_crc32: None,
    };
    let json = manifest.to_bytes().map_err(|e| fail(&tmp, format!("manifest: {e}")))?;
    write_synced(&tmp.join(MANIFEST), &json)?;
    sync_dir(&tmp)?;
    if target.symlink_metadata().is_ok() {
        // The same step saved again (a resumed job): the new one takes its place in one
        // atomic swap where the system can, so there is never a moment with neither.
        replace(&tmp, &target, dir)?;
    } else {
        fs::rename(&tmp, &target).map_err(|e| io(&target, "rename into place", e))?;
    }
    sync_dir(dir)?;
    Ok(target)
}

/// Puts the finished `tmp` where `target` is, then removes what was there (a damaged
/// checkpoint of the same step, or whatever took its name: removed, never followed).
fn replace(tmp: &Path, target: &Path, dir: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, tmp, CWD, target, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // The new checkpoint is in place, and `tmp` holds the old entry. Removing
                // it is tidying up: a failure is logged, not the save's (the next open
                // removes a leftover temporary).
                sync_dir(dir)?;
                if let Err(e) = remove_entry(tmp) {
                    tracing::warn!(%e, "a replaced checkpoint could not be removed");
                }
                return Ok(());
            }
            // Gone in the meantime: a plain rename below.
            Err(rustix::io::Errno::NOENT) => {}
            // A file system without the exchange: replaced in two steps.
            Err(_) => remove_entry(target)?,
        }
    }
    #[cfg(not(target_os = "linux"))]
    remove_entry(target)?;
    fs::rename(tmp, target).map_err(|e| io(target, "rename into place", e))
}

fn remove_entry(path: &Path) -> Result<()> {
    let removed = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(path, "remove the replaced entry", e))
        }
        _ => Ok(()),
    }
}
