use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::*;
use crate::kernels::{Kernel, all_kernels};
use crate::params::PARAMS_BYTES;

#[test]
fn targets_prefer_the_devices_own_architecture() {
    let supported = [75, 80, 86, 89, 90];
    assert_eq!(target_for(90, &supported), Ok(Target { arch: 90, cubin: true }));
    assert_eq!(target_for(86, &supported), Ok(Target { arch: 86, cubin: true }));
    // Newer than NVRTC knows: PTX of the newest known architecture, JIT-compiled forward.
    assert_eq!(target_for(120, &supported), Ok(Target { arch: 90, cubin: false }));
    assert_eq!(target_for(87, &supported), Ok(Target { arch: 86, cubin: false }));
    let old = target_for(70, &supported).unwrap_err();
    assert!(old.contains("7.0"), "{old}");
    assert_eq!(Target { arch: 90, cubin: true }.flag(), "--gpu-architecture=sm_90");
    assert_eq!(Target { arch: 80, cubin: false }.flag(), "--gpu-architecture=compute_80");
}

#[test]
fn the_log_filter_keeps_problems_and_drops_the_sm70_notice() {
    let log = "nvrtc: warning: Architectures prior to '<compute/sm>_75' are deprecated and may \
               be removed in a future release\nelementwise.cu(3): warning #177-D: variable \
               \"x\" was declared but never referenced\nall good";
    assert_eq!(problems(log).len(), 1);
    assert!(problems(log)[0].contains("#177-D"));
    assert!(problems("").is_empty());
}

#[test]
fn disk_cache_round_trips_and_rejects_damaged_files() {
    let dir = std::env::temp_dir().join(format!("manychips-cuda-cache-{}", std::process::id()));
    let target = Target { arch: 90, cubin: true };
    let path = cache_file(&dir, Source::Reduce, target, (12, 9));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("reduce-sm_90-nvrtc12.9-"), "{name}");
    assert!(name.ends_with(".cubin"), "{name}");
    // The key changes with the NVRTC version, the architecture and the source.
    assert_ne!(path, cache_file(&dir, Source::Reduce, target, (12, 8)));
    assert_ne!(path, cache_file(&dir, Source::Reduce, Target { arch: 80, cubin: true }, (12, 9)));
    assert_ne!(path, cache_file(&dir, Source::Softmax, target, (12, 9)));
    assert_eq!(read_cached(&path), None);
    let image = b"\x7fELF pretend cubin".to_vec();
    write_cached(&path, &image);
    assert_eq!(read_cached(&path), Some(image.clone()));
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[3] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    assert_eq!(read_cached(&path), None);
    std::fs::write(&path, &damaged[..damaged.len() - 3]).unwrap();
    assert_eq!(read_cached(&path), None);
    // A symlink in the cache is not followed, even to a valid image.
    write_cached(&path, &image);
    assert_eq!(read_cached(&path), Some(image.clone()));
    #[cfg(unix)]
    {
        let link = dir.join("link.cubin");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read_cached(&link), None);
    }
    assert_eq!(read_cached(&dir), None, "a directory is no image");
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
}

/// NVRTC when it loads; otherwise `None` after saying why, or a failure when `CI` is set:
/// CI installs NVRTC (`.ci/run`), so a CI run that cannot load it has not tested the kernels.
///
/// `MANYCHIPS_EXPECT_NVRTC` (a major version, as CI sets it for its NVRTC 13 run) makes any
/// other version a failure, so a check meant for one NVRTC cannot pass on another.
fn nvrtc_or_skip(test: &str) -> Option<(i32, i32)> {
    match crate::libs::nvrtc() {
        Ok(version) => {
            if let Ok(want) = std::env::var("MANYCHIPS_EXPECT_NVRTC") {
                assert_eq!(
                    want.parse::<i32>().ok(),
                    Some(version.0),
                    "{test}: MANYCHIPS_EXPECT_NVRTC={want} but NVRTC {}.{} loaded ({:?})",
                    version.0,
                    version.1,
                    crate::locate::loaded_from("libnvrtc")
                );
            }
            Some(version)
        }
        Err(reason) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but NVRTC cannot be loaded, so {test} did not run: {reason}"
            );
            println!("skipped {test}: {reason}");
            None
        }
    }
}

/// One compiled PTX entry point: its parameters as declared.
#[derive(Debug)]
struct Entry {
    params: Vec<String>,
}

/// The `.entry` declarations of a PTX module with their parameter lines.
fn entries(ptx: &str) -> BTreeMap<String, Entry> {
    let mut found = BTreeMap::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let Some(at) = line.find(".entry ") else { continue };
        let rest = &line[at + ".entry ".len()..];
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let mut params = Vec::new();
        for p in lines.by_ref() {
            let p = p.trim();
            if p.starts_with(')') {
                break;
            }
            if p.starts_with(".param") {
                params.push(p.trim_end_matches(',').to_string());
            }
        }
        found.insert(name, Entry { params });
    }
    found
}

/// Every kernel source compiles to PTX for the oldest architecture this NVRTC supports
/// (compute_50 for NVRTC 12.9, compute_75 for 13.0), compute_80 and compute_90 with the options
/// the backend uses at run time, without any error or warning; every entry point the
/// backend can launch is in the PTX of its source with the documented ABI (a 472-byte,
/// 8-aligned `McParams` by value, then one pointer per operand); and nothing else is.
#[test]
fn every_kernel_source_compiles_to_ptx_for_the_oldest_arch_sm80_and_sm90() {
    let Some(version) = nvrtc_or_skip("the NVRTC compile check") else { return };
    println!("NVRTC {}.{} from {:?}", version.0, version.1, crate::locate::loaded_from("libnvrtc"));
    let supported = supported_archs().expect("nvrtcGetSupportedArchs");
    let oldest = supported.iter().copied().min().expect("NVRTC supports no architecture");
    assert!(oldest <= 75, "NVRTC {version:?} dropped sm_75 (supports {supported:?})");
    let oldest = format!("compute_{oldest}");
    let archs = [oldest.as_str(), "compute_80", "compute_90"];
    let jobs: Vec<(Source, &str)> =
        Source::ALL.iter().flat_map(|&s| archs.iter().map(move |&a| (s, a))).collect();
    let results = run_parallel(&jobs, |&(source, arch)| {
        let start = std::time::Instant::now();
        let compiled = compile(source, &format!("--gpu-architecture={arch}"), false);
        (compiled, start.elapsed())
    });
    let mut failures = Vec::new();
    let mut per_source: BTreeMap<Source, Vec<BTreeSet<String>>> = BTreeMap::new();
    for ((source, arch), (compiled, took)) in jobs.iter().zip(results) {
        let compiled = match compiled {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{source} [{arch}]: {e:?}"));
                continue;
            }
        };
        let bad = problems(&compiled.log);
        if !bad.is_empty() {
            failures.push(format!("{source} [{arch}]: {}", bad.join("\n")));
        }
        let ptx = String::from_utf8_lossy(&compiled.image);
        let found = entries(&ptx);
        let want: Vec<Kernel> =
            all_kernels().into_iter().filter(|k| k.source() == *source).collect();
        for k in &want {
            let name = k.name();
            let Some(entry) = found.get(&name) else {
                failures.push(format!("{source} [{arch}]: entry point {name} is missing"));
                continue;
            };
            let first = format!(".param .align 8 .b8 {name}_param_0[{PARAMS_BYTES}]");
            if entry.params.first() != Some(&first) {
                failures.push(format!(
                    "{name} [{arch}]: parameter 0 is {:?}, not a {PARAMS_BYTES}-byte McParams",
                    entry.params.first()
                ));
            }
            let pointers = &entry.params[1.min(entry.params.len())..];
            if pointers.len() != k.pointer_args()
                || pointers.iter().any(|p| !p.starts_with(".param .u64 "))
            {
                failures.push(format!(
                    "{name} [{arch}]: takes {:?} after McParams, the backend passes {} pointers",
                    pointers,
                    k.pointer_args()
                ));
            }
        }
        let known: BTreeSet<String> = want.iter().map(Kernel::name).collect();
        let extra: Vec<&String> = found.keys().filter(|n| !known.contains(*n)).collect();
        if !extra.is_empty() {
            failures.push(format!(
                "{source} [{arch}]: entry points the backend never launches: {extra:?}"
            ));
        }
        println!(
            "{source} [{arch}]: {} entry points, {} bytes of PTX, {:.1} s",
            found.len(),
            ptx.len(),
            took.as_secs_f64()
        );
        per_source.entry(*source).or_default().push(found.keys().cloned().collect());
    }
    for (source, sets) in &per_source {
        if sets.windows(2).any(|w| w[0] != w[1]) {
            failures.push(format!("{source}: the architectures export different entry points"));
        }
    }
    let total: usize = per_source.values().filter_map(|s| s.first()).map(BTreeSet::len).sum();
    println!("{total} entry points in all");
    assert!(failures.is_empty(), "NVRTC check failed:\n{}", failures.join("\n"));
    assert_eq!(total, all_kernels().len());
}

/// Generated fused kernels (`crate::fused`) compile without an error or warning for the
/// oldest architecture, compute_80 and compute_90, with the entry points of the documented
/// ABI (`fused`; `fused_reduce` and `fused_reduce_warp` for each fold): a program with every
/// unary, binary and comparison step, constants as parameters and as literals, over f32,
/// f16 and bf16 inputs with a bf16 (f16 for the folds) output.
#[test]
fn generated_fused_kernels_compile_to_ptx() {
    use crate::kernels::Team;
    use manychips_api::{BinaryOp, CompareOp, DType, Instr, ReduceOp, UnaryOp};
    let Some(_) = nvrtc_or_skip("the NVRTC fused-kernel check") else { return };
    let mut program = vec![Instr::Input(0), Instr::Input(1), Instr::Input(2)];
    let push = |program: &mut Vec<Instr>, instr: Instr| {
        program.push(instr);
        program.len() - 1
    };
    let mut last = 2;
    for op in UnaryOp::ALL {
        let x = push(&mut program, Instr::Affine(last, 0.5, 0.25));
        last = push(&mut program, Instr::Unary(op, x));
    }
    for op in BinaryOp::ALL {
        last = push(&mut program, Instr::Binary(op, last, 1));
    }
    for op in CompareOp::ALL {
        let c = push(&mut program, Instr::Compare(op, last, 0));
        last = push(&mut program, Instr::Binary(BinaryOp::Add, c, 2));
    }
    push(&mut program, Instr::Const(3.0));
    let inputs = [DType::F32, DType::F16, DType::BF16];
    let (id, constants) = crate::fused::register(&program, &inputs, DType::BF16, None);
    assert_eq!(constants.len(), 12, "the rest of the constants are literals");
    let mut kernels = vec![vec![Kernel::Fused(id)]];
    // The same program folded along an axis, by every fold a fused reduction takes.
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        let (id, _) = crate::fused::register(&program, &inputs, DType::F16, Some(op));
        kernels
            .push(vec![Kernel::FusedReduce(id, Team::Block), Kernel::FusedReduce(id, Team::Warp)]);
    }
    let supported = supported_archs().expect("nvrtcGetSupportedArchs");
    let oldest = supported.iter().copied().min().expect("NVRTC supports no architecture");
    for arch in [format!("compute_{oldest}"), "compute_80".into(), "compute_90".into()] {
        for program in &kernels {
            let source = program[0].source();
            let compiled = compile(source, &format!("--gpu-architecture={arch}"), false)
                .unwrap_or_else(|e| panic!("{} [{arch}]: {e:?}", program[0]));
            let bad = problems(&compiled.log);
            assert!(bad.is_empty(), "{} [{arch}]: {}", program[0], bad.join("\n"));
            let ptx = String::from_utf8_lossy(&compiled.image);
            let found = entries(&ptx);
            let names: Vec<&String> = found.keys().collect();
            let want: Vec<String> = program.iter().map(Kernel::name).collect();
            assert_eq!(names, want.iter().collect::<Vec<_>>(), "[{arch}]");
            for k in program {
                let name = k.name();
                let entry = &found[&name];
                let first = format!(".param .align 8 .b8 {name}_param_0[{PARAMS_BYTES}]");
                assert_eq!(entry.params.first(), Some(&first), "{name} [{arch}]");
                assert_eq!(entry.params.len() - 1, k.pointer_args(), "{name} [{arch}]");
            }
        }
    }
}

/// The run-time path on an H100 (and an A100): CUBINs for the real architecture, which the
/// driver loads without a JIT step. NVRTC builds them without a GPU.
#[test]
fn every_kernel_source_compiles_to_cubin_for_sm80_and_sm90() {
    let Some(_) = nvrtc_or_skip("the NVRTC CUBIN check") else { return };
    let supported = supported_archs().expect("nvrtcGetSupportedArchs");
    assert!(supported.contains(&80) && supported.contains(&90), "NVRTC supports {supported:?}");
    let jobs: Vec<(Source, u32)> =
        Source::ALL.iter().flat_map(|&s| [80, 90].map(move |a| (s, a))).collect();
    let results =
        run_parallel(&jobs, |&(source, arch)| build(source, Target { arch, cubin: true }, None));
    for ((source, arch), result) in jobs.iter().zip(results) {
        let image = result.unwrap_or_else(|e| panic!("{source} sm_{arch}: {e:?}"));
        assert!(image.starts_with(b"\x7fELF"), "{source} sm_{arch}: not an ELF CUBIN");
        println!("{source} [sm_{arch}]: {} bytes of CUBIN", image.len());
    }
}

/// Runs `f` over `jobs` on every core (NVRTC programs compile independently).
fn run_parallel<J: Sync, R: Send>(jobs: &[J], f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(job) = jobs.get(i) else { break };
                    let r = f(job);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every job ran")).collect()
}
