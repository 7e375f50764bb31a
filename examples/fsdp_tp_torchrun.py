"""gradmidi with FSDP2 and tensor parallelism on a 2-D mesh, as torchtitan builds it.

    torchrun --nproc-per-node 4 examples/fsdp_tp_torchrun.py [--out tp.mid] [--tp 2] [--steps 20]

A tiny transformer reads each 8x8 digit as a sequence of 8 rows. ``parallelize_module`` splits
its linear layers column- and row-wise over the "tp" dimension, with sequence-parallel norms;
``fully_shard`` then shards it over "dp". Every layer's norm is exact: gradmidi sums each step's
local squares over both dimensions in one all-reduce, counting what tp replicates once.
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
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tp.mid")
parser.add_argument("--tp", type=int, default=2, help="tensor-parallel ranks (the rest shard data)")
parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: one epoch)")
args = parser.parse_args()

DIM, HEADS = 32, 4

dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
mesh = init_device_mesh("cpu", (dist.get_world_size() // args.tp, args.tp), mesh_dim_names=("dp", "tp"))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (w(x).view(b, t, -1, DIM // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.wo(mixed.transpose(1, 2).reshape(b, t, -1))  # -1: this rank's heads


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm, self.attention = nn.LayerNorm(DIM), Attention()
        self.ffn_norm, self.w1, self.w2 = nn.LayerNorm(DIM), nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.w2(F.gelu(self.w1(self.ffn_norm(h))))


class DigitReader(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, DIM)
        self.layers = nn.ModuleDict({str(i): Block() for i in range(2)})
        self.norm, self.output = nn.LayerNorm(DIM), nn.Linear(DIM, 10)

    def forward(self, rows):
        h = self.embed(rows)
        for block in self.layers.values():
            h = block(h)
        return self.output(self.norm(h)).mean(dim=1)  # one prediction per digit


torch.manual_seed(0)  # the same initial weights on every rank
model = DigitReader()
parallelize_module(model, mesh["tp"], {
    "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),  # out: sequence-sharded
    "norm": SequenceParallel(),
    "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
})
for block in model.layers.values():
    parallelize_module(block, mesh["tp"], {
        "attention_norm": SequenceParallel(),
        "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "w1": ColwiseParallel(input_layouts=Shard(1)),
        "w2": RowwiseParallel(output_layouts=Shard(1)),
    })
    fully_shard(block, mesh=mesh["dp"])
fully_shard(model, mesh=mesh["dp"])
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

digits = load_digits()
rows = torch.tensor(digits.data, dtype=torch.float32).view(-1, 8, 8) / 16.0
dataset = torch.utils.data.TensorDataset(rows, torch.tensor(digits.target))
# data is split over dp only: the tp ranks of one dp group read the same batches
sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=mesh["dp"].size(),
                                                          rank=mesh.get_local_rank("dp"), shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=sampler)

# Every rank makes the Sonifier with the same arguments; only rank zero opens the file.
with gradmidi.Sonifier(model, args.out, scale="whole_tone", key="D") as son:
    for step, (xb, yb) in enumerate(loader):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        son.step(loss=loss)  # every rank: its part of the one all-reduce
        opt.step()
        opt.zero_grad()
        if step + 1 == args.steps:
            break
if son.sounding:
    print(f"rank 0: {son.steps} steps sounded into {args.out}, {len(son.voices)} voices")
del model, opt
gc.collect()  # the sharded model holds the mesh's process groups: free them while torch is alive
dist.destroy_process_group()
