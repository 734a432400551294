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
    for name in ("manychips", "torch", "numpy"):
        path = os.path.join(folder, f"{name}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                runs[name] = [json.loads(line) for line in f if line.strip()]
    items = sorted({k for rounds in runs.values() for r in rounds for k in r},
                   key=lambda k: (k.split("_")[0], int(k.split("_")[1]) if k.startswith("matmul") else 0, k))
    med = {name: {k: statistics.median([r[k] for r in rounds if k in r])
                  for k in items if any(k in r for r in rounds)}
           for name, rounds in runs.items()}
    rounds = min((len(r) for r in runs.values()), default=0)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
