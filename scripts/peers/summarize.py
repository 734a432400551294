#!/usr/bin/env python3
"""Medians and ratios of the peer bench's rounds: one JSONL file per contender in a folder
(each line one round's {item: ms}), printed as a markdown table. Ratio = peer's time ÷
manychips' time (above 1: manychips faster)."""

import json
import os
import statistics
import sys


def main():
    folder = sys.argv[1]
    runs = {}
    for name in ("manychips", "torch", "numpy", "burn"):
        path = os.path.join(folder, f"{name}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                runs[name] = [json.loads(line) for line in f if line.strip()]
    items = sorted({k for name, rounds in runs.items() if name != "burn"
                    for r in rounds for k in r if "@" not in k},
                   key=lambda k: (k.split("_")[0], int(k.split("_")[1]) if k.startswith("matmul") else 0, k))
    med = {name: {k: statistics.median([r[k] for r in rounds if k in r])
                  for k in items if any(k in r for r in rounds)}
           for name, rounds in runs.items()}
    rounds = min((len(r) for r in runs.values()), default=0)
    if not items:
        print(f"{rounds} rounds")
        gpu_table(runs)
        return 0
    print(f"{rounds} rounds, medians in ms; ratio = peer time / manychips time (above 1: manychips faster)\n")
    print("| work | manychips | PyTorch | numpy | vs PyTorch | vs numpy |")
    print("|---|---|---|---|---|---|")
    ours = med.get("manychips", {})
    for k in items:
        cells = [f"{med[n][k]:.3f}" if k in med.get(n, {}) else "–"
                 for n in ("manychips", "torch", "numpy")]
        ratios = [f"**{med[n][k] / ours[k]:.2f}**" if k in ours and k in med.get(n, {}) else "–"
                  for n in ("torch", "numpy")]
        print(f"| {k} | " + " | ".join(cells + ratios) + " |")
    gpu_table(runs)
    return 0


def gpu_table(runs):
    """The `op@device` items against burn's `op`, one column per device."""
    ours = {}
    for r in runs.get("manychips", []):
        for k, ms in r.items():
            if "@" in k:
                ours.setdefault(k, []).append(ms)
    if not ours:
        return
    burn = {}
    for r in runs.get("burn", []):
        for k, ms in r.items():
            burn.setdefault(k, []).append(ms)
    devices = sorted({k.split("@")[1] for k in ours})
    ops = sorted({k.split("@")[0] for k in ours})
    print("\nGPU kernels, medians in ms; ratio = burn-wgpu time / manychips time (above 1: manychips faster)\n")
    print("| op | " + " | ".join(devices) + " | burn-wgpu | " + " | ".join(f"{d} vs burn" for d in devices) + " |")
    print("|---" * (2 + 2 * len(devices)) + "|")
    for op in ops:
        peer = burn.get(op) or burn.get(op.rsplit("_", 1)[0])
        peer_ms = statistics.median(peer) if peer else None
        mine = [statistics.median(ours[f"{op}@{d}"]) if f"{op}@{d}" in ours else None for d in devices]
        cells = [f"{m:.3f}" if m else "–" for m in mine]
        ratios = [f"**{peer_ms / m:.2f}**" if m and peer_ms else "–" for m in mine]
        peer_cell = f"{peer_ms:.3f}" if peer_ms else "–"
        print(f"| {op} | " + " | ".join(cells + [peer_cell] + ratios) + " |")


if __name__ == "__main__":
    sys.exit(main())
