"""Per-step cost of gradmidi on the training loop, side by side in one run.

For each model: a plain training step; the same step with ``son.step()``; and the seed
experiment's way (a ``grad.norm().item()`` per layer), and ``clip_grad_norm_`` as the
anchor a user already pays. Configurations are interleaved in rounds so that machine
noise hits them alike. Prints median step times as ratios to the plain step.

    python benchmarks/bench_step.py [--steps 400] [--rounds 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn as nn

import gradmidi
from gradmidi.demo import SeedCNN


def models(device):
    yield "seed CNN, batch 10 (4 layers)", SeedCNN().to(device), torch.randn(10, 1, 28, 28, device=device)
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)) for _ in range(150)]).to(device)
    yield "MLP, 300 layers, batch 32", deep, torch.randn(32, 64, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, x, steps, hook, device, warmup=3) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + warmup):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        hook(loss)
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (fair against machine noise)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; {args.steps} steps per configuration, "
          f"interleaved over {args.rounds} rounds; medians")
    print(f"{'model':30} {'plain ms':>9} {'gradmidi':>9} {'clip_grad_norm_':>16} {'per-layer .item()':>18}")
    for name, model, x in models(device):
        layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
        son = gradmidi.Sonifier(model, None)
        hooks = {
            "plain": lambda loss: None,
            "gradmidi": lambda loss: son.step(loss=loss),
            # the anchor: what a user already pays to clip (one fused norm pass, no host read)
            "clip": lambda loss: torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9),
            # the seed experiment's way: one host read per layer
            "item": lambda loss: [p.grad.norm().item() for m in layers for p in m.parameters(recurse=False)],
        }
        times = {k: [] for k in hooks}
        for _ in range(args.rounds):
            for key, hook in hooks.items():
                times[key] += time_steps(model, x, max(1, args.steps // args.rounds), hook, device)
        son.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["plain"]
        print(f"{name:30} {base * 1e3:9.3f} {med['gradmidi'] / base:8.3f}x {med['clip'] / base:15.3f}x "
              f"{med['item'] / base:17.3f}x")


if __name__ == "__main__":
    main()
