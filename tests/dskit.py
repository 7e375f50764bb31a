"""Real DeepSpeed ZeRO runs for tests/test_deepspeed.py: torchrun starts this file on N CPU ranks
(``DS_ACCELERATOR=cpu``, gloo), each training small models under ZeRO stages 1, 2 and 3 exactly
as user code would, with a Sonifier, and writing what it saw to ``OUT/rank-R.json``.

Per sounded step it records the collectives issued inside ``son.step()`` (torch's CommDebugMode
sees every c10d collective on the calling thread) and the size of each all-reduce gradmidi
started; per optimizer step, whether DeepSpeed skipped it (fp16 overflow) and its own global
norm. Rank zero adds the norms gradmidi handed its sinks, and two references: a single-process
fp32 run of the same model on the same global batch, and each layer's norm from DeepSpeed's own
full gradients (``safe_get_full_grad``, which gathers: called here only, after ``son.step()``).
Then the refusals, and the Transformers Trainer running ZeRO-3 with the callback (dskit_trainer.py).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from distkit import IN, mlp, tolist  # the same tiny model as the other distributed tests

ROOT = Path(__file__).resolve().parent.parent
MICRO_BATCH, ACCUMULATE = 4, 2
# (name, ZeRO stage, precision, depth, optimizer steps)
CONFIGS = [(f"zero{stage}_{precision}", stage, precision, 3, 5 if precision == "fp16" else 3)
           for stage in (1, 2, 3) for precision in ("fp32", "fp16", "bf16")]
CONFIGS += [(f"zero{stage}_deep", stage, "fp32", 10, 2) for stage in (2, 3)]
# bf16 weights, fp32 gradient accumulation: ZeRO-2 keeps each rank's partition in one flat fp32 buffer
CONFIGS += [("zero2_bf16_fp32_accumulation", 2, "bf16+fp32", 3, 3)]


def launch(world: int, out: Path, timeout: float = 600) -> list[dict]:
    """torchrun on ``world`` ranks; DeepSpeed's first run on a machine JIT-builds its CPU comm op
    (when a compiler is there)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from jackkit import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                           f"--master-port={free_port()}", __file__, str(out)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, cwd=out, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-6000:]}"
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(world)]


# -- inside each rank ------------------------------------------------------------------------

def batch(step: int, micro: int, world: int):
    """One micro-step's global batch (every rank's micro-batch together)."""
    import torch

    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(MICRO_BATCH * world, IN, generator=g), torch.randn(MICRO_BATCH * world, 2, generator=g)


def ds_config(stage: int, precision: str) -> dict:
    config = {"train_micro_batch_size_per_gpu": MICRO_BATCH, "gradient_accumulation_steps": ACCUMULATE,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    if precision == "fp16":  # a loss scale that overflows fp16 at the start: the first steps are skipped
        config["fp16"] = {"enabled": True, "initial_scale_power": 18, "hysteresis": 1, "loss_scale_window": 1000}
    elif precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
        if precision == "bf16+fp32":
            config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def run_config(name: str, stage: int, precision: str, depth: int, steps: int, rank: int, world: int,
               out: Path) -> dict:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad
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
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
             "bf16+fp32": torch.bfloat16}[precision]
    reference = mlp(depth)  # fp32, on the global batch, from the same (rounded) weights
    reference.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                      config=ds_config(stage, precision))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    recorder = Recorder()
    son = gradmidi.Sonifier(engine, out / f"{name}-rank{rank}.mid", sinks=[recorder], flush_interval=0.2)

    reduced_sizes: list[int] = []
    plain_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        reduced_sizes.append(tensor.numel())
        return plain_all_reduce(tensor, *args, **kwargs)

    collectives, sizes, skipped, global_norms, references, gathered = [], [], [], [], [], []
    local = slice(rank * MICRO_BATCH, (rank + 1) * MICRO_BATCH)
    layers = [m for m in engine.module if any(True for _ in m.parameters(recurse=False))]
    for step in range(steps):
        ref_opt.zero_grad()
        for micro in range(ACCUMULATE):
            x, y = batch(step, micro, world)
            loss = torch.nn.functional.mse_loss(engine(x[local].to(dtype)), y[local].to(dtype))
            engine.backward(loss)
            (torch.nn.functional.mse_loss(reference(x), y) / ACCUMULATE).backward()
            del reduced_sizes[:]
            dist.all_reduce = counting_all_reduce
            try:
                with CommDebugMode() as comm:
                    son.step(loss=loss)
            finally:
                dist.all_reduce = plain_all_reduce
            collectives.append(comm.get_total_counts())
            sizes.append(list(reduced_sizes))
            if micro == ACCUMULATE - 1:  # DeepSpeed's own full gradients (every rank must gather)
                scale = float(engine.optimizer.loss_scale)
                gathered.append(tolist(
                    float(torch.linalg.vector_norm(torch.cat([safe_get_full_grad(p).float().reshape(-1)
                                                              for p in m.parameters(recurse=False)]))) / scale
                    for m in layers))
            before = engine.skipped_steps
            engine.step()
        skipped.append(engine.skipped_steps > before)
        global_norms.append(float(engine.get_global_grad_norm()))
        references.append([float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1)
                                                                     for p in m.parameters(recurse=False)])))
                           for m in reference if any(True for _ in m.parameters(recurse=False))])
        if not skipped[-1]:
            ref_opt.step()
    son.close()
    result = {"collectives": collectives, "reduced_sizes": sizes, "sounding": son.sounding,
              "unsynced_steps": son.unsynced_steps, "steps": son.steps, "skipped": skipped,
              "global_norms": tolist(global_norms), "layers": len(layers)}
    if rank == 0:
        result.update(norms=recorder.norms, events=recorder.events, reference=references, gathered=gathered,
                      voices=[v.name for v in son.voices])
    engine.destroy()
    return result


def refusals() -> dict[str, str]:
    """What gradmidi cannot read is refused when the Sonifier is made, in one line (GradmidiError)."""
    import deepspeed
    import torch

    import gradmidi
    from gradmidi.errors import GradmidiError

    said = {}
    for name, extra in (("stage0", {"zero_optimization": {"stage": 0}}),
                        ("offload", {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                                     "zero_force_ds_cpu_optimizer": False}),
                        ("unmanaged", {"managed_gradient_accumulation": False})):
        model = mlp(3)
        config = {**ds_config(2, "fp32"), **extra}
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                          config=config)
        try:
            gradmidi.Sonifier(engine, None).close()
            said[name] = "accepted"
        except GradmidiError as exc:
            said[name] = str(exc)
        engine.destroy()
    return said


def main() -> None:
    out = Path(sys.argv[1])
    import deepspeed
    import torch

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: run_config(name, stage, precision, depth, steps, rank, world, out)
               for name, stage, precision, depth, steps in CONFIGS}
    results["refusals"] = refusals()
    from dskit_trainer import run_trainer  # the Transformers Trainer last: its import is the slowest

    results["trainer_zero3"] = run_trainer(out, 3, rank)
    gc.collect()
    dist.destroy_process_group()
    (out / f"rank-{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
