//! Running the example binaries from integration tests (shared by tests/examples.rs and
//! tests/mpi.rs; each uses its own subset).

#![allow(dead_code)]

use std::path::PathBuf;

/// The example binary cargo built next to this test binary (`cargo test` builds examples;
/// `--features mpi` ones need `cargo build --features mpi --example …`).
pub fn example(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("examples").join(name)
}

/// The test accuracy (%) on a `train_mlp` result line (`test accuracy 97.77% after …`).
pub fn accuracy_in(line: &str) -> f64 {
    line.trim_start_matches("test accuracy ")
        .split('%')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {line:?}"))
}

/// The final test accuracy (%) a `train_mlp` run printed.
pub fn accuracy_of(stdout: &str) -> f64 {
    accuracy_in(stdout.lines().find(|l| l.starts_with("test accuracy")).expect("a result line"))
}
