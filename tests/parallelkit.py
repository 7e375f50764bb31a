"""Real tensor- and pipeline-parallel runs: N gloo processes on the CPU (see distkit.py).

``launch(out)`` starts ``python tests/parallelkit.py RANK 4 PORT OUT`` on 4 ranks: FSDP2 + tensor
parallelism on a (dp=2, tp=2) mesh, torchtitan's way (``parallelize_module`` with column- and
row-wise plans and sequence-parallel norms, then ``fully_shard`` over dp), and HSDP + tensor
parallelism on a (replicate=1, dp=2, tp=2) mesh; tensor parallelism
alone over 4 ranks (its sequence-parallel norms have Partial gradients); a 2-stage pipeline
whose stages are sharded over dp=2; two plain 2-stage pipelines side by side. Each rank
writes what gradmidi saw to ``OUT/rank-R.json``: the collectives ``son.step()`` issued (torch's
CommDebugMode) and, on rank zero, the norms and losses handed to its sinks next to a
single-process run of the same model on the same global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

GLOBAL_BATCH, SEQ, DIM, HEADS, OUT = 4, 4, 8, 4, 4
STEPS = 3


WORLD = 4


def launch(out: Path, timeout: float = 180) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    from distkit import launch as launch_ranks

    return launch_ranks(WORLD, out, timeout, script=__file__)


# -- inside each rank ------------------------------------------------------------------------

def transformer_block():
    """Attention and a feed-forward, each behind a LayerNorm, then a norm and an output head."""
    import torch
    import torch.nn as nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM) for _ in range(4))

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (w(x).view(b, t, -1, DIM // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
            mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.wo(mixed.transpose(1, 2).reshape(b, t, -1))  # -1: this rank's heads under TP

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_norm, self.attention = nn.LayerNorm(DIM), Attention()
            self.ffn_norm, self.w1, self.w2 = nn.LayerNorm(DIM), nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
            self.norm, self.output = nn.LayerNorm(DIM), nn.Linear(DIM, OUT)

        def forward(self, x):
            h = x + self.attention(self.attention_norm(x))
            h = h + self.w2(torch.tanh(self.w1(self.ffn_norm(h))))
            return self.output(self.norm(h))

    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():  # LayerNorm starts at weight 1, bias 0: make every norm layer's gradient its own
        for norm in (block.attention_norm, block.ffn_norm, block.norm):
            norm.weight.add_(torch.randn(DIM) * 0.3)
            norm.bias.add_(torch.randn(DIM) * 0.3)
    return block


def tensor_parallel(block, tp_mesh):
    """torchtitan's plan: sequence-parallel norms, column-wise in, row-wise out."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)

    return parallelize_module(block, tp_mesh, {
        "attention_norm": SequenceParallel(),
        "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "w1": ColwiseParallel(input_layouts=Shard(1)),
        "w2": RowwiseParallel(output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })


def stack():
    """An MLP whose layers a pipeline can cut by name (torchtitan's way: a ModuleDict, ends may be None)."""
    import torch
    import torch.nn as nn

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(DIM, DIM)
            self.layers = nn.ModuleDict({str(i): nn.Linear(DIM, DIM) for i in range(4)})
            self.out = nn.Linear(DIM, OUT)

        def forward(self, x):
            x = torch.tanh(self.inp(x)) if self.inp is not None else x
            for layer in self.layers.values():
                x = torch.tanh(layer(x))
            return self.out(x) if self.out is not None else x

    torch.manual_seed(0)
    return Stack()


def batch(step: int):
    import torch

    g = torch.Generator().manual_seed(step)
    return torch.randn(GLOBAL_BATCH, SEQ, DIM, generator=g), torch.randn(GLOBAL_BATCH, SEQ, OUT, generator=g)


def layer_norms(model) -> list[float]:
    """The reference: each layer's norm over all its own parameters' gradients, in one process."""
    import torch

    return [float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
            for params in ([*m.parameters(recurse=False)] for m in model.modules()) if params]


def recorder():
    """A sink keeping what rank zero sounded."""
    from gradmidi.sinks import Sink

    class Recording(Sink):
        name = "recorder"

        def __init__(self):
            self.norms, self.losses = [], []

        def emit(self, slot):
            self.norms.append([float(v) for v in slot.norms])
            self.losses.append(slot.loss)

    return Recording()


def sounded_step(son, collectives: list, loss=None) -> None:
    from torch.distributed.tensor.debug import CommDebugMode

    with CommDebugMode() as comm:
        son.step(loss=loss)
    collectives.append(comm.get_total_counts())


def finish(son, rec, collectives, references, losses, rank, **extra) -> dict:
    son.close()
    result = {"collectives": collectives, "steps": son.steps, **extra}
    if rank == 0:
        result.update(norms=rec.norms, losses=rec.losses, reference=references, reference_losses=losses,
                      voices=[v.name for v in son.voices])
    return result


def run_tensor_parallel(rank: int, world: int, out: Path, name: str) -> dict:
    """The same global batch as one process: "fsdp_tp", FSDP2 + TP on (dp=2, tp=2); "hsdp_tp", HSDP + TP
    on (replicate=1, shard=2, tp=2), whose sum runs over two of its three dimensions; "tp", TP alone
    over every rank."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    import gradmidi

    reference = transformer_block()
    model = transformer_block()
    fsdp = name != "tp"
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        names = ("replicate", "dp", "tp") if name == "hsdp_tp" else ("dp", "tp")
        mesh = init_device_mesh("cpu", (1, 2, 2) if name == "hsdp_tp" else (2, 2), mesh_dim_names=names)
        tp_mesh, dp_rank, dp_size, dp_mesh = mesh["tp"], mesh.get_local_rank("dp"), 2, mesh[names[:-1]]
    else:
        tp_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
        dp_rank, dp_size = 0, 1
    rec, extra = recorder(), {}
    # made before the model is parallelised: its layers' new (DTensor) parameters are found at the first step
    son = gradmidi.Sonifier(model, out / f"{name}-rank{rank}.mid", sinks=[rec], flush_interval=0.2)
    tensor_parallel(model, tp_mesh)
    if fsdp:
        for layer in (model.attention, model):
            fully_shard(layer, mesh=dp_mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    tp_rank, tp_size = tp_mesh.get_local_rank(), tp_mesh.size()
    rows = slice(dp_rank * GLOBAL_BATCH // dp_size, (dp_rank + 1) * GLOBAL_BATCH // dp_size)
    tokens = slice(tp_rank * SEQ // tp_size, (tp_rank + 1) * SEQ // tp_size)  # sequence parallel: a share of each
    collectives, references, losses = [], [], []
    for step in range(STEPS):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x[rows, tokens]), y[rows])
        loss.backward()
        sounded_step(son, collectives, loss)
        ref_loss = torch.nn.functional.mse_loss(reference(x), y)
        ref_loss.backward()
        references.append(layer_norms(reference))
        losses.append(float(ref_loss.detach()))
        placements = {n: [str(pl) for pl in p.grad.placements] for n, p in model.named_parameters()
                      if n.endswith("norm.weight")}
        if name == "tp" and step == 0:
            extra = partial_gradients_as_a_pipeline_stage(model, world)
        for o in (opt, ref_opt):
            o.step()
            o.zero_grad()
    return finish(son, rec, collectives, references, losses, rank, norm_grad_placements=placements, **extra)


def partial_gradients_as_a_pipeline_stage(model, world: int) -> dict:
    """The same gradients captured as if the model were a pipeline stage that every rank holds: Partial
    gradients cannot be summed there (the other stages could not know their size)."""
    import warnings

    from gradmidi.capture import NormCapture, discover_layers

    layers = discover_layers(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capture = NormCapture(layers, holders={layer.name: world for layer in layers})
        norms, present, _ = capture.launch().result()
        capture.release()
    ours = [str(w.message) for w in caught if str(w.message).startswith("gradmidi")]
    return {"stage_norms": norms.tolist(), "stage_warnings": ours}


def cut_stack(model, stage_index: int):
    """One stage of ``stack()``: it keeps its own layers, named as in the whole model."""
    if stage_index == 0:
        del model.layers["2"], model.layers["3"]
        model.out = None
    else:
        del model.layers["0"], model.layers["1"]
        model.inp = None
    return model


def separate_stage(model, stage_index: int):
    """The same stage built as a module of its own: its layers' names ("0", "1", "2") collide with the other stage's."""
    import torch.nn as nn

    if stage_index == 0:
        return nn.Sequential(model.inp, nn.Tanh(), model.layers["0"], nn.Tanh(), model.layers["1"], nn.Tanh())
    return nn.Sequential(model.layers["2"], nn.Tanh(), model.layers["3"], nn.Tanh(), model.out)


def run_pipeline(rank: int, world: int, out: Path, *, separate: bool = False) -> dict:
    """Two stages, GPipe with two micro-batches, on (pp=2, dp=2): each stage sharded over dp by fully_shard,
    each dp replica a share of the batch; or (``separate``) two plain pipelines, each fed the whole batch."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    import gradmidi

    reference = stack()
    dp_size = world // 2
    mesh = init_device_mesh("cpu", (2, dp_size), mesh_dim_names=("pp", "dp"))
    stage_index, dp_rank = mesh.get_local_rank("pp"), mesh.get_local_rank("dp")
    model = (separate_stage if separate else cut_stack)(stack(), stage_index)
    if not separate:
        from torch.distributed.fsdp import fully_shard

        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    stage = PipelineStage(model, stage_index, 2, torch.device("cpu"), group=mesh.get_group("pp"))
    schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=torch.nn.functional.mse_loss)
    try:  # a stage next to something else: refused before any collective
        gradmidi.Sonifier([stage, model], None)
        refused = ""
    except gradmidi.GradmidiError as exc:
        refused = str(exc)
    rec = recorder()
    name = "separate" if separate else "pipeline"
    son = gradmidi.Sonifier(stage, out / f"{name}-rank{rank}.mid", sinks=[rec], flush_interval=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    share = GLOBAL_BATCH // dp_size
    rows = slice(None) if separate else slice(dp_rank * share, (dp_rank + 1) * share)
    collectives, references, losses = [], [], []
    for step in range(STEPS):
        x, y = batch(step)
        micro_losses: list = []
        if stage_index == 0:
            schedule.step(x[rows])
        else:
            schedule.step(target=y[rows], losses=micro_losses)
        loss = torch.stack(micro_losses).mean() if micro_losses else None  # the last stage's
        sounded_step(son, collectives, loss)
        ref_loss = torch.nn.functional.mse_loss(reference(x), y)
        ref_loss.backward()
        references.append(layer_norms(reference))
        losses.append(float(ref_loss.detach()))
        for o in (opt, ref_opt):
            o.step()
            o.zero_grad()
    return finish(son, rec, collectives, references, losses, rank, stage=stage_index, sounding=son.sounding,
                  refused=refused)


def scenarios(rank: int, world: int, out: Path) -> dict:
    return {"pipeline": run_pipeline(rank, world, out), "separate": run_pipeline(rank, world, out, separate=True),
            **{name: run_tensor_parallel(rank, world, out, name) for name in ("fsdp_tp", "hsdp_tp", "tp")}}


if __name__ == "__main__":
    from distkit import run_rank  # a rank runs this file as a script: its folder is on the path

    run_rank(scenarios)
