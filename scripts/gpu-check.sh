#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the conformance kit on every backend that sees the card
# (CUDA, Vulkan, wgpu), the CUDA backend's own tests, and the CUDA benches.
#
#   scripts/gpu-check.sh                 # everything (the benches take a few minutes)
#   scripts/gpu-check.sh --no-bench      # the tests only
#   scripts/gpu-check.sh --offline       # cargo without network (vendored / pre-fetched deps)
#   scripts/gpu-check.sh --allow-no-gpu  # go on without nvidia-smi (to try the script itself)
#
# Needs: this repository, a Rust toolchain (rust-version in Cargo.toml), the NVIDIA driver
# (libcuda.so.1, nvidia-smi), and NVRTC 13 or 12: a CUDA toolkit, or the PyPI wheel
# `nvidia-cuda-nvrtc` / `nvidia-cuda-nvrtc-cu12` (a directory holding libnvrtc.so.1x and
# libnvrtc-builtins.so.* copied over is enough). cuBLAS (toolkit, or the `nvidia-cublas` /
# `nvidia-cublas-cu12` wheel) is optional: without it matmul runs on the backend's tiled
# kernel. The backend finds these itself in the usual places (backends/cuda/README.md); this
# script puts the directory it finds on LD_LIBRARY_PATH as well, and says which. Without a
# Rust toolchain on the GPU machine, use scripts/gpu-bundle.sh instead. For the Vulkan and wgpu runs, the
# Vulkan loader (libvulkan.so.1) and the NVIDIA ICD; without them those tests say what they
# skipped. Nothing is downloaded if cargo can build offline: fetch the dependencies first
# (`cargo fetch`, or `cargo vendor` plus the config it prints) on a machine with network, or
# carry a `target/` already built for this toolchain and pass --offline.
#
# Library directories are found in $MANYCHIPS_NVRTC_LIB_DIR / $MANYCHIPS_CUBLAS_LIB_DIR, then
# $CUDA_HOME, /usr/local/cuda, the venv .ci/run makes (${MANYCHIPS_NVRTC_VENV:-
# ~/.cache/manychips/nvrtc-venv}) and python3's site-packages, and put on LD_LIBRARY_PATH.
# Logs go to ${GPU_CHECK_OUT:-target/gpu-check}/.
set -euo pipefail
cd "$(dirname "$0")/.."

bench=1
allow_no_gpu=0
cargo_flags=(--release)
for arg in "$@"; do
    case "$arg" in
        --no-bench) bench=0 ;;
        --offline) cargo_flags+=(--offline) ;;
        --allow-no-gpu) allow_no_gpu=1 ;;
        -h | --help)
            sed -n "2,26p" "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

out="${GPU_CHECK_OUT:-target/gpu-check}"
mkdir -p "$out"
export CARGO_TERM_COLOR=never

echo "== nvidia-smi"
if ! nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"; then
    if [ "$allow_no_gpu" -eq 0 ]; then
        echo "nvidia-smi failed: no NVIDIA driver or GPU here (--allow-no-gpu to go on)" >&2
        exit 1
    fi
    echo "(going on without a GPU: CUDA tests and benches will report what they skipped)"
fi
nvidia-smi --query-gpu=name,uuid,pci.bus_id,driver_version,memory.total,compute_cap \
    --format=csv 2>/dev/null | tee -a "$out/nvidia-smi.txt" || true

# First directory of the candidates that holds `file`.
find_lib() {
    local file="$1"
    shift
    for dir in "$@"; do
        if [ -n "$dir" ] && [ -e "$dir/$file" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

site_dirs=()
venv="${MANYCHIPS_NVRTC_VENV:-$HOME/.cache/manychips/nvrtc-venv}"
for py in "$venv/bin/python" python3; do
    if command -v "$py" >/dev/null 2>&1; then
        while IFS= read -r d; do site_dirs+=("$d"); done < <(
            "$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
                2>/dev/null || true
        )
    fi
done
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
candidates() {
    local wheel="$1"
    echo "$cuda_home/lib64"
    echo "$cuda_home/targets/x86_64-linux/lib"
    echo "/usr/lib/x86_64-linux-gnu"
    for s in "${site_dirs[@]}"; do
        echo "$s/nvidia/cu13/lib"
        echo "$s/nvidia/$wheel/lib"
    done
}

mapfile -t nvrtc_dirs < <(echo "${MANYCHIPS_NVRTC_LIB_DIR:-}"; candidates cuda_nvrtc)
mapfile -t cublas_dirs < <(echo "${MANYCHIPS_CUBLAS_LIB_DIR:-}"; candidates cublas)
if nvrtc_dir="$(find_lib libnvrtc.so.13 "${nvrtc_dirs[@]}" || find_lib libnvrtc.so.12 "${nvrtc_dirs[@]}")"; then
    echo "== NVRTC: $nvrtc_dir"
    export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    echo "== NVRTC (libnvrtc.so.13 or .so.12) not found here: the CUDA backend looks for itself"
    echo "   (set MANYCHIPS_NVRTC_LIB_DIR, or install nvidia-cuda-nvrtc or nvidia-cuda-nvrtc-cu12)"
fi
if cublas_dir="$(find_lib libcublas.so.13 "${cublas_dirs[@]}" || find_lib libcublas.so.12 "${cublas_dirs[@]}")"; then
    echo "== cuBLAS: $cublas_dir"
    export LD_LIBRARY_PATH="$cublas_dir:$LD_LIBRARY_PATH"
else
    echo "== cuBLAS (libcublas.so.13 or .so.12) not found here: the CUDA backend looks for itself"
fi

status=0
run() {
    local name="$1"
    shift
    echo "== $*"
    if ! "$@" 2>&1 | tee "$out/$name.log"; then
        echo "FAILED: $* (log: $out/$name.log)"
        status=1
    fi
}

# The backend's own tests: the NVRTC compile check (real kernels, this NVRTC) and the
# emulator; then the kit on every device of every GPU backend.
run cuda-crate cargo test "${cargo_flags[@]}" -p manychips-cuda -- --nocapture
run conformance cargo test "${cargo_flags[@]}" --test cuda --test vulkan --test wgpu \
    -- --nocapture --test-threads 1
if [ "$bench" -eq 1 ]; then
    run bench cargo bench "${cargo_flags[@]:1}" --bench cuda
fi

echo "== logs in $out/"
if [ "$status" -ne 0 ]; then
    echo "gpu-check: FAILED"
    exit 1
fi
echo "gpu-check: ok"
