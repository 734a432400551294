// The training examples end to end, as their users run them: the binaries cargo built next
// to this test. A binary of its own: these runs keep both cores busy for seconds.

#[path = "common/examples.rs"]
mod runs;
use runs::{accuracy_of, example};

#[test]
fn train_mlp_example_reaches_97_percent() {
    let out = std::env::temp_dir().join(format!("manychips-mlp-{}", std::process::id()));
    let output = std::process::Command::new(example("train_mlp"))
        .args(["--quiet", "--out"])
        .arg(&out)
        .output()
        .expect("run train_mlp");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "train_mlp failed");
    let accuracy = accuracy_of(&stdout);
    assert!(accuracy >= 97.0, "test accuracy {accuracy}% < 97%");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    assert!(csv.lines().count() > 100, "one CSV row per step");
    let png = std::fs::read(out.join("curves.png")).expect("curves.png");
    assert_eq!(&png[1..4], b"PNG");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn train_charlm_example_learns_below_the_unigram_entropy() {
    // A short run (CI time): the validation loss must already be well below what a
    // context-free model can reach, and the f16 path with loss scaling must learn too.
    for dtype in ["f32", "f16"] {
        let out =
            std::env::temp_dir().join(format!("manychips-charlm-{dtype}-{}", std::process::id()));
        let output = std::process::Command::new(example("train_charlm"))
            .args([
                "--quiet",
                "--steps",
                "120",
                "--eval-every",
                "40",
                "--sample",
                "80",
                "--devices",
                "cpu",
            ])
            .args(["--dtype", dtype, "--out"])
            .arg(&out)
            .output()
            .expect("run train_charlm");
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "train_charlm --dtype {dtype} failed");
        let line =
            stdout.lines().find(|l| l.starts_with("validation loss")).expect("a result line");
        let numbers: Vec<f64> = line
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|w| w.parse().ok())
            .collect();
        let (valid, unigram) = (numbers[0], numbers[1]);
        assert!(
            valid < unigram - 0.6,
            "{dtype}: validation loss {valid} vs unigram entropy {unigram}"
        );
        assert!(stdout.contains("--- sample ---"), "no generated sample");
        std::fs::remove_dir_all(&out).ok();
    }
}

/// The CRC-32 of `model.safetensors` that the newest checkpoint's manifest records.
fn final_model_crc(dir: &std::path::Path) -> u64 {
    let mut steps: Vec<_> = std::fs::read_dir(dir)
        .expect("checkpoint dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    let manifest =
        std::fs::read_to_string(steps.last().expect("a checkpoint").join("manifest.json"))
            .expect("manifest");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("json");
    manifest["files"][0]["crc32"].as_u64().expect("crc")
}

#[test]
fn train_mlp_survives_kill_9_and_resumes_bit_exact() {
    use rand::{RngExt, SeedableRng};
    let base = std::env::temp_dir().join(format!("manychips-kill-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let run = |dir: &str| {
        let mut cmd = std::process::Command::new(example("train_mlp"));
        // 100 epochs (2300 steps, a checkpoint every 5): long enough to be killed often.
        cmd.args(["--quiet", "--devices", "cpu", "--epochs", "100", "--checkpoint-every", "5"])
            .arg("--resume")
            .arg("--checkpoint-dir")
            .arg(base.join(dir))
            .arg("--out")
            .arg(base.join("out"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // The unbroken run the killed one must match.
    let straight = run("straight").output().expect("run train_mlp");
    assert!(straight.status.success(), "{}", String::from_utf8_lossy(&straight.stderr));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    for attempt in 0..8 {
        let mut child = run("killed").spawn().expect("spawn train_mlp");
        let after = std::time::Duration::from_millis(rng.random_range(60..500));
        std::thread::sleep(after);
        let finished = child.try_wait().expect("wait").is_some();
        if !finished {
            child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
            kills += 1;
        }
        let out = child.wait_with_output().expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("attempt {attempt}: killed after {after:?}: {}", !finished);
        for line in
            stdout.lines().filter(|l| l.starts_with("resumed") || l.starts_with("no checkpoint"))
        {
            println!("  {line}");
        }
        assert!(!stdout.contains("skipped:"), "a damaged checkpoint was found:\n{stdout}");
        if finished {
            break;
        }
    }
    assert!(kills >= 3, "only {kills} runs were killed mid-way");
    let last = run("killed").output().expect("final run");
    let stdout = String::from_utf8_lossy(&last.stdout);
    println!("{stdout}");
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    assert!(!stdout.contains("skipped:"), "a damaged checkpoint was found");
    assert!(accuracy_of(&stdout) >= 97.0, "the accuracy target is missed after the kills");
    assert_eq!(
        final_model_crc(&base.join("killed")),
        final_model_crc(&base.join("straight")),
        "parameters after {kills} kills differ from the unbroken run"
    );
    std::fs::remove_dir_all(&base).ok();
}
