// MPI ranks trained as one (feature `mpi`), under a real `mpirun`: the all-reduce weighting
// with unequal rank shares (one rank with no rows at all), 2-rank training equal to
// 1-process training, the all-reduce overlapping the backward pass giving the same bits as
// after it, and resuming a 2-rank checkpoint on 1 rank. With `CI` set, a missing `mpirun`
// fails the test.

#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::Command;

use manychips::train::checkpoint::latest;

#[path = "common/examples.rs"]
mod runs;
use runs::{accuracy_in, example};

fn mpirun_available() -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI is set but mpirun was not found");
        println!("skipped: no mpirun (install openmpi-bin libopenmpi-dev)");
    }
    found
}

fn run(ranks: usize, args: &[&str]) -> String {
    run_example(ranks, "mpi_check", args)
}

fn run_example(ranks: usize, name: &str, args: &[&str]) -> String {
    let binary = example(name);
    assert!(
        binary.exists(),
        "{} is missing: `cargo build --release --features mpi --example {name}` first",
        binary.display()
    );
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "-np", &ranks.to_string()])
        .arg(binary)
        .args(args)
        // Open MPI refuses root without both of these (CI containers run as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ mpirun -np {ranks} {name} {}\n{text}", args.join(" "));
    assert!(out.status.success(), "mpirun -np {ranks} failed");
    text
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let loaded = latest(dir).expect("readable").expect("a checkpoint");
    loaded
        .snapshot
        .params
        .iter()
        .map(|t| (t.name.clone(), bytemuck::pod_collect_to_vec::<u8, f32>(&t.bytes)))
        .collect()
}

fn assert_close(a: &Path, b: &Path, what: &str) {
    let (a, b) = (params(a), params(b));
    assert_eq!(a.len(), b.len());
    let mut worst: f64 = 0.0;
    for ((name, x), (name2, y)) in a.iter().zip(&b) {
        assert_eq!(name, name2);
        for (p, q) in x.iter().zip(y) {
            worst = worst.max(f64::from((p - q).abs()) / (1e-3 + f64::from(q.abs())));
        }
    }
    println!("{what}: largest relative parameter difference {worst:.2e}");
    assert!(worst < 1e-4, "{what}: parameters differ by {worst:e}");
}

#[test]
fn ranks_train_as_one_process_and_resume_at_another_world_size() {
    if !mpirun_available() {
        return;
    }
    let base = std::env::temp_dir().join(format!("manychips-mpi-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let dir = |name: &str| base.join(name).display().to_string();

    run(1, &["--steps", "8", "--save", &dir("one")]);
    // Unequal shares (1 : 3): the gradient sum must still weight every row alike.
    let two = run(2, &["--steps", "8", "--weights", "1,3", "--save", &dir("two")]);
    assert!(two.contains("rows 12..48"), "rank 1 should take rows 12..48 of 48");
    assert_close(&base.join("two"), &base.join("one"), "2 ranks (1:3) vs 1 process");

    // One bucket per parameter, reduced while the backward pass runs or after it: the
    // same sums, bit for bit. A rank with no rows still takes part in every bucket.
    let small = ["--steps", "8", "--weights", "1,3", "--bucket-bytes", "4"];
    run(2, &[&small[..], &["--save", &dir("overlap")]].concat());
    run(2, &[&small[..], &["--no-overlap", "--save", &dir("serial")]].concat());
    assert_eq!(params(&base.join("overlap")), params(&base.join("serial")));
    let idle = run(
        2,
        &["--steps", "8", "--weights", "0,1", "--bucket-bytes", "4", "--save", &dir("idle")],
    );
    assert!(idle.contains("rows 0..0"), "rank 0 should have no rows");
    assert_close(&base.join("idle"), &base.join("one"), "2 ranks (0:1) vs 1 process");

    // 2 ranks for 4 steps, then 1 rank from their checkpoint for the other 4.
    run(2, &["--steps", "4", "--save", &dir("half")]);
    run(1, &["--steps", "8", "--resume", &dir("half"), "--save", &dir("resumed")]);
    assert_close(&base.join("resumed"), &base.join("one"), "2 ranks then 1 rank vs 1 process");
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn train_mlp_runs_distributed() {
    if !mpirun_available() {
        return;
    }
    let out = std::env::temp_dir().join(format!("manychips-mpi-mlp-{}", std::process::id()));
    let out_arg = out.display().to_string();
    let text = run_example(
        2,
        "train_mlp",
        &["--distributed", "--quiet", "--devices", "cpu", "--out", &out_arg],
    );
    for rank in ["(rank 0 of 2)", "(rank 1 of 2)"] {
        let line = text.lines().find(|l| l.contains(rank)).expect("each rank reports");
        let accuracy = accuracy_in(line);
        assert!(accuracy >= 97.0, "{rank}: {accuracy}% < 97%");
    }
    std::fs::remove_dir_all(&out).ok();
}

/// The pipeline with one stage per rank (2 ranks, then 3) equals the whole model in one
/// process (1 rank), bit for bit: the same losses every step, the same parameters after.
#[test]
fn a_pipeline_over_ranks_equals_one_process() {
    if !mpirun_available() {
        return;
    }
    let base = std::env::temp_dir().join(format!("manychips-mpi-pipe-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let (losses, merged) = (pipeline_losses, stage_params);
    let one_dir = base.join("one");
    let one = run(1, &["--pipeline", "--steps", "4", "--save", &one_dir.display().to_string()]);
    let want = merged(&one_dir, 1);
    assert_eq!(losses(&one).len(), 4);
    for ranks in [2, 3] {
        let dir = base.join(format!("ranks-{ranks}"));
        let out = run(ranks, &["--pipeline", "--steps", "4", "--save", &dir.display().to_string()]);
        assert_eq!(losses(&out), losses(&one), "{ranks} ranks: the losses");
        assert_eq!(merged(&dir, ranks), want, "{ranks} ranks: the parameters, bit for bit");
    }
    std::fs::remove_dir_all(&base).ok();
}

/// A middle rank's device is lost in the first step: that rank returns the error, and the
/// launcher ends the job, rather than the rank waiting forever on a neighbour that waits
/// for it (a receive read ahead from a stopped rank would never return).
#[test]
fn a_rank_whose_stage_fails_ends_the_job_instead_of_hanging() {
    if !mpirun_available() {
        return;
    }
    let binary = example("mpi_check");
    assert!(binary.exists(), "{} is missing", binary.display());
    let out = Command::new("timeout")
        .args(["120", "mpirun", "--oversubscribe", "-np", "3"])
        .arg(binary)
        .args(["--pipeline", "--steps", "2", "--fail-rank", "1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("timeout mpirun");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert_ne!(out.status.code(), Some(124), "the job hung (killed after 120 s)");
    assert!(!out.status.success(), "the job should fail");
    assert!(text.contains("lost") || text.contains("Lost"), "the error is reported: {text}");
}

/// Rank 0's lines "step N loss L", in step order.
fn pipeline_losses(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("rank 0 of") && l.contains("pipeline step"))
        .map(|l| l.split("pipeline").nth(1).unwrap_or_default().to_string())
        .collect();
    lines.sort();
    lines
}

/// Every rank's stage checkpoint under `dir`, merged, by parameter name.
fn stage_params(dir: &Path, ranks: usize) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> =
        (0..ranks).flat_map(|r| params(&dir.join(format!("rank-{r}")))).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Two ranks, each running its stage on a data-parallel group of two chips of its own
/// (planned by `StagePlan::for_rank`): pipeline between machines, data parallel within.
/// Each micro-batch's rows are cut between a rank's chips, whose gradients add in another
/// order, so the result is one process's within rounding: losses within 1e-4, parameters
/// within 1e-5 of their scale, under SGD with momentum.
#[test]
fn a_pipeline_over_ranks_each_on_a_local_group_trains_like_one_process() {
    if !mpirun_available() {
        return;
    }
    let base = std::env::temp_dir().join(format!("manychips-mpi-group-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let (one_dir, dir) = (base.join("one"), base.join("grouped"));
    let common = ["--pipeline", "--sgd", "--steps", "4", "--save"];
    let one = run(1, &[&common[..], &[&one_dir.display().to_string()]].concat());
    let grouped = run(2, &[&common[..], &[&dir.display().to_string(), "--local-group"]].concat());
    let value = |line: &String| -> f64 {
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a loss")
    };
    let (want, got) = (pipeline_losses(&one), pipeline_losses(&grouped));
    assert_eq!(want.len(), got.len(), "steps");
    for (a, b) in want.iter().zip(&got) {
        let (a, b) = (value(a), value(b));
        assert!((a - b).abs() <= 1e-4 * a.abs(), "loss {b} vs one process {a}");
    }
    let (want, got) = (stage_params(&one_dir, 1), stage_params(&dir, 2));
    assert_eq!(want.len(), got.len(), "parameters");
    for ((name, a), (other, b)) in want.iter().zip(&got) {
        assert_eq!(name, other);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{name} differs by {worst} (scale {scale})");
    }
    std::fs::remove_dir_all(&base).ok();
}
