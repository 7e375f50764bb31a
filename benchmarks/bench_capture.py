"""Capture cost per step, against the limit and what users would otherwise run.

On the same gradients (one backward pass, then each method timed many times, interleaved
over rounds so machine noise hits all alike; medians):

- limit: one ``torch._foreach_norm`` over every gradient, nothing else;
- gradmidi: ``NormCapture.launch`` (what ``son.step`` runs on the training thread: the fused
  norms, per-layer sums and the host copy), and the whole ``son.step`` (plus the queue hand-off);
- seed: the seed experiment's way, ``layer.weight.grad.norm()`` and a host copy per layer;
- per-parameter: the norms Lightning's ``grad_norm`` computes (``p.grad.norm()`` per
  parameter), stacked into one tensor; and Lightning's ``grad_norm`` itself, as shipped.

Then each as a share of a full plain training step, and ``every=k`` with ``aggregate="last"``
(one step in k captured) against ``every=1``.

    python benchmarks/bench_capture.py [--reps 300] [--rounds 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn as nn

import gradmidi
from gradmidi.capture import NormCapture, discover_layers
from gradmidi.demo import SeedCNN


class TinyTransformer(nn.Module):
    """A 12-block encoder: 152 parameter tensors of mixed shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        block = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, 12, enable_nested_tensor=False)
        self.head = nn.Linear(64, 256)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


def models(device):
    yield "seed CNN, batch 10", SeedCNN(), torch.randn(10, 1, 28, 28)
    yield "transformer, 12 blocks, batch 8x32", TinyTransformer(), torch.randint(0, 256, (8, 32))
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)) for _ in range(150)])
    yield "MLP, 300 layers, batch 32", deep, torch.randn(32, 64)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, device) -> list[float]:
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def train_step(model, x, opt):
    def step():
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=300, help="timed calls per method")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; {args.reps} calls per method over {args.rounds} "
          "interleaved rounds; medians in microseconds, ratios to the limit")
    header = (f"{'model':36} {'tensors':>7} {'limit us':>9} {'gradmidi':>9} {'son.step':>9} {'seed':>9} "
              f"{'per-param':>10} {'L grad_norm':>12} {'step ms':>8} {'capture/step':>13}")
    print(header)
    every_rows = []
    for name, model, x in models(device):
        model, x = model.to(device), x.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        plain = train_step(model, x, opt)
        plain()
        params = [p for p in model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        layers = [m for m in model.modules() if getattr(m, "weight", None) is not None
                  and isinstance(m.weight, torch.Tensor) and m.weight.grad is not None]
        capture = NormCapture(discover_layers(model))
        loss = torch.tensor(1.0, device=device)
        son = gradmidi.Sonifier(model, None)
        methods = {
            "limit": lambda: torch._foreach_norm(grads),
            "gradmidi": lambda: capture.launch(loss),
            "son.step": lambda: son.step(loss=loss),
            "seed": lambda: [m.weight.grad.norm().cpu().numpy() for m in layers],
            "per-param": lambda: torch.stack([p.grad.norm(2) for p in params]),
            "lightning": lambda: _lightning_grad_norm(model),
            "step": plain,
        }
        times = {k: [] for k in methods}
        for _ in range(args.rounds):
            for key, fn in methods.items():
                times[key] += timed(fn, max(1, args.reps // args.rounds) if key != "step" else 5, device)
        son.close()
        med = {k: statistics.median(v) for k, v in times.items() if v and v[0] is not None}
        limit = med["limit"]
        lightning = f"{med['lightning'] / limit:11.2f}x" if _has_lightning() else f"{'n/a':>12}"
        print(f"{name:36} {len(grads):7d} {limit * 1e6:9.1f} {med['gradmidi'] / limit:8.2f}x "
              f"{med['son.step'] / limit:8.2f}x {med['seed'] / limit:8.2f}x {med['per-param'] / limit:9.2f}x "
              f"{lightning} {med['step'] * 1e3:8.2f} {100 * med['gradmidi'] / med['step']:12.1f}%")
        every_rows.append((name, model, x, opt))
    print()
    print("# son.step per step over a run (the training thread's cost), every=k with aggregate='last' vs every=1")
    print(f"{'model':36} {'every=1 us':>11} {'every=4':>9} {'every=16':>9}")
    for name, model, x, opt in every_rows:
        loss = torch.tensor(1.0, device=device)
        costs = {}
        for k in (1, 4, 16):
            son = gradmidi.Sonifier(model, None, every=k, aggregate="last")
            samples = []
            for _ in range(args.rounds):
                samples += timed(lambda: son.step(loss=loss), 32 * max(1, args.reps // 100), device)
            son.close()
            costs[k] = statistics.mean(samples)  # a mean: the cheap steps and the captured one together
        print(f"{name:36} {costs[1] * 1e6:11.1f} {costs[4] / costs[1]:8.3f}x {costs[16] / costs[1]:8.3f}x")


def _has_lightning() -> bool:
    try:
        import lightning.pytorch.utilities  # noqa: F401
    except ImportError:
        return False
    return True


def _lightning_grad_norm(model):
    if not _has_lightning():
        return None
    from lightning.pytorch.utilities import grad_norm

    return grad_norm(model, 2)


if __name__ == "__main__":
    main()
