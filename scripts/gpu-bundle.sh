#!/usr/bin/env bash
# Builds the GPU bundle: everything a machine with an NVIDIA GPU but no Rust toolchain and no
# network needs to measure this library, in one ignored folder (default .gpu-bundle/) that
# travels beside the working tree.
#
#   scripts/gpu-bundle.sh              # build the bundle
#   scripts/gpu-bundle.sh --dry-run    # build it, then run it here with no GPU (CI does)
#   scripts/gpu-bundle.sh --dir DIR    # another folder
#
# The bundle: gpu_report (examples/gpu_report, release, stripped: about 11 MB; The Tempest is
# inside it), run.sh (scripts/gpu-bundle/run.sh), the PyTorch twin of the transformer step
# (scripts/peers/charlm_step.py) and its text, Debian's libvulkan1 package for a machine
# without a Vulkan loader, and MANIFEST. On the GPU machine, from the repository root:
#
#   bash .gpu-bundle/run.sh            # results in $OUT (else .gpu-bundle/out)
#
# Checks, failing the script: the bundle and the tree that travels with it stay under
# ${GPU_BUNDLE_LIMIT_MIB:-64} MiB together; the binary needs no glibc newer than 2.39 (Ubuntu
# 24.04, the lent machines) and no shared library beyond glibc's and libgcc_s; a dry run
# writes every section of the report and at most 8 files.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=.gpu-bundle
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --dir)
            dir="$2"
            shift
            ;;
        -h | --help)
            sed -n '2,21p' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done
limit_mib="${GPU_BUNDLE_LIMIT_MIB:-64}"
max_glibc="2.39"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit+changes"
fi
echo "== cargo build --release --example gpu_report ($commit)"
MANYCHIPS_COMMIT="$commit" cargo build --release --example gpu_report

rm -rf "$dir"
mkdir -p "$dir/debs"
cp target/release/examples/gpu_report "$dir/gpu_report"
strip "$dir/gpu_report"
cp scripts/gpu-bundle/run.sh "$dir/run.sh"
cp scripts/peers/charlm_step.py "$dir/charlm_step.py"
cp data/tempest.txt "$dir/tempest.txt"
chmod +x "$dir/run.sh" "$dir/gpu_report"

# The Vulkan loader for a machine without one (the lent GPU machines may lack it).
if (cd "$dir/debs" && apt-get download -qq libvulkan1 >/dev/null 2>&1); then
    echo "== carried: $(ls "$dir/debs")"
else
    echo "== apt-get download libvulkan1 failed: the bundle relies on the GPU machine's Vulkan loader"
fi

echo "== checks"
glibc="$(objdump -T "$dir/gpu_report" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
if [ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -1)" != "$max_glibc" ]; then
    echo "gpu_report needs glibc $glibc, newer than the GPU machines' $max_glibc" >&2
    exit 1
fi
needed="$(objdump -p "$dir/gpu_report" | awk '/NEEDED/ {print $2}' | sort | tr '\n' ' ')"
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libm.so.6 | libgcc_s.so.1 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-x86-64.so.2) ;;
        *)
            echo "gpu_report links $lib, which the GPU machine may not have" >&2
            exit 1
            ;;
    esac
done
bundle_bytes="$(du -sb "$dir" | cut -f1)"
# What travels besides: tracked files and untracked ones that git does not ignore.
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}')"
total_mib=$(((bundle_bytes + tree_bytes) / 1048576))
{
    echo "manychips $commit gpu bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "gpu_report: $(stat -c %s "$dir/gpu_report") bytes, glibc >= $glibc, needs: $needed"
    echo "bundle: $bundle_bytes bytes; with the tree that travels: $total_mib MiB (limit $limit_mib MiB)"
    echo "run on the GPU machine, from the repository root: bash $dir/run.sh"
} >"$dir/MANIFEST"
cat "$dir/MANIFEST"
if [ "$total_mib" -ge "$limit_mib" ]; then
    echo "the bundle and the tree come to $total_mib MiB, over the $limit_mib MiB that may travel" >&2
    exit 1
fi

if [ "$dry_run" -eq 1 ]; then
    out="$(mktemp -d)"
    echo "== dry run into $out"
    # The whole kit on the software Vulkan devices too (about 5 s each on lavapipe), so its
    # code path runs as it will on the GPU.
    OUT="$out" bash "$dir/run.sh" --dry-run --kit-software full
    files=$(find "$out" -type f | wc -l)
    if [ "$files" -gt 8 ]; then
        echo "the run wrote $files files; at most 8 come back from the GPU machine" >&2
        exit 1
    fi
    for section in host libraries devices kit bench train split data_parallel; do
        if ! grep -q "\"$section\"" "$out/gpu-report.json"; then
            echo "the dry run's report has no \"$section\" section" >&2
            exit 1
        fi
    done
    if grep -Eq '"failed": [1-9]' "$out/gpu-report.json"; then
        echo "the conformance kit failed in the dry run:" >&2
        grep -A3 '"failures"' "$out/gpu-report.json" >&2
        exit 1
    fi
    if grep -q '"error"' "$out/gpu-report.json"; then
        echo "the dry run's report has an error:" >&2
        grep -n '"error"' "$out/gpu-report.json" >&2
        exit 1
    fi
    echo "== dry run ok: $files files, every section present, no error"
    rm -rf "$out"
fi
echo "== bundle ready in $dir/ (carry it: the device tool's carry [\"$dir\"])"
