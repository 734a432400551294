#!/usr/bin/env bash
# The peer bench: manychips against PyTorch (eager) and numpy on the same work, on this
# machine's CPU, the contenders interleaved round by round (the order rotates), medians and
# ratios printed as a markdown table (ratio = peer's time ÷ manychips', above 1: faster).
#
#   scripts/peer-bench.sh                      # 5 rounds of ops, mlp and charlm
#   ROUNDS=9 WORK=ops scripts/peer-bench.sh    # the op table only
#   WORK=gpu scripts/peer-bench.sh             # WGSL kernels on wgpu and Vulkan against burn
#
# Work: the op table of benches/cpu.rs plus LayerNorm (examples/peer_bench.rs against
# scripts/peers/bench.py), the MLP epoch of train_mlp, and the char transformer step of
# train_charlm (scripts/peers/charlm_step.py's model, the same as train::models::Gpt).
# WORK=gpu (not in the default): add, softmax and matmul on every wgpu and Vulkan device
# found, against burn 0.22 with its wgpu backend (scripts/peers/burn, built on first use).
# PyTorch and numpy come from PyPI into ${MANYCHIPS_PEERS_VENV:-~/.cache/manychips/peers-venv}
# (PyPI's Linux torch wheel brings CUDA libraries: about 5 GB; only its CPU side runs here).
# Threads: every contender uses all cores (torch.set_num_threads(nproc), numpy's BLAS by
# default, the CPU device's pool). Not in CI: it takes minutes. Rounds land in
# target/peer-bench/*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-5}"
work="${WORK:-ops,mlp,charlm}"
threads="$(nproc)"
venv="${MANYCHIPS_PEERS_VENV:-$HOME/.cache/manychips/peers-venv}"
echo "== cargo build --release --example peer_bench"
cargo build --release --example peer_bench

out=target/peer-bench
mkdir -p "$out"
rm -f "$out"/*.jsonl
only() { echo "$work" | tr ',' '\n' | grep -x -E "$1" | paste -sd, - || true; }
torch_work="$(only 'ops|mlp|charlm')"
numpy_work="$(only 'ops|mlp')"
burn_work="$(only 'gpu')"
names=(manychips torch numpy burn)
commands=(
    "target/release/examples/peer_bench --work $work"
    "$venv/bin/python scripts/peers/bench.py --lib torch --threads $threads --work $torch_work"
    "$venv/bin/python scripts/peers/bench.py --lib numpy --work $numpy_work"
    "scripts/peers/burn/target/release/burn-peer"
)
works=("$work" "$torch_work" "$numpy_work" "$burn_work")
if [ -n "$torch_work$numpy_work" ]; then
    if ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
        echo "== pip install torch numpy (into $venv)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q torch numpy
    fi
fi
if [ -n "$burn_work" ]; then
    echo "== cargo build --release (scripts/peers/burn: burn with its wgpu backend)"
    cargo build --release --manifest-path scripts/peers/burn/Cargo.toml
fi
for ((round = 0; round < rounds; round++)); do
    for ((k = 0; k < ${#names[@]}; k++)); do
        i=$(((round + k) % ${#names[@]}))
        [ -z "${works[$i]}" ] && continue
        echo "== round $((round + 1))/$rounds: ${names[$i]}"
        MANYCHIPS_DEVICES=cpu ${commands[$i]} | tail -1 | tee -a "$out/${names[$i]}.jsonl"
    done
done
echo
python3 scripts/peers/summarize.py "$out" | tee "$out/table.md"
