"""Per-step cost of gradmidi on the training loop, side by side in one run.

For each model: a plain training step; the same step with ``son.step()`` writing a .mid file;
the same with ``every=8, aggregate="last"``; ``clip_grad_norm_`` as the anchor a user already
pays; and the seed experiment's way (a ``grad.norm().item()`` per layer). Configurations are
interleaved in rounds so that machine noise hits them alike. Prints median step times as
ratios to the plain step, the time each adds to it, and gradmidi's worker CPU per step (the
worker thread's own CPU clock over a further uninterrupted run of steps).

    python benchmarks/bench_step.py [--steps 400] [--rounds 10] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import gradmidi
from gradmidi.demo import SeedCNN
from gradmidi.session import BATCH_SECONDS

WARMUP = 3  # steps per round before the timed ones


def models(device):
    small = nn.Sequential(*[m for _ in range(16) for m in (nn.Linear(16, 16), nn.Tanh())]).to(device)
    yield "16 x Linear(16), batch 8", small, torch.randn(8, 16, device=device)
    yield "seed CNN, batch 10 (4 layers)", SeedCNN().to(device), torch.randn(10, 1, 28, 28, device=device)
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)) for _ in range(150)]).to(device)
    yield "MLP, 300 layers, batch 32", deep, torch.randn(32, 64, device=device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, x, steps, hook, device, warmup=WARMUP) -> list[float]:
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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: what a GPU loop's Python sees)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; {args.steps} steps per configuration, "
          f"interleaved over {args.rounds} rounds; medians. 'adds': the time added to the plain step; "
          f"'worker': the worker thread's CPU per step")
    print(f"{'model':30} {'plain ms':>9} {'gradmidi':>9} {'adds us':>8} {'every=8':>8} {'adds us':>8} "
          f"{'clip_grad_norm_':>16} {'adds us':>8} {'per-layer .item()':>18} {'worker us':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for name, model, x in models(device):
            layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
            son = gradmidi.Sonifier(model, Path(folder) / "every1.mid")
            sparse = gradmidi.Sonifier(model, Path(folder) / "every8.mid", every=8, aggregate="last")
            hooks = {
                "plain": lambda loss: None,
                "gradmidi": lambda loss, son=son: son.step(loss=loss),
                "every8": lambda loss, son=sparse: son.step(loss=loss),
                # the anchor: what a user already pays to clip (one fused norm pass, no host read)
                "clip": lambda loss, model=model: torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9),
                # the seed experiment's way: one host read per layer
                "item": lambda loss, layers=layers: [p.grad.norm().item() for m in layers
                                                     for p in m.parameters(recurse=False)],
            }
            times: dict[str, list[float]] = {k: [] for k in hooks}
            worker_clock = time.pthread_getcpuclockid(son._session._worker.ident)
            for _ in range(args.rounds):
                for key, hook in hooks.items():
                    took = time_steps(model, x, max(1, args.steps // args.rounds), hook, device)
                    times[key] += took
            # The worker's CPU, on its own thread's clock, over one uninterrupted run of steps (interleaved,
            # its batches would fall in other configurations' steps).
            time.sleep(2 * BATCH_SECONDS)
            before = time.clock_gettime(worker_clock)
            time_steps(model, x, args.steps, hooks["gradmidi"], device)
            time.sleep(2 * BATCH_SECONDS)  # the last batch built
            worker = (time.clock_gettime(worker_clock) - before) / (args.steps + WARMUP) * 1e6
            son.close()
            sparse.close()
            med = {k: statistics.median(v) for k, v in times.items()}
            base = med["plain"]
            adds = {k: (med[k] - base) * 1e6 for k in med}
            print(f"{name:30} {base * 1e3:9.3f} {med['gradmidi'] / base:8.3f}x {adds['gradmidi']:8.0f} "
                  f"{med['every8'] / base:7.3f}x {adds['every8']:8.0f} {med['clip'] / base:15.3f}x "
                  f"{adds['clip']:8.0f} {med['item'] / base:17.3f}x {worker:10.1f}")


if __name__ == "__main__":
    main()
