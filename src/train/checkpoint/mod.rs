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

mod manifest;
mod read;
mod write;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

pub use read::read_checkpoint;
pub use write::write_checkpoint;

use super::Param;
use super::optim::Optimizer;
use crate::files::Dir;
use crate::{DType, Error, Result, Tensor};
use manifest::{MANIFEST, MODEL_FILE, OPTIMIZER_FILE};

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

    /// Puts the saved values back into `params` (matched by name) and `optimizer`. Nothing
    /// changes unless all of it fits: every parameter present with its dtype and shape, no
    /// parameter the model lacks, and the optimizer's state complete (each parameter has
    /// all of its slots or none, and an optimizer that keeps state and has stepped has some).
    pub fn restore(
        &self,
        params: &[Param],
        optimizer: &mut dyn Optimizer,
        path: &Path,
    ) -> Result<()> {
        let values = self.param_values(params, path)?;
        let state = self.optimizer_values(params, &*optimizer, path, false)?;
        optimizer.load_state(self.optimizer_step, &state)?;
        set_all(params, values)
    }

    /// Puts only the optimizer's state back, next to `params` wherever they are now (their
    /// values already restored, as a pipeline does onto a new plan's devices), with the
    /// same checks as [`restore`](Self::restore).
    pub fn restore_optimizer(
        &self,
        params: &[Param],
        optimizer: &mut dyn Optimizer,
        path: &Path,
    ) -> Result<()> {
        let state = self.optimizer_values(params, &*optimizer, path, false)?;
        optimizer.load_state(self.optimizer_step, &state)
    }

    /// [`restore_optimizer`](Self::restore_optimizer) for an optimizer that keeps a shard of
    /// the state only (ZeRO stage 1 over pipeline replicas): this snapshot holds that shard,
    /// which may be none of these parameters' state; the optimizer counts the snapshot's
    /// steps all the same.
    pub(crate) fn restore_optimizer_shard(
        &self,
        params: &[Param],
        optimizer: &mut dyn Optimizer,
        path: &Path,
    ) -> Result<()> {
        let state = self.optimizer_values(params, &*optimizer, path, true)?;
        optimizer.load_state(self.optimizer_step, &state)
    }

    /// Puts only the parameters back: the caller starts its optimizer afresh on purpose
    /// (fine-tuning from a checkpoint, or another optimizer).
    pub fn restore_model(&self, params: &[Param], path: &Path) -> Result<()> {
        let values = self.param_values(params, path)?;
        set_all(params, values)
    }

    /// The part of this snapshot that belongs to the parameters named `names`: their
    /// values and their optimizer state (`<name>.<slot>`). A pipeline stage restores its
    /// own part, whatever plan wrote the checkpoint.
    pub fn part(&self, names: &HashSet<&str>) -> Snapshot {
        let owned = |tensor: &&HostTensor| {
            tensor.name.rsplit_once('.').is_some_and(|(param, _)| names.contains(param))
        };
        Snapshot {
            step: self.step,
            params: self
                .params
                .iter()
                .filter(|t| names.contains(t.name.as_str()))
                .cloned()
                .collect(),
            optimizer_step: self.optimizer_step,
            optimizer: self.optimizer.iter().filter(owned).cloned().collect(),
            state: self.state.clone(),
        }
    }

    fn param_values(&self, params: &[Param], path: &Path) -> Result<Vec<Tensor>> {
        let label = path.display().to_string();
        let saved: HashMap<&str, &HostTensor> =
            self.params.iter().map(|t| (t.name.as_str(), t)).collect();
        let names: HashSet<&str> = params.iter().map(|p| p.name()).collect();
        if let Some(extra) = self.params.iter().find(|t| !names.contains(t.name.as_str())) {
            return Err(fail(
                path,
                format!("holds parameter {}, which the model lacks", extra.name),
            ));
        }
        params
            .iter()
            .map(|param| match saved.get(param.name()) {
                Some(t) => t.upload_like(&param.value(), &label),
                None => Err(fail(path, format!("has no parameter {}", param.name()))),
            })
            .collect()
    }

    /// The optimizer's saved state, checked to be all there, uploaded next to each parameter.
    /// `shard`: the snapshot may hold none of these parameters' state.
    fn optimizer_values(
        &self,
        params: &[Param],
        optimizer: &dyn Optimizer,
        path: &Path,
        shard: bool,
    ) -> Result<Vec<(String, Tensor)>> {
        let label = path.display().to_string();
        let slots = optimizer.state_slots();
        let mut saved: HashMap<&str, &HostTensor> =
            self.optimizer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut state = Vec::with_capacity(self.optimizer.len());
        for param in params {
            let found: Vec<(String, &HostTensor)> = slots
                .iter()
                .filter_map(|slot| {
                    let name = format!("{}.{slot}", param.name());
                    saved.remove(name.as_str()).map(|t| (name, t))
                })
                .collect();
            if !found.is_empty() && found.len() != slots.len() {
                return Err(fail(
                    path,
                    format!(
                        "the optimizer state of {} has {} of its slots {slots:?}",
                        param.name(),
                        found.len()
                    ),
                ));
            }
            for (name, t) in found {
                state.push((name, t.upload_like(&param.value(), &label)?));
            }
        }
        if let Some(stray) = saved.keys().next() {
            return Err(fail(
                path,
                format!("optimizer state {stray} is no slot {slots:?} of any parameter"),
            ));
        }
        if self.optimizer_step > 0 && !slots.is_empty() && state.is_empty() && !shard {
            return Err(fail(
                path,
                format!(
                    "holds no optimizer state after {} optimizer steps: resuming would restart \
                     {slots:?} from zero (use Snapshot::restore_model to start a fresh \
                     optimizer on purpose)",
                    self.optimizer_step
                ),
            ));
        }
        Ok(state)
    }
}

fn set_all(params: &[Param], values: Vec<Tensor>) -> Result<()> {
    for (param, value) in params.iter().zip(values) {
        param.set(value)?;
    }
    Ok(())
}

fn fail(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    fail(path, format!("{what}: {e}"))
}

/// The directory name of the checkpoint after `step` steps.
fn dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// The step of a checkpoint's directory name, which is exactly what [`dir_name`] writes:
/// `step-` and digits only (no sign, no other padding).
fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = digits.parse().ok()?;
    (dir_name(step) == name).then_some(step)
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
    /// Written since the last flush (a `save` collects what finished before it).
    written: Vec<PathBuf>,
}

impl Checkpoints {
    /// Opens (creating) `dir`; leftovers of writes that a crash interrupted (this library's
    /// `.tmp-step-…` directories) are removed. Nothing else in `dir` is touched.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Checkpoints> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, "create", e))?;
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, "list", e))?.flatten() {
            let name = entry.file_name();
            // Only names this library writes; removal never follows a symlink.
            if name.to_str().is_some_and(is_temp_name) {
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let removed =
                    if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                removed.map_err(|e| io(&path, "remove interrupted write", e))?;
            }
        }
        let (jobs, inbox) = channel::<Snapshot>();
        let (report, done) = channel();
        let (writer_dir, keep) = (dir.clone(), keep.max(1));
        let writer = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let mut pruner = Pruner { keep, verified: HashMap::new() };
                for snapshot in inbox {
                    let result = write_checkpoint(&writer_dir, &snapshot).and_then(|path| {
                        pruner.prune(&writer_dir, &dir_name(snapshot.step)).map(|()| path)
                    });
                    if report.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| io(&dir, "start the writer thread", e))?;
        Ok(Checkpoints {
            dir,
            keep,
            jobs: Some(jobs),
            done,
            writer: Some(writer),
            pending: 0,
            written: Vec::new(),
        })
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

    /// Waits until every queued checkpoint is on disk; returns the paths written since the
    /// last flush.
    pub fn flush(&mut self) -> Result<Vec<PathBuf>> {
        self.collect(true)?;
        Ok(std::mem::take(&mut self.written))
    }

    fn collect(&mut self, wait: bool) -> Result<()> {
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
            self.written.push(next??);
        }
        Ok(())
    }

    /// Checkpoint directories (real directories named `step-…`, not yet verified), oldest
    /// first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        Ok(candidates(&self.dir)?
            .into_iter()
            .map(|(_, name)| self.dir.join(name))
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
            .collect())
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

/// `.tmp-step-000000012-4711`: what [`write_checkpoint`] writes before the rename.
fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".tmp-") else { return false };
    let Some((step, pid)) = rest.rsplit_once('-') else { return false };
    parse_step(step).is_some() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
}

/// Entries of `dir` named like checkpoints, oldest first, whatever they are (a symlink or
/// a plain file by that name is skipped with its reason when read).
fn candidates(dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut found: Vec<(u64, String)> = fs::read_dir(dir)
        .map_err(|e| io(dir, "list", e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            parse_step(&name).map(|step| (step, name))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest checkpoint under `dir` that verifies; the newer ones that do not are listed
/// in [`Loaded::skipped`] with the reason. An error when there are checkpoints but none
/// verifies.
pub fn latest(dir: &Path) -> Result<Option<Loaded>> {
    if !dir.exists() {
        return Ok(None);
    }
    let root = Dir::open(dir).map_err(|e| io(dir, "open", e))?;
    let mut skipped = Vec::new();
    for (_, name) in candidates(dir)?.into_iter().rev() {
        match read::read_in(&root, &name) {
            Ok(snapshot) => {
                return Ok(Some(Loaded { path: dir.join(name), snapshot, skipped }));
            }
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

/// Keeps the newest `keep` checkpoints that verify (and the one just written), removes
/// older ones that verify, and leaves everything else alone: a damaged checkpoint, a
/// stray file or a symlink is not this library's to delete, and never counts.
///
/// A verdict is reused only while the checkpoint's directory and files are exactly as they
/// were when it was verified (same inode, length, modification and change times), so one
/// damaged since is verified again, and fails, instead of counting towards `keep`.
struct Pruner {
    keep: usize,
    verified: HashMap<String, Vec<Stamp>>,
}

/// What identifies one file's current contents without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    /// Device, inode, modification and change times (seconds, nanoseconds).
    #[cfg(unix)]
    ids: [i64; 6],
    #[cfg(not(unix))]
    modified: Option<std::time::SystemTime>,
}

/// How long before a verification a file must have last changed for the verdict to be
/// remembered (well above the file system's timestamp granularity).
const RECENT: std::time::Duration = std::time::Duration::from_millis(100);

impl Stamp {
    fn changed_before(&self, t: std::time::SystemTime, margin: std::time::Duration) -> bool {
        #[cfg(unix)]
        let changed = std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
            u64::try_from(self.ids[4]).unwrap_or(u64::MAX),
            u32::try_from(self.ids[5]).unwrap_or(0),
        ));
        #[cfg(not(unix))]
        let changed = self.modified;
        changed.and_then(|c| c.checked_add(margin)).is_some_and(|c| c < t)
    }
}

/// The stamps of a checkpoint's directory and its files (not followed), or `None` when one
/// cannot be read.
fn stamps(dir: &Path, name: &str) -> Option<Vec<Stamp>> {
    let base = dir.join(name);
    let paths =
        [base.clone(), base.join(MANIFEST), base.join(MODEL_FILE), base.join(OPTIMIZER_FILE)];
    paths
        .iter()
        .map(|p| {
            let m = p.symlink_metadata().ok()?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let ids = [
                    m.dev() as i64,
                    m.ino() as i64,
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ];
                Some(Stamp { len: m.len(), ids })
            }
            #[cfg(not(unix))]
            Some(Stamp { len: m.len(), modified: m.modified().ok() })
        })
        .collect()
}

impl Pruner {
    fn prune(&mut self, dir: &Path, written: &str) -> Result<()> {
        let root = Dir::open(dir).map_err(|e| io(dir, "open", e))?;
        let mut kept = 0;
        for (_, name) in candidates(dir)?.into_iter().rev() {
            if !self.verifies(&root, dir, &name) {
                continue;
            }
            if kept < self.keep || name == written {
                kept += 1;
                continue;
            }
            let old = dir.join(&name);
            fs::remove_dir_all(&old).map_err(|e| io(&old, "remove old checkpoint", e))?;
            self.verified.remove(&name);
        }
        Ok(())
    }

    fn verifies(&mut self, root: &Dir, dir: &Path, name: &str) -> bool {
        let before = stamps(dir, name);
        if before.is_some() && self.verified.get(name) == before.as_ref() {
            return true;
        }
        let started = std::time::SystemTime::now();
        let good = read::verify_in(root, name).is_ok();
        // File times tick coarsely (a few ms): a file changed in the same tick as its last
        // change keeps its stamp, so only a checkpoint left alone for a while is remembered.
        let settled = |b: &Vec<Stamp>| b.iter().all(|s| s.changed_before(started, RECENT));
        let same = |b: &Vec<Stamp>| stamps(dir, name).as_ref() == Some(b);
        match before.filter(|b| good && settled(b) && same(b)) {
            Some(stamp) => {
                self.verified.insert(name.to_string(), stamp);
            }
            None => {
                self.verified.remove(name);
            }
        }
        good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_digits_as_written() {
        assert_eq!(parse_step("step-000000030"), Some(30));
        assert_eq!(parse_step("step-1234567890"), Some(1_234_567_890));
        for bad in ["step-30", "step-+00000099", "step-0000000030", "step- 00000003", "step-", "x"]
        {
            assert_eq!(parse_step(bad), None, "{bad}");
        }
        assert!(is_temp_name(".tmp-step-000000012-4711"));
        assert!(!is_temp_name(".tmp-mine"));
        assert!(!is_temp_name(".tmp-step-12-4711"));
    }
}
