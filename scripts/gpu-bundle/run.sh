#!/usr/bin/env bash
# Runs the GPU report from a bundle that scripts/gpu-bundle.sh made: on a machine with an
# NVIDIA GPU and no Rust toolchain or network. Copied into the bundle as run.sh.
#
#   bash .gpu-bundle/run.sh                 # results in $OUT, else .gpu-bundle/out
#   bash .gpu-bundle/run.sh --dry-run       # no GPU expected (what CI runs)
#
# Arguments go to gpu_report (`gpu_report --help`). What lands in the results folder, five
# files: gpu-report.json and gpu-report.txt (the report), torch.json (the PyTorch twin's
# step times), nvidia-smi.txt and run.log (everything printed).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/out}"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1

dry_run=0
for arg in "$@"; do
    [ "$arg" = "--dry-run" ] && dry_run=1
done

echo "== bundle: $(cat "$here/MANIFEST" 2>/dev/null | head -1)"
echo "== nvidia-smi"
if nvidia-smi >"$out/nvidia-smi.txt" 2>&1; then
    nvidia-smi --query-gpu=name,uuid,pci.bus_id,driver_version,memory.total,compute_cap,clocks.max.sm \
        --format=csv >>"$out/nvidia-smi.txt" 2>&1
    head -20 "$out/nvidia-smi.txt"
else
    echo "no nvidia-smi here: $(head -1 "$out/nvidia-smi.txt")"
fi

# The Vulkan loader, when the machine has none: the bundle carries Debian's libvulkan1,
# unpacked beside the bundle (never into /). The NVIDIA ICD is the driver's own.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 '; then
    for deb in "$here"/debs/*.deb; do
        [ -e "$deb" ] && dpkg-deb -x "$deb" "$here/root" 2>/dev/null
    done
    loader="$(find "$here/root" -name 'libvulkan.so.1' -printf '%h\n' 2>/dev/null | head -1)"
    if [ -n "$loader" ]; then
        echo "== Vulkan loader from the bundle: $loader"
        export LD_LIBRARY_PATH="$loader${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "== no Vulkan loader here or in the bundle: Vulkan and wgpu will say so"
    fi
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -e "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
        echo "== Vulkan ICD: $icd"
        export VK_DRIVER_FILES="$icd"
        break
    fi
done
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -e "$nvidia_egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$nvidia_egl"

# Calibration and kernel caches of this run only (the results folder holds eight files).
export MANYCHIPS_CACHE_DIR="${MANYCHIPS_CACHE_DIR:-$(mktemp -d)}"

torch=()
if [ "$dry_run" -eq 1 ]; then
    echo "== PyTorch twin: skipped in a dry run"
elif command -v python3 >/dev/null && python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "== PyTorch twin on cuda"
    if PYTHONUNBUFFERED=1 timeout 150 python3 "$here/charlm_step.py" --device cuda \
        --text "$here/tempest.txt" --json "$out/torch.json"; then
        torch=(--torch "$out/torch.json")
    else
        echo "the PyTorch twin failed: the report has no ratio against PyTorch"
    fi
else
    echo "== PyTorch twin: skipped, python3 has no PyTorch with CUDA here"
fi

echo "== gpu_report"
timeout 420 "$here/gpu_report" --out "$out" "${torch[@]}" "$@"
status=$?
[ "$status" -eq 124 ] && echo "gpu_report ran past 420 s and was stopped (the report keeps the sections done)"
echo "== results in $out: $(ls "$out" | tr '\n' ' ')"
exit "$status"
