"""Per-step cost of gradmidi under torch.distributed (2 gloo ranks on the CPU) against the same
ranks without it, and against one process, side by side in one run.

First one process trains the model on the global batch, with and without ``son.step()``; then
2 ranks (spawned) train it under DDP and under FSDP2 on half the batch each, with and without.
Plain and gradmidi steps are interleaved in rounds so machine noise hits them alike; every
process uses one thread. Prints median step times (rank zero's) and gradmidi's ratio.

    python benchmarks/bench_distributed.py [--steps 200] [--rounds 5] [--layers 12] [--width 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import gradmidi

GLOBAL_BATCH = 64


def mlp(layers: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.Tanh())])


def time_rounds(model, x, args, son) -> dict[str, float]:
    """Median step time, plain and with son.step(), interleaved over rounds."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = {"plain": [], "gradmidi": []}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for key in times:
            for i in range(per_round + 3):
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                if key == "gradmidi":
                    son.step(loss=loss)
                opt.step()
                if i >= 3:  # warm-up steps after each switch
                    times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def single_process(args) -> dict[str, float]:
    model = mlp(args.layers, args.width)
    x = torch.randn(GLOBAL_BATCH, args.width)
    with gradmidi.Sonifier(model, None) as son:
        return time_rounds(model, x, args, son)


def rank_main(rank: int, world: int, port: int, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.randn(GLOBAL_BATCH // world, args.width)
    for wrap in ("DDP", "FSDP2"):
        model = mlp(args.layers, args.width)
        if wrap == "DDP":
            trained = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            trained = fully_shard(model)
        with gradmidi.Sonifier(trained, None) as son:
            medians = time_rounds(trained, x, args, son)
        if rank == 0:
            results[wrap] = medians
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (fair against machine noise)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = 2
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
          f"{torch.__version__}, gloo, 1 thread per process; MLP {args.layers} x Linear({args.width}), global "
          f"batch {GLOBAL_BATCH}; {args.steps} steps per configuration over {args.rounds} rounds; medians")
    rows = {"1 process": single_process(args)}
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(world, free_port(), args, results), nprocs=world, join=True)
        rows.update({f"{world} ranks, {k}": v for k, v in results.items()})
    single = rows["1 process"]["gradmidi"] - rows["1 process"]["plain"]
    print(f"{'setup':18} {'plain ms':>9} {'gradmidi ms':>12} {'ratio':>7} {'added ms':>9} {'added vs 1 process':>19}")
    for name, med in rows.items():
        added = med["gradmidi"] - med["plain"]
        print(f"{name:18} {med['plain'] * 1e3:9.3f} {med['gradmidi'] * 1e3:12.3f} {med['gradmidi'] / med['plain']:6.3f}x "
              f"{added * 1e3:9.3f} {added / single if single > 0 else float('nan'):18.2f}x")


if __name__ == "__main__":
    main()
