// Checkpoint directories a hostile or careless user controls: nothing is read outside the
// directory, nothing blocks, nothing unverified is resumed, pruning deletes only verified
// checkpoints. One regression test per defect of issue 15, then a mutation property test:
// real checkpoints, random damage, every case ends with the newest verified checkpoint or a
// clear Err, within a deadline. `MANYCHIPS_MUTATIONS=20000` runs more cases than CI's 500.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

use manychips::train::checkpoint::{Loaded, latest, read_checkpoint, write_checkpoint};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, Ctx};
use manychips::train::optim::{AdamW, Optimizer};
use manychips::train::{Checkpoints, ParamStore, Snapshot, Var};
use manychips::{CpuDevice, DType, DeviceRef, ErrorKind, Result, Tensor};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STEPS: [u64; 3] = [10, 20, 30];

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::with_threads(1).expect("cpu"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("manychips-attack-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn step_dir(step: u64) -> String {
    format!("step-{step:09}")
}

/// A small model and AdamW that has stepped, so its optimizer state is real.
struct Job {
    store: ParamStore,
    opt: AdamW,
}

impl Job {
    fn new() -> Job {
        let device = cpu();
        let store = ParamStore::new(&device, 3);
        let model = Mlp::new(&store, &[6, 5, 3], Activation::Relu).unwrap();
        let mut opt = AdamW::new(store.params(), 1e-2).unwrap();
        let x = Tensor::randn(0.0, 1.0, [8, 6], DType::F32, 1, &device).unwrap();
        let logits = model.forward(&Var::constant(x), &Ctx::eval()).unwrap();
        let loss = nn::cross_entropy(&logits, &[0, 1, 2, 0, 1, 2, 0, 1]).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        Job { store, opt }
    }

    fn snapshot(&self, step: u64) -> Snapshot {
        let state = serde_json::json!({ "seed": 7, "data_position": step % 4 });
        Snapshot::capture(step, &self.store.params(), &self.opt, state).unwrap()
    }
}

/// Checkpoints at `STEPS` in `dir`; their snapshots by step.
fn write_all(dir: &Path, job: &Job) -> BTreeMap<u64, Snapshot> {
    STEPS
        .iter()
        .map(|&s| {
            let snapshot = job.snapshot(s);
            write_checkpoint(dir, &snapshot).unwrap();
            (s, snapshot)
        })
        .collect()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Writes `value` as the manifest, with its checksum recomputed when `seal` (what a
/// forger who read the format would do): the format's other rules must still hold.
fn put_manifest(dir: &Path, mut value: serde_json::Value, seal: bool) {
    if seal {
        let mut body = value.clone();
        body.as_object_mut().unwrap().remove("manifest_crc32");
        let crc = crc32fast::hash(&serde_json::to_vec(&body).unwrap());
        value["manifest_crc32"] = crc.into();
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo").arg(path).status().is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", path.display());
}

/// `f` on another thread, failing the test if it does not end within `secs` (a read that
/// blocks on a FIFO, or one that never ends).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("blocked: no answer within the deadline")
}

fn latest_within(dir: &Path) -> Result<Option<Loaded>> {
    let dir = dir.to_path_buf();
    within(20, move || latest(&dir))
}

fn read_within(path: &Path) -> Result<Snapshot> {
    let path = path.to_path_buf();
    within(20, move || read_checkpoint(&path))
}

fn expect_refused(path: &Path, words: &[&str]) {
    let e = read_within(path).expect_err("a hostile checkpoint was read");
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
    let text = e.to_string();
    assert!(words.iter().any(|w| text.contains(w)), "{text} (wanted one of {words:?})");
}

// 1. A manifest naming files outside the checkpoint.
#[test]
fn manifest_file_names_cannot_leave_the_directory() {
    let root = scratch("escape");
    let good = write_all(&root, &Job::new());
    let ckpt = root.join(step_dir(30));
    std::fs::write(root.join("x"), b"outside").unwrap();
    for (name, seal) in [("../x", true), ("/etc/hostname", true), ("../x", false)] {
        let mut m = manifest(&ckpt);
        m["files"][0]["name"] = name.into();
        put_manifest(&ckpt, m, seal);
        expect_refused(&ckpt, &["lists files", "CRC"]);
        let e = read_within(&ckpt).unwrap_err().to_string();
        assert!(!e.contains("bytes, the manifest"), "the outside file was opened: {e}");
    }
    let loaded = latest_within(&root).unwrap().unwrap();
    assert_eq!(loaded.snapshot, good[&20], "falls back to the newest checkpoint that verifies");
    remove(&root);
}

// 2. Symlinks: a file, and a whole step directory.
#[test]
fn symlinks_are_never_followed() {
    let root = scratch("links");
    let outside = scratch("links-outside");
    let job = Job::new();
    let good = write_all(&root, &job);
    // A valid-looking newer checkpoint outside, linked in as step 35.
    let foreign = job.snapshot(35);
    write_checkpoint(&outside, &foreign).unwrap();
    symlink(outside.join(step_dir(35)), root.join(step_dir(35))).unwrap();
    let loaded = latest_within(&root).unwrap().unwrap();
    assert_eq!(loaded.snapshot, good[&30], "a linked step directory was resumed from");
    assert!(loaded.skipped[0].to_string().contains("symlink"), "{:?}", loaded.skipped);
    // The model file of step 30 as a link to the same file elsewhere: refused all the same.
    let ckpt = root.join(step_dir(30));
    let copy = outside.join("model.safetensors");
    std::fs::rename(ckpt.join("model.safetensors"), &copy).unwrap();
    symlink(&copy, ckpt.join("model.safetensors")).unwrap();
    expect_refused(&ckpt, &["symlink"]);
    assert_eq!(latest_within(&root).unwrap().unwrap().snapshot, good[&20]);
    remove(&root);
    remove(&outside);
}

// 3. Reads without end: /dev/zero behind a name, an oversized manifest.
#[test]
fn reads_are_bounded() {
    let root = scratch("unbounded");
    let good = write_all(&root, &Job::new());
    let ckpt = root.join(step_dir(30));
    std::fs::remove_file(ckpt.join("optimizer.safetensors")).unwrap();
    symlink("/dev/zero", ckpt.join("optimizer.safetensors")).unwrap();
    expect_refused(&ckpt, &["symlink"]);
    let ckpt = root.join(step_dir(20));
    std::fs::remove_file(ckpt.join("manifest.json")).unwrap();
    symlink("/dev/zero", ckpt.join("manifest.json")).unwrap();
    expect_refused(&ckpt, &["symlink"]);
    // A regular (sparse) manifest far above the cap is refused after the cap, not read whole.
    let ckpt = root.join(step_dir(10));
    let f = std::fs::OpenOptions::new().write(true).open(ckpt.join("manifest.json")).unwrap();
    f.set_len(1 << 34).unwrap();
    expect_refused(&ckpt, &["longer than"]);
    // A model file larger than its manifest says is refused before it is read.
    let root2 = scratch("unbounded2");
    let good2 = write_all(&root2, &Job::new());
    let ckpt = root2.join(step_dir(30));
    let f = std::fs::OpenOptions::new().write(true).open(ckpt.join("model.safetensors")).unwrap();
    f.set_len(1 << 34).unwrap();
    expect_refused(&ckpt, &["the manifest says"]);
    assert_eq!(latest_within(&root2).unwrap().unwrap().snapshot, good2[&20]);
    assert!(latest_within(&root).is_err(), "no checkpoint of {good:?} verifies");
    remove(&root);
    remove(&root2);
}

// 4. FIFOs where files should be.
#[test]
fn fifos_never_block() {
    let root = scratch("fifo");
    let good = write_all(&root, &Job::new());
    for (step, file) in [(30, "model.safetensors"), (20, "manifest.json")] {
        let ckpt = root.join(step_dir(step));
        std::fs::remove_file(ckpt.join(file)).unwrap();
        mkfifo(&ckpt.join(file));
        expect_refused(&ckpt, &["FIFO"]);
    }
    assert_eq!(latest_within(&root).unwrap().unwrap().snapshot, good[&10]);
    remove(&root);
}

// 5. A manifest whose step is not its directory's, or that was edited.
#[test]
fn the_manifest_is_checksummed_and_its_step_is_the_directorys() {
    let root = scratch("step");
    let good = write_all(&root, &Job::new());
    let ckpt = root.join(step_dir(30));
    let mut m = manifest(&ckpt);
    m["step"] = 31.into();
    put_manifest(&ckpt, m.clone(), false);
    expect_refused(&ckpt, &["CRC"]);
    put_manifest(&ckpt, m.clone(), true);
    expect_refused(&ckpt, &["step 31"]);
    m["step"] = u64::MAX.into();
    put_manifest(&ckpt, m, true);
    expect_refused(&ckpt, &["step 18446744073709551615"]);
    assert_eq!(latest_within(&root).unwrap().unwrap().snapshot, good[&20]);
    remove(&root);
}

// 6. An optimizer step count that would wrap AdamW's counter, or truncate through i32.
#[test]
fn huge_optimizer_steps_never_make_nan_weights() {
    let job = Job::new();
    let mut snapshot = job.snapshot(5);
    snapshot.optimizer_step = u64::MAX;
    let mut opt = AdamW::new(job.store.params(), 1e-2).unwrap();
    snapshot.restore(&job.store.params(), &mut opt, Path::new("mem")).unwrap();
    let grads = some_grads(&job.store);
    let e = opt.step(&grads).unwrap_err();
    assert!(e.to_string().contains("overflow"), "{e}");
    snapshot.optimizer_step = 1 << 31;
    snapshot.restore(&job.store.params(), &mut opt, Path::new("mem")).unwrap();
    opt.step(&grads).unwrap();
    for p in job.store.params() {
        let values = p.value().to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{} became {values:?}", p.name());
    }
}

fn some_grads(store: &ParamStore) -> manychips::train::Grads {
    let mut grads = manychips::train::Grads::default();
    for p in store.params() {
        let g = Tensor::full(0.5, p.value().shape().clone(), DType::F32, p.value().device());
        grads.insert(p.id(), g.unwrap());
    }
    grads
}

// 7. A checkpoint without the optimizer's state (sealed, so only the completeness rule can
// catch it).
#[test]
fn missing_optimizer_state_is_refused_unless_asked_for() {
    let root = scratch("no-opt-state");
    let job = Job::new();
    write_all(&root, &job);
    let ckpt = root.join(step_dir(30));
    let mut m = manifest(&ckpt);
    let tensors = m["tensors"].as_array().unwrap().clone();
    m["tensors"] = tensors.into_iter().filter(|t| t["file"] == "model.safetensors").collect();
    // The optimizer file must then hold no tensors either: an empty safetensors file.
    let empty =
        safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView)>::new(), None)
            .unwrap();
    std::fs::write(ckpt.join("optimizer.safetensors"), &empty).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["name"] == "optimizer.safetensors" {
            f["bytes"] = empty.len().into();
            f["crc32"] = crc32fast::hash(&empty).into();
        }
    }
    put_manifest(&ckpt, m, true);
    let loaded = latest_within(&root).unwrap().unwrap();
    assert_eq!(loaded.snapshot.step, 30, "the checkpoint itself reads back");
    let mut opt = AdamW::new(job.store.params(), 1e-2).unwrap();
    let e = loaded.snapshot.restore(&job.store.params(), &mut opt, &loaded.path).unwrap_err();
    assert!(e.to_string().contains("no optimizer state"), "{e}");
    // Said on purpose, the parameters alone come back.
    loaded.snapshot.restore_model(&job.store.params(), &loaded.path).unwrap();
    remove(&root);
}

// 8. Pruning: strays never count, the newest verified checkpoint always stays.
#[test]
fn pruning_keeps_verified_checkpoints_and_leaves_strays_alone() {
    let root = scratch("prune");
    let job = Job::new();
    write_all(&root, &job);
    std::fs::create_dir(root.join("step-999999999")).unwrap();
    std::fs::write(root.join("step-000000001"), b"not a checkpoint").unwrap();
    std::fs::create_dir(root.join("step-+99")).unwrap();
    let mut checkpoints = Checkpoints::open(&root, 1).unwrap();
    for step in [40, 50] {
        checkpoints.save(job.snapshot(step)).unwrap();
    }
    checkpoints.flush().unwrap();
    for stray in ["step-999999999", "step-000000001", "step-+99"] {
        assert!(root.join(stray).exists(), "{stray} was removed");
    }
    let left: Vec<String> = checkpoints
        .list()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["step-000000050", "step-999999999"], "keep 1 verified, and the stray dir");
    let loaded = latest_within(&root).unwrap().unwrap();
    assert_eq!(loaded.snapshot.step, 50);
    assert_eq!(loaded.skipped.len(), 1, "the empty step-999999999 is listed as skipped");
    remove(&root);
}

#[test]
fn a_checkpoint_damaged_after_it_was_written_does_not_count_towards_keep() {
    // keep 2: steps 10 and 20 are written; 20 is then damaged. Saving 30 must keep 10 (the
    // newest verified besides 30), not count the damaged 20 and delete 10.
    let root = scratch("prune-damaged");
    let job = Job::new();
    let mut checkpoints = Checkpoints::open(&root, 2).unwrap();
    for step in [10, 20] {
        checkpoints.save(job.snapshot(step)).unwrap();
    }
    checkpoints.flush().unwrap();
    let model = root.join(step_dir(20)).join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    checkpoints.save(job.snapshot(30)).unwrap();
    assert_eq!(checkpoints.flush().unwrap().len(), 1);
    for step in [10, 20, 30] {
        assert!(root.join(step_dir(step)).exists(), "step {step} was removed");
    }
    remove(&root);
}

// ----- the mutation property test ----------------------------------------------------

/// The pristine checkpoints every case starts from, and an outside directory that
/// nothing may read (a FIFO there would block any read; a valid checkpoint there must
/// never be resumed).
struct Fixture {
    pristine: PathBuf,
    outside: PathBuf,
    snapshots: BTreeMap<u64, Snapshot>,
    job: Job,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pristine = scratch("mutation-pristine");
        let outside = scratch("mutation-outside");
        let job = Job::new();
        let snapshots = write_all(&pristine, &job);
        std::fs::write(outside.join("secret"), b"outside").unwrap();
        mkfifo(&outside.join("fifo"));
        write_checkpoint(&outside, &job.snapshot(35)).unwrap();
        Fixture { pristine, outside, snapshots, job }
    })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

const FILES: [&str; 3] = ["manifest.json", "model.safetensors", "optimizer.safetensors"];

/// Replaces `path` (file or directory) with nothing.
fn remove(path: &Path) {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// One random change to the tree at `root`; returns the step of the checkpoint it touched
/// (`None` for an entry beside them).
fn mutate(root: &Path, fx: &Fixture, rng: &mut ChaCha8Rng) -> Option<u64> {
    let step = STEPS[rng.random_range(0..STEPS.len())];
    let ckpt = root.join(step_dir(step));
    // Once a checkpoint is a link (to outside, or to /), the harness itself must not write
    // through it.
    let real_dir = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if !real_dir(&ckpt) {
        return Some(step);
    }
    let file = ckpt.join(FILES[rng.random_range(0..FILES.len())]);
    // (Read by the harness only when small: an earlier mutation may have made it 1 TB.)
    let exists = file.symlink_metadata().is_ok_and(|m| m.is_file() && m.len() < 1 << 20);
    match rng.random_range(0..12) {
        0 if exists => {
            let mut bytes = std::fs::read(&file).unwrap();
            if !bytes.is_empty() {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            std::fs::write(&file, bytes).unwrap();
        }
        1 if exists => {
            let bytes = std::fs::read(&file).unwrap();
            let keep = rng.random_range(0..=bytes.len());
            std::fs::write(&file, &bytes[..keep]).unwrap();
        }
        2 if exists => {
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>()));
            std::fs::write(&file, bytes).unwrap();
        }
        3 => edit_manifest(&ckpt, rng),
        4 => {
            remove(&file);
            let targets = [
                fx.outside.join("secret"),
                fx.outside.join("fifo"),
                PathBuf::from("/dev/zero"),
                root.join(step_dir(STEPS[0])).join("model.safetensors"),
            ];
            symlink(&targets[rng.random_range(0..targets.len())], &file).unwrap();
        }
        5 => {
            remove(&file);
            mkfifo(&file);
        }
        6 => {
            remove(&ckpt);
            let targets = [fx.outside.join(step_dir(35)), PathBuf::from("/")];
            symlink(&targets[rng.random_range(0..targets.len())], &ckpt).unwrap();
        }
        7 => remove(&file),
        8 if exists => {
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.set_len(rng.random_range(1u64..=1 << 34)).unwrap();
        }
        9 => {
            // A stray entry beside the checkpoints.
            let name = ["step-999999999", "step-000000040", "step-+99", "step-000000035"]
                [rng.random_range(0..4)];
            let path = root.join(name);
            remove(&path);
            match rng.random_range(0..4) {
                0 => std::fs::create_dir(&path).unwrap(),
                1 => std::fs::write(&path, b"junk").unwrap(),
                2 => mkfifo(&path),
                _ => symlink(fx.outside.join(step_dir(35)), &path).unwrap(),
            }
            return None;
        }
        10 => {
            // Another checkpoint's file in this one's place (valid bytes, wrong checkpoint).
            let other = root.join(step_dir(STEPS[rng.random_range(0..STEPS.len())]));
            let name = FILES[rng.random_range(0..FILES.len())];
            // (A small regular file only: an earlier mutation may have made one 1 TB, sparse;
            // a copy would not be.)
            let small =
                |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_file() && m.len() < 1 << 20);
            let plain = real_dir(&other) && small(&other.join(name));
            if plain && other != ckpt {
                remove(&ckpt.join(name));
                std::fs::copy(other.join(name), ckpt.join(name)).unwrap();
            }
        }
        _ => edit_manifest(&ckpt, rng),
    }
    Some(step)
}

/// Changes one field of the manifest to a hostile value, resealing it half the time.
fn edit_manifest(ckpt: &Path, rng: &mut ChaCha8Rng) {
    let path = ckpt.join("manifest.json");
    // Never through a link, a FIFO or a huge file that an earlier mutation left there.
    if !path.symlink_metadata().is_ok_and(|m| m.is_file() && m.len() < 1 << 20) {
        return;
    }
    let Ok(bytes) = std::fs::read(&path) else { return };
    let Ok(mut m) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return };
    let huge = serde_json::Value::from(u64::MAX);
    let pick = |rng: &mut ChaCha8Rng, n: usize| rng.random_range(0..n.max(1));
    match rng.random_range(0..14) {
        0 => m["step"] = [huge.clone(), 31.into(), 0.into()][pick(rng, 3)].clone(),
        1 => {
            m["optimizer_step"] =
                [huge.clone(), (1u64 << 31).into(), 0.into()][pick(rng, 3)].clone()
        }
        2 => m["format"] = [1, 3, 0][pick(rng, 3)].into(),
        3 => {
            let names =
                ["../x", "/etc/hostname", "../../secret", "manifest.json", "model.safetensors", ""];
            let i = pick(rng, 2);
            m["files"][i]["name"] = names[pick(rng, names.len())].into();
        }
        4 => {
            let i = pick(rng, 2);
            m["files"][i]["bytes"] = [huge.clone(), 0.into(), 7.into()][pick(rng, 3)].clone();
        }
        5 => {
            let i = pick(rng, 2);
            let crc = m["files"][i]["crc32"].as_u64().unwrap_or(0);
            m["files"][i]["crc32"] = (crc ^ 1).into();
        }
        6 => {
            let n = m["tensors"].as_array().map_or(0, |t| t.len());
            let i = pick(rng, n);
            let shapes = [
                serde_json::json!([usize::MAX, 2]),
                serde_json::json!([]),
                serde_json::json!([1, 1]),
            ];
            m["tensors"][i]["shape"] = shapes[pick(rng, 3)].clone();
        }
        7 => {
            let n = m["tensors"].as_array().map_or(0, |t| t.len());
            let i = pick(rng, n);
            m["tensors"][i]["dtype"] = ["f64", "u32", "bf16", ""][pick(rng, 4)].into();
        }
        8 => {
            if let Some(t) = m["tensors"].as_array_mut() {
                let file = ["optimizer.safetensors", "model.safetensors"][pick(rng, 2)];
                t.retain(|t| t["file"] != file);
            }
        }
        9 => {
            let n = m["tensors"].as_array().map_or(0, |t| t.len());
            let i = pick(rng, n);
            m["tensors"][i]["name"] = ["fc1.weight", "", "x"][pick(rng, 3)].into();
        }
        10 => m["state"] = serde_json::json!({ "seed": "not a number" }),
        11 => m["extra"] = 1.into(),
        12 => {
            if let Some(f) = m["files"].as_array_mut() {
                let first = f.first().cloned().unwrap_or_default();
                f.push(first);
            }
        }
        _ => {
            m.as_object_mut().map(|o| o.remove("manifest_crc32"));
        }
    }
    put_manifest(ckpt, m, rng.random_bool(0.5));
}

/// Whether anything outside the tree changed: its file names and contents.
fn outside_fingerprint(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            for (n, b) in outside_fingerprint(&entry.path()) {
                out.push((format!("{name}/{n}"), b));
            }
        } else if kind.is_file() && entry.metadata().unwrap().len() < 1 << 20 {
            out.push((name, std::fs::read(entry.path()).unwrap()));
        } else if kind.is_file() {
            out.push((name, entry.metadata().unwrap().len().to_le_bytes().to_vec()));
        } else {
            out.push((name, Vec::new()));
        }
    }
    out.sort();
    out
}

/// One case: copy the pristine tree, apply the mutations, then resume and save with
/// pruning, checking every rule.
fn run_case(seed: u64, mutations: usize) -> std::result::Result<(), TestCaseError> {
    let fx = fixture();
    let root =
        std::env::temp_dir().join(format!("manychips-mutation-{}-{seed:016x}", std::process::id()));
    remove(&root);
    copy_tree(&fx.pristine, &root);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut touched = Vec::new();
    for _ in 0..mutations {
        touched.extend(mutate(&root, fx, &mut rng));
    }
    let before = outside_fingerprint(&fx.outside);
    let result = latest_within(&root);
    // The newest checkpoint no mutation touched must verify, and whatever is resumed holds
    // exactly the tensors that were written for its step. (A manifest edited and resealed
    // with a recomputed checksum is a forgery no checksum can tell: its caller state and
    // optimizer step may differ, but the format's other rules and the files' CRCs hold.)
    let intact = STEPS.iter().rev().find(|s| !touched.contains(s)).copied();
    match &result {
        Ok(Some(loaded)) => {
            let step = loaded.snapshot.step;
            let Some(want) = fx.snapshots.get(&step) else {
                return Err(TestCaseError::fail(format!("seed {seed}: resumed step {step}")));
            };
            let same = loaded.snapshot.params == want.params
                && loaded.snapshot.optimizer == want.optimizer;
            prop_assert!(same, "seed {seed}: resumed tensors that were not written for {step}");
            prop_assert!(
                intact.is_none_or(|i| step >= i),
                "seed {seed}: {step} below intact {intact:?}"
            );
            let mut opt = AdamW::new(fx.job.store.params(), 1e-2).unwrap();
            let restored = loaded.snapshot.restore(&fx.job.store.params(), &mut opt, &loaded.path);
            prop_assert!(restored.is_ok(), "seed {seed}: {restored:?}");
        }
        Ok(None) => prop_assert!(false, "seed {seed}: checkpoints were there"),
        Err(e) => {
            prop_assert!(intact.is_none(), "seed {seed}: {intact:?} is intact, yet {e}");
            prop_assert_eq!(e.kind(), ErrorKind::Checkpoint);
        }
    }
    // Saving with pruning (keep 1): the new checkpoint stays and verifies, entries that do
    // not verify stay, nothing outside changes.
    let strays: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| read_checkpoint(p).is_err())
        .collect();
    let snapshot = fx.job.snapshot(60);
    let saved = {
        let root = root.clone();
        within(30, move || -> Result<()> {
            let mut c = Checkpoints::open(&root, 1)?;
            c.save(snapshot)?;
            c.flush().map(|_| ())
        })
    };
    prop_assert!(saved.is_ok(), "seed {seed}: saving failed: {saved:?}");
    prop_assert!(read_checkpoint(&root.join(step_dir(60))).is_ok(), "seed {seed}");
    // keep 1: no other checkpoint that verifies is left.
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let path = entry.path();
        let other = path.file_name().is_some_and(|n| n != step_dir(60).as_str());
        prop_assert!(
            !(other && read_checkpoint(&path).is_ok()),
            "seed {seed}: {} kept",
            path.display()
        );
    }
    for stray in &strays {
        prop_assert!(stray.symlink_metadata().is_ok(), "seed {seed}: {} removed", stray.display());
    }
    prop_assert!(outside_fingerprint(&fx.outside) == before, "seed {seed}: outside changed");
    remove(&root);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("MANYCHIPS_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_checkpoints_resume_only_what_verifies(seed in any::<u64>(), mutations in 1usize..4) {
        run_case(seed, mutations)?;
    }
}

#[test]
fn mutation_cases_do_not_repeat_the_pristine_tree() {
    // The property test is only as good as its mutations: most must change something.
    let fx = fixture();
    let mut changed = 0;
    for seed in 0..40u64 {
        let root =
            std::env::temp_dir().join(format!("manychips-mutcheck-{}-{seed}", std::process::id()));
        remove(&root);
        copy_tree(&fx.pristine, &root);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        mutate(&root, fx, &mut rng);
        if outside_fingerprint(&root) != outside_fingerprint(&fx.pristine) {
            changed += 1;
        }
        remove(&root);
    }
    assert!(changed >= 30, "only {changed} of 40 mutations changed the tree");
}
