"""Real torch.distributed runs for the distributed tests: N processes on the CPU with gloo.

``launch(world, out)`` starts ``python tests/distkit.py RANK WORLD PORT OUT`` N times and
waits. Each rank trains the same small models under DDP, FSDP2 and (with 4 ranks) HSDP with
a Sonifier, exactly as user code would, and writes what it saw to ``OUT/rank-R.json``:
collectives issued inside ``son.step()`` (counted by torch's CommDebugMode, which sees every
c10d collective dispatched on the calling thread), and on rank zero the norms gradmidi
handed its sinks next to a single-process reference run on the same global batch.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 8  # split evenly over 2 or 4 ranks
IN, WIDTH = 4, 8


def launch(world: int, out: Path, timeout: float = 120, script: str = __file__) -> list[dict]:
    """Runs ``script`` (this file, or another kit with the same command line) on ``world`` ranks."""
    sys.path.insert(0, str(Path(__file__).parent))
    from jackkit import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, script, str(rank), str(world), str(port), str(out)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=out)
             for rank in range(world)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{log}"
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(world)]


# -- inside each rank ------------------------------------------------------------------------

def mlp(depth: int):
    import torch.nn as nn

    layers = [nn.Linear(IN, WIDTH), nn.Tanh()]
    for _ in range(depth - 2):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    layers.append(nn.Linear(WIDTH, 2))
    return nn.Sequential(*layers)


def batch(step: int, micro: int = 0):
    import torch

    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(GLOBAL_BATCH, IN, generator=g), torch.randn(GLOBAL_BATCH, 2, generator=g)


def layer_norms(model) -> list[float]:
    """The reference: vector_norm of each layer's concatenated gradients, in one process."""
    import torch

    return [float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in m.parameters(recurse=False)])))
            for m in model if any(True for _ in m.parameters(recurse=False))]


def tolist(values) -> list:
    return [v if math.isfinite(v) else repr(v) for v in map(float, values)]


def run_scenario(name: str, rank: int, world: int, out: Path, *, depth: int, wrap: str, steps: int,
                 accumulate_at: int | None = None, sonifier_first: bool = False) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor.debug import CommDebugMode

    import gradmidi
    from gradmidi.sinks import Sink

    class Recorder(Sink):
        name = "recorder"

        def __init__(self):
            self.norms, self.events = [], []

        def emit(self, slot):
            self.norms.append(tolist(slot.norms))
            self.events += [[e.step, e.kind, list(e.voices)] for e in slot.events]

    torch.manual_seed(0)
    model = mlp(depth)
    reference = mlp(depth)
    reference.load_state_dict(model.state_dict())
    per_rank = GLOBAL_BATCH // world
    head_params = set(model[-1].parameters())
    recorder = Recorder()
    path = out / f"{name}-rank{rank}.mid"

    def make_sonifier(m):
        return gradmidi.Sonifier(m, path, sinks=[recorder], flush_interval=0.2)

    son = make_sonifier(model) if sonifier_first else None
    if wrap == "ddp":
        trained = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = (init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
                if wrap == "hsdp" else init_device_mesh("cpu", (world,)))
        for layer in model[:-1]:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        # The head stays a plain tensor on every rank (ignored by FSDP): averaged below, as a
        # user's own code must, so gradmidi must count it once, not world-size times.
        fully_shard(model, mesh=mesh, ignored_params=head_params)
        trained = model
    son = son or make_sonifier(trained)
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    collectives, references = [], []
    local = slice(rank * per_rank, (rank + 1) * per_rank)

    def sounded_step():
        with CommDebugMode() as comm:
            son.step()
        collectives.append(comm.get_total_counts())

    def backward(step, micro, poison=False):
        x, y = batch(step, micro)
        loss = torch.nn.functional.mse_loss(trained(x[local]), y[local])
        (loss * math.nan if poison else loss).backward()
        torch.nn.functional.mse_loss(reference(x), y).backward()

    for step in range(steps):
        opt.zero_grad()
        ref_opt.zero_grad()
        last = step == steps - 1
        if step == accumulate_at:  # a micro-step whose gradients are not synchronised: not sounded
            if wrap == "ddp":
                with trained.no_sync():
                    backward(step, 1)
                    sounded_step()
            else:
                trained.set_requires_gradient_sync(False)
                backward(step, 1)
                sounded_step()
                trained.set_requires_gradient_sync(True)
        # DDP: a NaN in rank one's loss reaches every rank through DDP's own all-reduce.
        backward(step, 0, poison=last and wrap == "ddp" and rank == 1)
        if wrap != "ddp":
            for p in head_params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
            if last and rank == 1:  # FSDP2: a NaN and an Inf in rank one's own shards
                trained[2].weight.grad._local_tensor.view(-1)[0] = math.nan
                trained[0].bias.grad._local_tensor.view(-1)[0] = math.inf
        sounded_step()
        references.append(layer_norms(reference))
        opt.step()
        ref_opt.step()
    son.close()
    result = {"collectives": collectives, "sounding": son.sounding, "unsynced_steps": son.unsynced_steps,
              "steps": son.steps}
    if rank == 0:
        result.update(norms=recorder.norms, events=recorder.events, reference=references,
                      voices=[v.name for v in son.voices])
    elif wrap != "ddp":
        result["poisoned_shards"] = [trained[2].weight.grad._local_tensor.numel(),
                                     trained[0].bias.grad._local_tensor.numel()]
    return result


def run_rank(scenarios: Callable[[int, int, Path], dict]) -> None:
    """Inside a rank that ``launch`` started: joins the gloo group, runs ``scenarios(rank, world, out)``
    and leaves its results, with the rank's wall time, in ``OUT/rank-R.json`` for the launcher."""
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    started = time.perf_counter()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = scenarios(rank, world, out)
    gc.collect()  # models and meshes in reference cycles hold process groups: free them while torch is alive
    dist.destroy_process_group()
    results["seconds"] = time.perf_counter() - started
    (out / f"rank-{rank}.json").write_text(json.dumps(results))


def scenarios(rank: int, world: int, out: Path) -> dict:
    results = {
        "ddp": run_scenario("ddp", rank, world, out, depth=3, wrap="ddp", steps=4, accumulate_at=1,
                            sonifier_first=True),
        "fsdp2": run_scenario("fsdp2", rank, world, out, depth=3, wrap="fsdp2", steps=4, accumulate_at=1),
    }
    if world == 2:  # the layer count changes nothing: one collective per step still
        results["fsdp2_deep"] = run_scenario("fsdp2_deep", rank, world, out, depth=10, wrap="fsdp2", steps=3,
                                             sonifier_first=True)
    else:  # a (replicate, shard) mesh: the norms are right only if just the shard dimension is reduced
        results["hsdp"] = run_scenario("hsdp", rank, world, out, depth=3, wrap="hsdp", steps=3)
    return results


if __name__ == "__main__":
    run_rank(scenarios)
