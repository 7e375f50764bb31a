"""Per-step cost of gradmidi's per-layer norms under DeepSpeed ZeRO (2 gloo ranks on the CPU), against
DeepSpeed's own global norm and against per-parameter ``safe_get_full_grad``.

After one backward pass (a gradient-accumulation boundary), each method runs on the same gradient
partitions, interleaved over rounds, on both ranks in step (each holds collectives):

- gradmidi, training thread: ``son.step()``'s capture launch (fused norms of this rank's
  partitions, per-layer sums, the asynchronous all-reduce), what the training loop pays;
- gradmidi, all of it: the launch and the wait for the all-reduce and the host read (on rank 0
  the worker thread does this part);
- DeepSpeed's global norm: what ``engine.step()`` computes for ``engine.get_global_grad_norm()``
  (one number for the whole model, one all-reduce);
- ``safe_get_full_grad`` per parameter: every parameter's full gradient gathered, then each
  layer's norm: the way to per-layer norms DeepSpeed offers (issue #4555).

A whole training step (forward, ``engine.backward``, ``engine.step``) is timed too, for scale.

    DS_ACCELERATOR=cpu python benchmarks/bench_deepspeed.py [--layers 12] [--width 256] [--reps 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--reps", type=int, default=40, help="calls per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    return parser.parse_args()


def main() -> None:
    """Starts itself on 2 ranks under torchrun."""
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "GRADMIDI_BENCH_RANK": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
               __file__, *sys.argv[1:]]
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    print("\n".join(line for line in done.stdout.splitlines() if not line.startswith(("[", "DeepSpeed "))))
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        sys.exit(done.returncode)


def rank_main(args: argparse.Namespace) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    if rank == 0:
        params = args.layers * (args.width * args.width + args.width)
        print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
              f"{torch.__version__}, DeepSpeed {deepspeed.__version__}, gloo, 2 ranks, 1 thread each; MLP "
              f"{args.layers} x Linear({args.width}) ({params / 1e6:.2f}M parameters), micro-batch {BATCH}; "
              f"{args.reps} calls per method over {args.rounds} interleaved rounds; medians in ms")
        print(f"{'ZeRO':>4}  {'train step':>10}  {'gradmidi launch':>15}  {'gradmidi all':>12}  "
              f"{'global norm':>11}  {'safe_get_full_grad':>18}  {'all / global':>12}  {'full_grad / all':>15}")
    for stage in args.stages:
        step, ms = bench_stage(stage, args, rank)
        if rank == 0:
            print(f"{stage:>4}  {step:>10.2f}  {ms['launch']:>15.3f}  {ms['all']:>12.3f}  {ms['global']:>11.3f}  "
                  f"{ms['full']:>18.3f}  {ms['all'] / ms['global']:>11.2f}x  {ms['full'] / ms['all']:>14.1f}x")
    dist.destroy_process_group()


def bench_stage(stage: int, args: argparse.Namespace, rank: int) -> tuple[float, dict[str, float]]:
    """(median training step, median of each method), in ms."""
    import deepspeed
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from deepspeed.utils import safe_get_full_grad

    import gradmidi

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(args.layers) for m in (nn.Linear(args.width, args.width), nn.Tanh())])
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1e-4),
                                      config=config)
    optimizer = engine.optimizer
    x = torch.randn(BATCH, args.width)

    def train_step():
        engine.backward(engine(x).pow(2).mean())
        engine.step()

    for _ in range(3):
        train_step()
    step_times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        train_step()
        step_times.append(time.perf_counter() - t0)
    engine.backward(engine(x).pow(2).mean())  # gradients for the methods below (no engine.step: they stay)

    son = gradmidi.Sonifier(engine, None)
    capture = son._capture  # what son.step() launches, timed without the hand-over to the worker thread
    layers = [layer.params for layer in son.layers]

    def launch_and_read():
        pending = capture.launch()
        if rank == 0:
            pending.result()
        else:
            pending.wait()

    def global_norm():  # what engine.step() computes for get_global_grad_norm()
        if stage == 3:
            return torch.linalg.vector_norm(torch.stack(optimizer._get_norm_groups()))
        return optimizer.scaled_global_norm()

    def full_grads():
        return torch.stack([sum(safe_get_full_grad(p).float().square().sum() for p in params)
                            for params in layers]).sqrt()

    times: dict[str, list[float]] = {"launch": [], "all": [], "global": [], "full": []}
    for _ in range(args.rounds):
        for key, method in (("launch", None), ("all", launch_and_read), ("global", global_norm),
                            ("full", full_grads)):
            for i in range(args.reps + 2):
                dist.barrier()
                t0 = time.perf_counter()
                if method is None:  # the launch alone; its all-reduce is waited for outside the timing
                    pending = capture.launch()
                    elapsed = time.perf_counter() - t0
                    pending.wait()
                else:
                    method()
                    elapsed = time.perf_counter() - t0
                if i >= 2:
                    times[key].append(elapsed)
    son.close()
    engine.destroy()
    return statistics.median(step_times) * 1e3, {k: statistics.median(v) * 1e3 for k, v in times.items()}


if __name__ == "__main__":
    if os.environ.get("GRADMIDI_BENCH_RANK"):
        rank_main(options())
    else:
        options()  # --help and bad options answered before any process starts
        main()
