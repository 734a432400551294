#!/usr/bin/env python3
"""PyTorch twin of manychips' character transformer step (train::models::Gpt, AdamW).

The same model as `Gpt` (token and position embeddings, pre-LayerNorm blocks with causal
self-attention (qkv and proj with bias) and a 4x GELU-tanh MLP, a final LayerNorm, a head
without bias), the same loss (mean cross-entropy over every character), AdamW (weight decay
0.01) with the gradients clipped to norm 1.0, on random windows of The Tempest. Eager mode,
f32. Prints and writes (--json) the median milliseconds per step of each configuration,
every step synchronised, after a few warm-up steps.

    python3 scripts/peers/charlm_step.py --device cuda --json torch.json
    python3 scripts/peers/charlm_step.py --device cpu --threads 2 --config small

Configurations: `small` is `train_charlm`'s defaults (2 layers, dim 96, 4 heads, context 64,
batch 32); `large` is nanoGPT's shakespeare-char model (6 layers, dim 384, 6 heads, context
256, batch 64). examples/gpu_report/ runs the same two on manychips.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

CONFIGS = {
    "small": dict(layers=2, dim=96, heads=4, context=64, batch=32),
    "large": dict(layers=6, dim=384, heads=6, context=256, batch=64),
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(torch, vocab, layers, dim, heads, context):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            # The same arithmetic as manychips (scores, additive mask, softmax, weights @ v),
            # not a fused attention kernel.
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // heads))
            mask = torch.full((t, t), -1e9, device=x.device).triu(1)
            y = (scores + mask).softmax(-1) @ v
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    class Gpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

        def forward(self, ids):
            t = ids.shape[1]
            x = self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x)).view(-1, vocab)

    return Gpt()


def run(torch, device, name, config, text, steps, warmup):
    torch.manual_seed(0)
    vocab = int(text.max()) + 1
    model = build(torch, vocab, config["layers"], config["dim"], config["heads"],
                  config["context"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t, batch = config["context"], config["batch"]
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, losses = [], []
    for step in range(warmup + steps):
        starts = torch.randint(0, len(text) - t - 1, (batch,), generator=gen)
        x = torch.stack([text[s:s + t] for s in starts]).to(device)
        y = torch.stack([text[s + 1:s + t + 1] for s in starts]).to(device).view(-1)
        sync()
        began = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())  # reads back, as manychips' step report does
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - began)
    weights = sum(p.numel() for p in model.parameters())
    result = dict(config, weights=weights, steps=steps, ms_per_step=statistics.median(times) * 1e3,
                  loss_first=losses[0], loss_last=losses[-1])
    print(f"{name}: {result['ms_per_step']:.2f} ms/step ({weights} weights, loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f})", flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", choices=sorted(CONFIGS), action="append")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--text", default=os.path.join(ROOT, "data", "tempest.txt"),
                    help="the training text (default: the repository's data/tempest.txt)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is not installed")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("PyTorch sees no CUDA device")
    with open(args.text, encoding="utf-8") as f:
        chars = f.read()
    vocab = sorted(set(chars))
    index = {c: i for i, c in enumerate(vocab)}
    text = torch.tensor([index[c] for c in chars], dtype=torch.long)
    text = text[: len(text) * 9 // 10]
    out = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "configs": {},
    }
    for name in args.config or ["small", "large"]:
        out["configs"][name] = run(torch, device, name, CONFIGS[name], text, args.steps,
                                   args.warmup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
