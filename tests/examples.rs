// The training examples end to end, as their users run them: the binaries cargo built next
// to this test. A binary of its own: these runs keep both cores busy for seconds.

/// The example binary next to this test binary (cargo builds examples for `cargo test`).
fn example(name: &str) -> std::path::PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("examples").join(name)
}

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
    let line = stdout.lines().find(|l| l.starts_with("test accuracy")).expect("a result line");
    let accuracy: f64 = line
        .trim_start_matches("test accuracy ")
        .split('%')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("an accuracy");
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
