#!/usr/bin/env bash
# The peer bench: manychips against PyTorch (eager) and numpy on the same work, on this
# machine's CPU, the contenders interleaved round by round (the order rotates), medians and
# ratios printed as a markdown table (ratio = peer's time ÷ manychips', above 1: faster).
#
#   scripts/peer-bench.sh                      # 5 rounds of ops, mlp and charlm
#   ROUNDS=9 WORK=ops scripts/peer-bench.sh    # the op table only
#
# Work: the op table of benches/cpu.rs plus LayerNorm (examples/peer_bench.rs against
# scripts/peers/bench.py), the MLP epoch of train_mlp, and the char transformer step of
# train_charlm (scripts/peers/charlm_step.py's model, the same as train::models::Gpt).
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
if ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "== pip install torch numpy (into $venv)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy
fi
echo "== cargo build --release --example peer_bench"
cargo build --release --example peer_bench

out=target/peer-bench
mkdir -p "$out"
rm -f "$out"/*.jsonl
numpy_work="$(echo "$work" | tr ',' '\n' | grep -v '^charlm$' | paste -sd, -)"
names=(manychips torch numpy)
commands=(
    "target/release/examples/peer_bench --work $work"
    "$venv/bin/python scripts/peers/bench.py --lib torch --threads $threads --work $work"
    "$venv/bin/python scripts/peers/bench.py --lib numpy --work $numpy_work"
)
for ((round = 0; round < rounds; round++)); do
    for ((k = 0; k < ${#names[@]}; k++)); do
        i=$(((round + k) % ${#names[@]}))
        [ "${names[$i]}" = numpy ] && [ -z "$numpy_work" ] && continue
        echo "== round $((round + 1))/$rounds: ${names[$i]}"
        MANYCHIPS_DEVICES=cpu ${commands[$i]} | tail -1 | tee -a "$out/${names[$i]}.jsonl"
    done
done
echo
"$venv/bin/python" scripts/peers/summarize.py "$out" | tee "$out/table.md"
