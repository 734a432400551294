// The training examples end to end, as their users run them: the binaries cargo built next
// to this test. A binary of its own: these runs keep both cores busy for seconds.

#[path = "common/examples.rs"]
mod runs;
// The examples' shared code, compiled here too so its unit tests (the metrics CSV, the
// plot) run with the others.
#[path = "../examples/common/mod.rs"]
mod example_common;
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

#[test]
fn train_pipeline_example_cuts_the_model_into_stages_and_learns() {
    // The CPU and two simulated chips, each offered less memory than the model needs.
    let output = std::process::Command::new(example("train_pipeline"))
        .args(["--quiet", "--steps", "120", "--eval-every", "40", "--sample", "40"])
        .args(["--devices", "cpu"])
        .output()
        .expect("run train_pipeline");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "train_pipeline failed");
    let stages: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pipeline: ")?.split(' ').next()?.parse().ok())
        .expect("a plan line");
    assert!(stages >= 2, "the model fits one device: {stages} stage");
    let line = stdout.lines().find(|l| l.starts_with("validation loss")).expect("a result line");
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let (valid, unigram) = (numbers[0], numbers[1]);
    assert!(valid < unigram - 0.6, "validation loss {valid} vs unigram entropy {unigram}");
    assert!(stdout.contains("--- sample ---"), "no generated sample");

    // With `--groups` the search may put devices together on a stage's rows: on these
    // three, one stage of all of them (`+N% rows` lines), run with copies of the model.
    let output = std::process::Command::new(example("train_pipeline"))
        .args(["--quiet", "--steps", "10", "--eval-every", "10", "--sample", "0"])
        .args(["--devices", "cpu", "--groups"])
        .output()
        .expect("run train_pipeline --groups");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "train_pipeline --groups failed");
    assert!(stdout.contains("% rows"), "no group in the plan");
    assert!(stdout.contains("validation loss"), "no result line");
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
    // (A last attempt that ran to the end leaves a finished job: nothing to resume.)
    if !stdout.contains("nothing to do") {
        assert!(accuracy_of(&stdout) >= 97.0, "the accuracy target is missed after the kills");
    }
    assert_eq!(
        final_model_crc(&base.join("killed")),
        final_model_crc(&base.join("straight")),
        "parameters after {kills} kills differ from the unbroken run"
    );
    std::fs::remove_dir_all(&base).ok();
}

fn run_example(name: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(example(name)).args(args).output().expect("run the example")
}

#[test]
fn nonsense_arguments_exit_2_naming_the_argument() {
    let cases: [(&str, &[&str], &str); 15] = [
        ("train_mlp", &["--batch", "0"], "--batch"),
        ("train_mlp", &["--lr", "nan"], "--lr"),
        ("train_mlp", &["--lr", "inf"], "--lr"),
        ("train_mlp", &["--lr", "1e308"], "--lr"),
        ("train_mlp", &["--lr", "-1"], "--lr"),
        ("train_mlp", &["--hidden", "0"], "--hidden"),
        ("train_mlp", &["--hidden", "100000000"], "--hidden"),
        ("train_mlp", &["--checkpoint-every", "0"], "--checkpoint-every"),
        ("train_charlm", &["--batch", "0"], "--batch"),
        ("train_charlm", &["--dim", "0"], "--dim"),
        ("train_charlm", &["--eval-every", "0"], "--eval-every"),
        ("train_charlm", &["--lr", "nan"], "--lr"),
        ("train_pipeline", &["--micro-batches", "0"], "--micro-batches"),
        ("train_pipeline", &["--chips", "65"], "--chips"),
        ("train_pipeline", &["--device-kib", "0"], "--device-kib"),
    ];
    for (name, args, named) in cases {
        let out = run_example(name, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(stderr.contains(named), "{name} {args:?} must name {named}: {stderr}");
    }
}

fn mlp_args<'a>(dir: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "--quiet",
        "--devices",
        "cpu",
        "--max-steps",
        steps,
        "--checkpoint-every",
        "10",
        "--checkpoint-dir",
        dir,
        "--out",
        out,
    ]
}

/// The steps of the rows of a metrics.csv.
fn csv_steps(path: &std::path::Path) -> Vec<u64> {
    let csv = std::fs::read_to_string(path).expect("metrics.csv");
    csv.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect()
}

#[test]
fn a_resumed_run_continues_the_metrics_and_a_finished_job_is_left_alone() {
    let base = std::env::temp_dir().join(format!("manychips-resume-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let (dir, out) = (base.join("ckpt"), base.join("out"));
    let (dir, out) = (dir.to_str().unwrap(), out.to_str().unwrap());
    let first = run_example("train_mlp", &mlp_args(dir, out, "20"));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut args = mlp_args(dir, out, "40");
    args.push("--resume");
    let resumed = run_example("train_mlp", &args);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{stdout}{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(stdout.contains("resumed from"), "{stdout}");
    let csv = base.join("out/metrics.csv");
    assert_eq!(csv_steps(&csv), (0..40).collect::<Vec<u64>>(), "rows of both runs, in order");

    // Resuming the finished job: said so, exit 0, and its files stay as they were.
    let before =
        (std::fs::read(&csv).unwrap(), std::fs::read(base.join("out/curves.png")).unwrap());
    let again = run_example("train_mlp", &args);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(stdout.contains("finished, nothing to do"), "{stdout}");
    assert!(!stdout.contains("test accuracy 0.00%"), "{stdout}");
    let after = (std::fs::read(&csv).unwrap(), std::fs::read(base.join("out/curves.png")).unwrap());
    assert!(before == after, "a finished job's files were rewritten");
    std::fs::remove_dir_all(&base).ok();
}
