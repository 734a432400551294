#!/usr/bin/env python3
"""The peers' side of scripts/peer-bench.sh: PyTorch (eager) or numpy on the same work as
examples/peer_bench.rs, printed as one JSON object of milliseconds per item (median).

    python3 scripts/peers/bench.py --lib torch --threads 2 --work ops,mlp,charlm
    python3 scripts/peers/bench.py --lib numpy --work ops,mlp

Items as in examples/peer_bench.rs: matmul_256 … matmul_2048, add_4M, exp_4M,
softmax_4096x1024, layernorm_4096x1024, mlp_epoch (64-128-10 ReLU MLP, softmax
cross-entropy, AdamW, batch 64, 1438 rows), charlm_step (PyTorch only: charlm_step.py's
small shape). Every item allocates its output, as manychips' ops do.
"""

import argparse
import json
import os
import statistics
import sys
import time


def median_ms(reps, f):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ops_torch(torch, reps):
    out = {}
    g = torch.Generator().manual_seed(0)
    for n in (256, 512, 1024, 2048):
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out[f"matmul_{n}"] = median_ms(reps, lambda: a @ b)
    x, y = torch.randn(4 << 20, generator=g), torch.randn(4 << 20, generator=g)
    out["add_4M"] = median_ms(reps, lambda: x + y)
    out["exp_4M"] = median_ms(reps, lambda: x.exp())
    rows = torch.randn(4096, 1024, generator=g)
    out["softmax_4096x1024"] = median_ms(reps, lambda: rows.softmax(1))
    w, bias = torch.ones(1024), torch.zeros(1024)
    out["layernorm_4096x1024"] = median_ms(
        reps, lambda: torch.nn.functional.layer_norm(rows, (1024,), w, bias, 1e-5))
    return out


def ops_numpy(np, reps):
    out = {}
    rng = np.random.default_rng(0)
    for n in (256, 512, 1024, 2048):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out[f"matmul_{n}"] = median_ms(reps, lambda: a @ b)
    x = rng.standard_normal(4 << 20, dtype=np.float32)
    y = rng.standard_normal(4 << 20, dtype=np.float32)
    out["add_4M"] = median_ms(reps, lambda: x + y)
    out["exp_4M"] = median_ms(reps, lambda: np.exp(x))
    rows = rng.standard_normal((4096, 1024), dtype=np.float32)

    def softmax():
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def layernorm():
        mean = rows.mean(axis=1, keepdims=True)
        centred = rows - mean
        var = (centred * centred).mean(axis=1, keepdims=True)
        return centred / np.sqrt(var + 1e-5) * np.float32(1) + np.float32(0)

    out["softmax_4096x1024"] = median_ms(reps, softmax)
    out["layernorm_4096x1024"] = median_ms(reps, layernorm)
    return out


ROWS, BATCH = 1438, 64


def digits_like(np):
    i = np.arange(ROWS * 64)
    x = (((i * 7919) % 17) / 16.0).astype(np.float32).reshape(ROWS, 64)
    y = (np.arange(ROWS) % 10).astype(np.int64)
    return x, y


def mlp_torch(torch, np, reps):
    x, y = digits_like(np)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def epoch():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for first in range(0, ROWS, BATCH):
            xs, ys = x[first:first + BATCH], y[first:first + BATCH]
            loss = torch.nn.functional.cross_entropy(model(xs), ys)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()

    return median_ms(min(reps, 5), epoch)


def mlp_numpy(np, reps):
    x, y = digits_like(np)

    def epoch():
        rng = np.random.default_rng(0)
        params = [
            (rng.standard_normal((64, 128)) * (1 / 8)).astype(np.float32),
            np.zeros(128, np.float32),
            (rng.standard_normal((128, 10)) * (1 / 128 ** 0.5)).astype(np.float32),
            np.zeros(10, np.float32),
        ]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.01
        for step, first in enumerate(range(0, ROWS, BATCH), start=1):
            xs, ys = x[first:first + BATCH], y[first:first + BATCH]
            w1, c1, w2, c2 = params
            h = xs @ w1 + c1
            a = np.maximum(h, 0)
            logits = a @ w2 + c2
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            _loss = -np.log(p[np.arange(len(ys)), ys]).mean()
            d = p
            d[np.arange(len(ys)), ys] -= 1
            d /= len(ys)
            grads = [None, None, a.T @ d, d.sum(axis=0)]
            da = d @ w2.T
            dh = da * (h > 0)
            grads[0], grads[1] = xs.T @ dh, dh.sum(axis=0)
            for i, (param, grad) in enumerate(zip(params, grads)):
                m[i] = b1 * m[i] + (1 - b1) * grad
                v[i] = b2 * v[i] + (1 - b2) * grad * grad
                mhat = m[i] / (1 - b1 ** step)
                vhat = v[i] / (1 - b2 ** step)
                param *= 1 - lr * wd
                param -= lr * mhat / (np.sqrt(vhat) + eps)

    return median_ms(min(reps, 5), epoch)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", choices=["torch", "numpy"], required=True)
    ap.add_argument("--work", default="ops,mlp,charlm")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = ap.parse_args()
    import numpy as np
    out = {}
    work = [w.strip() for w in args.work.split(",") if w.strip()]
    if args.lib == "torch":
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        if "ops" in work:
            out.update(ops_torch(torch, args.reps))
        torch.set_grad_enabled(True)
        if "mlp" in work:
            out["mlp_epoch"] = mlp_torch(torch, np, args.reps)
        if "charlm" in work:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import charlm_step
            text_path = os.path.join(charlm_step.ROOT, "data", "tempest.txt")
            with open(text_path, encoding="utf-8") as f:
                chars = f.read()
            index = {c: i for i, c in enumerate(sorted(set(chars)))}
            text = torch.tensor([index[c] for c in chars], dtype=torch.long)
            text = text[: len(text) * 9 // 10]
            result = charlm_step.run(torch, torch.device("cpu"), "small",
                                     charlm_step.CONFIGS["small"], text, 20, 3)
            out["charlm_step"] = result["ms_per_step"]
    else:
        if "ops" in work:
            out.update(ops_numpy(np, args.reps))
        if "mlp" in work:
            out["mlp_epoch"] = mlp_numpy(np, args.reps)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
