"""gradmidi with pipeline parallelism (torch.distributed.pipelining): every stage sounds on rank 0.

    torchrun --nproc-per-node 2 examples/pipeline_torchrun.py [--out pipeline.mid] [--steps 20]
    torchrun --nproc-per-node 4 examples/pipeline_torchrun.py    # 2 stages x 2 data-parallel (FSDP2)

An MLP on the digits is cut into two stages, torchtitan's way: each rank keeps its stage's layers,
named as in the whole model. Pass the ``PipelineStage`` to the Sonifier: rank 0 holds only the first
stage, yet its score has every layer's voice and the last stage's loss, one all-reduce per step.
With more ranks than stages, each stage is sharded over the rest with ``fully_shard``.
Gloo on the CPU here; NCCL and one GPU per rank work the same way.
"""

import argparse
import gc
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="pipeline.mid")
parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: one epoch)")
args = parser.parse_args()

STAGES, MICROBATCHES = 2, 4

dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
mesh = init_device_mesh("cpu", (STAGES, dist.get_world_size() // STAGES), mesh_dim_names=("pp", "dp"))
stage_index = mesh.get_local_rank("pp")


class DigitsMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 128)
        self.layers = nn.ModuleDict({str(i): nn.Linear(128, 128) for i in range(4)})
        self.out = nn.Linear(128, 10)

    def forward(self, x):  # a stage without ``inp`` or ``out`` passes hidden states on
        x = F.relu(self.inp(x)) if self.inp is not None else x
        for layer in self.layers.values():
            x = F.relu(layer(x))
        return self.out(x) if self.out is not None else x


torch.manual_seed(0)  # the same initial weights on every rank
model = DigitsMLP()
if stage_index == 0:  # cut: stage 0 keeps inp, layers.0 and layers.1; stage 1 the rest
    del model.layers["2"], model.layers["3"]
    model.out = None
else:
    del model.layers["0"], model.layers["1"]
    model.inp = None
if mesh["dp"].size() > 1:
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
stage = PipelineStage(model, stage_index, STAGES, torch.device("cpu"), group=mesh.get_group("pp"))
schedule = ScheduleGPipe(stage, n_microbatches=MICROBATCHES, loss_fn=F.cross_entropy)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

digits = load_digits()
dataset = torch.utils.data.TensorDataset(torch.tensor(digits.data, dtype=torch.float32) / 16.0,
                                         torch.tensor(digits.target))
# every stage of one pipeline reads the same batches (the first its inputs, the last its targets)
sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=mesh["dp"].size(),
                                                          rank=mesh.get_local_rank("dp"), shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler, drop_last=True)  # fixed shapes

# Every rank makes the Sonifier with its stage; only rank zero opens the file.
with gradmidi.Sonifier(stage, args.out, scale="minor", key="G") as son:
    for step, (xb, yb) in enumerate(loader):
        losses: list[torch.Tensor] = []
        if stage.is_first:
            schedule.step(xb)
        else:
            schedule.step(target=yb, losses=losses)
        son.step(loss=torch.stack(losses).mean() if losses else None)  # every rank; the last stage has the loss
        opt.step()
        opt.zero_grad()
        if step + 1 == args.steps:
            break
if son.sounding:
    print(f"rank 0: {son.steps} steps sounded into {args.out}; voices {', '.join(v.name for v in son.voices)}")
del schedule, stage, model, opt
gc.collect()  # stages and sharded modules hold process groups: free them while torch is alive
dist.destroy_process_group()
