//! Checkpoints a killed job resumes from, bit-exact.
//!
//! A checkpoint is a directory `step-000000123/` holding `model.safetensors` (the
//! parameters by name), `optimizer.safetensors` (its state by name) and `manifest.json`
//! (the step, the caller's own state such as RNG and data position, every tensor's dtype
//! and shape, and each file's length and CRC-32). It is written as `.tmp-…` next to the
//! others, each file fsynced, then renamed into place and the directory fsynced: a reader
//! sees a whole checkpoint or none. Reading verifies lengths, checksums, the safetensors
//! headers and every tensor against the manifest; [`Checkpoints::latest`] falls back to
//! the newest checkpoint that passes and says which ones it skipped and why.
//!
//! The training step pays only for [`Snapshot::capture`] (reading the tensors to host
//! memory); [`Checkpoints::save`] hands the bytes to a background thread that writes them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::Param;
use super::optim::Optimizer;
use crate::{DType, Error, Result, Tensor};

const FORMAT: u32 = 1;
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const MANIFEST: &str = "manifest.json";

/// One tensor's bytes in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// Waits for `tensor` and copies it to the host.
    pub fn read(name: &str, tensor: &Tensor) -> Result<HostTensor> {
        Ok(HostTensor {
            name: name.to_string(),
            dtype: tensor.dtype(),
            dims: tensor.dims().to_vec(),
            bytes: tensor.to_bytes()?,
        })
    }

    /// The tensor on `like`'s device, checked to have `like`'s dtype and shape.
    fn upload_like(&self, like: &Tensor, path: &str) -> Result<Tensor> {
        if self.dtype != like.dtype() || self.dims != like.dims() {
            return Err(Error::Checkpoint {
                path: path.into(),
                detail: format!(
                    "{} is {}{:?} in the checkpoint but {:?} in the model",
                    self.name, self.dtype, self.dims, like
                ),
            });
        }
        Tensor::from_bytes(&self.bytes, self.dims.clone(), self.dtype, like.device())
    }
}

/// Everything a checkpoint holds, in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Training steps completed.
    pub step: u64,
    pub params: Vec<HostTensor>,
    /// The optimizer's step count and state tensors.
    pub optimizer_step: u64,
    pub optimizer: Vec<HostTensor>,
    /// The caller's own state (RNG seeds and positions, data-loader position, schedule).
    pub state: serde_json::Value,
}

impl Snapshot {
    /// Copies the parameters and the optimizer's state to the host: the only part of a
    /// checkpoint the training loop waits for.
    pub fn capture(
        step: u64,
        params: &[Param],
        optimizer: &dyn Optimizer,
        state: serde_json::Value,
    ) -> Result<Snapshot> {
        let params = params
            .iter()
            .map(|p| HostTensor::read(p.name(), &p.value()))
            .collect::<Result<Vec<_>>>()?;
        let (optimizer_step, tensors) = optimizer.state();
        let optimizer =
            tensors.iter().map(|(n, t)| HostTensor::read(n, t)).collect::<Result<Vec<_>>>()?;
        Ok(Snapshot { step, params, optimizer_step, optimizer, state })
    }

    /// Puts the saved values back into `params` (matched by name) and `optimizer`.
    pub fn restore(
        &self,
        params: &[Param],
        optimizer: &mut dyn Optimizer,
        path: &Path,
    ) -> Result<()> {
        let label = path.display().to_string();
        let saved: HashMap<&str, &HostTensor> =
            self.params.iter().map(|t| (t.name.as_str(), t)).collect();
        for param in params {
            let Some(t) = saved.get(param.name()) else {
                return Err(Error::Checkpoint {
                    path: label,
                    detail: format!("has no parameter {}", param.name()),
                });
            };
            param.set(t.upload_like(&param.value(), &label)?)?;
        }
        let mut state = Vec::with_capacity(self.optimizer.len());
        for t in &self.optimizer {
            // Optimizer state lives with its parameter and is named `<param>.<slot>`.
            let owner = params
                .iter()
                .find(|p| t.name.strip_prefix(p.name()).is_some_and(|s| s.starts_with('.')));
            let Some(owner) = owner else {
                return Err(Error::Checkpoint {
                    path: label,
                    detail: format!("optimizer state {} belongs to no parameter", t.name),
                });
            };
            state.push((t.name.clone(), t.upload_like(&owner.value(), &label)?));
        }
        optimizer.load_state(self.optimizer_step, &state)
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct Manifest {
    format: u32,
    step: u64,
    optimizer_step: u64,
    files: Vec<FileEntry>,
    tensors: Vec<TensorEntry>,
    state: serde_json::Value,
}

#[derive(Serialize, Deserialize, Debug)]
struct FileEntry {
    name: String,
    bytes: u64,
    crc32: u32,
}

#[derive(Serialize, Deserialize, Debug)]
struct TensorEntry {
    file: String,
    name: String,
    dtype: String,
    shape: Vec<usize>,
}

fn fail(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    fail(path, format!("{what}: {e}"))
}

fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::U32 => StDtype::U32,
        DType::U8 => StDtype::U8,
    }
}

fn from_st_dtype(dtype: StDtype) -> Option<DType> {
    match dtype {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::U32 => Some(DType::U32),
        StDtype::U8 => Some(DType::U8),
        _ => None,
    }
}

/// The directory name of the checkpoint after `step` steps.
fn dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

fn parse_step(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
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
    let mut file = File::create(path).map_err(|e| io(path, "create", e))?;
    file.write_all(bytes).map_err(|e| io(path, "write", e))?;
    file.sync_all().map_err(|e| io(path, "fsync", e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| io(path, "fsync directory", e))
}

/// Writes `snapshot` under `dir` atomically; returns the checkpoint's path.
pub fn write_checkpoint(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf> {
    let name = dir_name(snapshot.step);
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let target = dir.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, "remove stale temporary", e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "create", e))?;
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
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| fail(&tmp, format!("manifest: {e}")))?;
    write_synced(&tmp.join(MANIFEST), &json)?;
    sync_dir(&tmp)?;
    if target.exists() {
        // The same step saved again (a resumed job): the new one replaces it whole.
        fs::remove_dir_all(&target).map_err(|e| io(&target, "replace", e))?;
    }
    fs::rename(&tmp, &target).map_err(|e| io(&target, "rename into place", e))?;
    sync_dir(dir)?;
    Ok(target)
}

/// Reads and verifies the checkpoint at `path`.
pub fn read_checkpoint(path: &Path) -> Result<Snapshot> {
    let text = fs::read(path.join(MANIFEST)).map_err(|e| io(path, "read manifest", e))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| fail(path, format!("manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(fail(path, format!("format {} (this build reads {FORMAT})", manifest.format)));
    }
    let mut groups: HashMap<String, Vec<HostTensor>> = HashMap::new();
    for entry in &manifest.files {
        let file = path.join(&entry.name);
        let bytes = fs::read(&file).map_err(|e| io(&file, "read", e))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(fail(
                &file,
                format!("{} bytes, the manifest says {} (truncated?)", bytes.len(), entry.bytes),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != entry.crc32 {
            return Err(fail(
                &file,
                format!("CRC-32 {crc:08x}, the manifest says {:08x} (corrupted)", entry.crc32),
            ));
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(&file, format!("safetensors: {e}")))?;
        let mut list = Vec::new();
        for want in manifest.tensors.iter().filter(|t| t.file == entry.name) {
            let view =
                st.tensor(&want.name).map_err(|e| fail(&file, format!("{}: {e}", want.name)))?;
            let dtype = from_st_dtype(view.dtype()).filter(|d| d.name() == want.dtype).ok_or_else(
                || {
                    fail(
                        &file,
                        format!(
                            "{}: dtype {:?} is not the manifest's {}",
                            want.name,
                            view.dtype(),
                            want.dtype
                        ),
                    )
                },
            )?;
            if view.shape() != want.shape.as_slice() {
                return Err(fail(
                    &file,
                    format!(
                        "{}: shape {:?}, the manifest says {:?}",
                        want.name,
                        view.shape(),
                        want.shape
                    ),
                ));
            }
            list.push(HostTensor {
                name: want.name.clone(),
                dtype,
                dims: want.shape.clone(),
                bytes: view.data().to_vec(),
            });
        }
        groups.insert(entry.name.clone(), list);
    }
    let mut take = |name: &str| {
        groups.remove(name).ok_or_else(|| fail(path, format!("the manifest lists no {name}")))
    };
    Ok(Snapshot {
        step: manifest.step,
        params: take(MODEL_FILE)?,
        optimizer_step: manifest.optimizer_step,
        optimizer: take(OPTIMIZER_FILE)?,
        state: manifest.state,
    })
}

/// The newest checkpoint that verifies, and the newer ones that did not (with why).
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub snapshot: Snapshot,
    pub skipped: Vec<Error>,
}

/// A directory of checkpoints with a background writer that keeps the newest `keep`.
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
    jobs: Option<Sender<Snapshot>>,
    done: Receiver<Result<PathBuf>>,
    writer: Option<JoinHandle<()>>,
    pending: usize,
}

impl Checkpoints {
    /// Opens (creating) `dir`; leftovers of writes that a crash interrupted are removed.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Checkpoints> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, "create", e))?;
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, "list", e))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|e| io(&path, "remove interrupted write", e))?;
            }
        }
        let (jobs, inbox) = channel::<Snapshot>();
        let (report, done) = channel();
        let (writer_dir, keep) = (dir.clone(), keep.max(1));
        let writer = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for snapshot in inbox {
                    let result = write_checkpoint(&writer_dir, &snapshot)
                        .and_then(|path| prune(&writer_dir, keep).map(|()| path));
                    if report.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| io(&dir, "start the writer thread", e))?;
        Ok(Checkpoints { dir, keep, jobs: Some(jobs), done, writer: Some(writer), pending: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Queues `snapshot` for the background writer and returns at once. An earlier write
    /// that failed is reported here (or by [`Checkpoints::flush`]).
    pub fn save(&mut self, snapshot: Snapshot) -> Result<()> {
        self.collect(false)?;
        let jobs = self.jobs.as_ref().ok_or_else(|| fail(&self.dir, "the writer has stopped"))?;
        jobs.send(snapshot).map_err(|_| fail(&self.dir, "the writer thread has stopped"))?;
        self.pending += 1;
        Ok(())
    }

    /// Waits until every queued checkpoint is on disk; returns their paths.
    pub fn flush(&mut self) -> Result<Vec<PathBuf>> {
        self.collect(true)
    }

    fn collect(&mut self, wait: bool) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        while self.pending > 0 {
            let next = if wait {
                self.done.recv().map_err(|_| fail(&self.dir, "the writer thread died"))
            } else {
                match self.done.try_recv() {
                    Ok(r) => Ok(r),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(_) => Err(fail(&self.dir, "the writer thread died")),
                }
            };
            self.pending -= 1;
            written.push(next??);
        }
        Ok(written)
    }

    /// Checkpoint directories, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        list(&self.dir)
    }

    /// The newest checkpoint that reads back whole; `None` when there is none at all.
    pub fn latest(&self) -> Result<Option<Loaded>> {
        latest(&self.dir)
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        // Close the queue, let the writer finish what it has, and report failures.
        self.jobs = None;
        if let Err(e) = self.collect(true) {
            tracing::error!(%e, "a checkpoint write failed");
        }
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the checkpoint writer panicked");
        }
    }
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map_err(|e| io(dir, "list", e))?
        .flatten()
        .filter_map(|e| parse_step(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest checkpoint under `dir` that verifies.
pub fn latest(dir: &Path) -> Result<Option<Loaded>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut skipped = Vec::new();
    for path in list(dir)?.into_iter().rev() {
        match read_checkpoint(&path) {
            Ok(snapshot) => return Ok(Some(Loaded { path, snapshot, skipped })),
            Err(e) => {
                tracing::warn!(%e, "skipping a checkpoint that does not verify");
                skipped.push(e);
            }
        }
    }
    match skipped.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Removes all but the newest `keep` checkpoints.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    for old in &all[..all.len().saturating_sub(keep)] {
        fs::remove_dir_all(old).map_err(|e| io(old, "remove old checkpoint", e))?;
    }
    Ok(())
}
