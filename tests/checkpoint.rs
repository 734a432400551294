// Checkpoints: resume is bit-exact, writes are atomic, damaged checkpoints are detected and
// skipped, old ones are pruned.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use manychips::train::checkpoint::{latest, read_checkpoint, write_checkpoint};
use manychips::train::models::Mlp;
use manychips::train::nn::{self, Activation, Ctx, Dropout};
use manychips::train::optim::{AdamW, Optimizer};
use manychips::train::{Checkpoints, ParamStore, Snapshot, Var};
use manychips::{CpuDevice, DType, DeviceRef, ErrorKind, Tensor};

fn cpu() -> DeviceRef {
    Arc::new(CpuDevice::with_threads(1).expect("cpu"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("manychips-ckpt-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

struct Job {
    device: DeviceRef,
    model: Mlp,
    store: ParamStore,
    opt: AdamW,
    x: Tensor,
    y: Vec<u32>,
}

impl Job {
    fn new() -> Job {
        let device = cpu();
        let store = ParamStore::new(&device, 9);
        let model = Mlp::new(&store, &[10, 32, 4], Activation::Gelu)
            .unwrap()
            .with_dropout(Dropout::new(0.2, 3).unwrap());
        let opt = AdamW::new(store.params(), 1e-2).unwrap();
        let x = Tensor::randn(0.0, 1.0, [48, 10], DType::F32, 4, &device).unwrap();
        let y = (0..48).map(|i| (i * 7 % 4) as u32).collect();
        Job { device, model, store, opt, x, y }
    }

    /// Step `step` (dropout masks and the batch depend on it).
    fn step(&mut self, step: u64) {
        let rows = (step as usize % 3) * 16;
        let x = Var::constant(self.x.narrow(0, rows, 16).unwrap());
        let logits = self.model.forward(&x, &Ctx::train(step)).unwrap();
        let loss = nn::cross_entropy(&logits, &self.y[rows..rows + 16]).unwrap();
        self.opt.step(&loss.backward().unwrap()).unwrap();
    }

    fn bytes(&self) -> Vec<Vec<u8>> {
        self.store
            .params()
            .iter()
            .map(|p| bytemuck::cast_slice(&p.value().to_vec::<f32>().unwrap()).to_vec())
            .collect()
    }

    fn snapshot(&self, step: u64) -> Snapshot {
        Snapshot::capture(step, &self.store.params(), &self.opt, serde_json::json!({"step": step}))
            .unwrap()
    }
}

#[test]
fn resume_is_bit_exact() {
    let dir = scratch("exact");
    let n = 12;
    let mut straight = Job::new();
    for s in 0..n {
        straight.step(s);
    }

    let mut first = Job::new();
    for s in 0..n / 2 {
        first.step(s);
    }
    let mut checkpoints = Checkpoints::open(&dir, 2).unwrap();
    checkpoints.save(first.snapshot(n / 2)).unwrap();
    checkpoints.flush().unwrap();
    drop(first); // the "crash"

    let mut resumed = Job::new();
    let loaded = latest(&dir).unwrap().expect("a checkpoint");
    assert!(loaded.skipped.is_empty());
    assert_eq!(loaded.snapshot.step, n / 2);
    loaded.snapshot.restore(&resumed.store.params(), &mut resumed.opt, &loaded.path).unwrap();
    for s in n / 2..n {
        resumed.step(s);
    }
    assert_eq!(resumed.bytes(), straight.bytes(), "parameters differ after resume");
    assert_eq!(resumed.opt.state().0, straight.opt.state().0);
    let _ = resumed.device;
    std::fs::remove_dir_all(&dir).ok();
}

fn damage(path: &Path, how: &str) {
    let file = path.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    match how {
        "truncate" => bytes.truncate(bytes.len() / 2),
        _ => {
            let i = bytes.len() - 5;
            bytes[i] ^= 0x40;
        }
    }
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn damaged_checkpoints_are_detected_and_skipped() {
    let dir = scratch("damage");
    std::fs::create_dir_all(&dir).unwrap();
    let mut job = Job::new();
    let mut paths = Vec::new();
    for step in 1..=3 {
        job.step(step);
        paths.push(write_checkpoint(&dir, &job.snapshot(step)).unwrap());
    }
    damage(&paths[2], "truncate");
    let loaded = latest(&dir).unwrap().expect("an older checkpoint");
    assert_eq!(loaded.snapshot.step, 2, "the truncated newest must be skipped");
    assert_eq!(loaded.skipped.len(), 1);
    assert!(loaded.skipped[0].to_string().contains("truncated"), "{}", loaded.skipped[0]);

    damage(&paths[1], "flip");
    let e = read_checkpoint(&paths[1]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Checkpoint);
    assert!(e.to_string().contains("CRC-32"), "{e}");
    assert_eq!(latest(&dir).unwrap().unwrap().snapshot.step, 1);

    std::fs::write(paths[0].join("manifest.json"), b"{ not json").unwrap();
    let e = latest(&dir).unwrap_err();
    assert!(e.to_string().contains("manifest"), "all damaged: {e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn interrupted_writes_are_never_picked_and_old_ones_are_pruned() {
    let dir = scratch("atomic");
    std::fs::create_dir_all(dir.join(".tmp-step-000000099-1")).unwrap();
    std::fs::write(dir.join(".tmp-step-000000099-1/manifest.json"), b"{}").unwrap();
    assert!(latest(&dir).unwrap().is_none(), "a temporary directory is not a checkpoint");
    let mut checkpoints = Checkpoints::open(&dir, 2).unwrap();
    assert!(!dir.join(".tmp-step-000000099-1").exists(), "open removes interrupted writes");
    let job = Job::new();
    for step in [5, 10, 15] {
        checkpoints.save(job.snapshot(step)).unwrap();
    }
    let written = checkpoints.flush().unwrap();
    assert_eq!(written.len(), 3);
    let names: Vec<String> = checkpoints
        .list()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-000000010", "step-000000015"], "keep the newest two");
    // A snapshot that does not fit the model is refused by name.
    let other = ParamStore::new(&cpu(), 1);
    let small = Mlp::new(&other, &[10, 8, 4], Activation::Relu).unwrap();
    let mut opt = AdamW::new(other.params(), 1e-3).unwrap();
    let loaded = checkpoints.latest().unwrap().unwrap();
    let e = loaded.snapshot.restore(&other.params(), &mut opt, &loaded.path).unwrap_err();
    assert!(e.to_string().contains("fc1.weight"), "{e}");
    let _ = small;
    std::fs::remove_dir_all(&dir).ok();
}
