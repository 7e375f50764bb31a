"""gradmidi under torch.distributed: the same code on every rank, only rank zero sounds.

    torchrun --nproc-per-node 2 examples/ddp_torchrun.py [--out ddp.mid] [--fsdp] [--accumulate 2]

DDP by default (``--fsdp``: FSDP2's ``fully_shard`` instead), with the gloo backend on the CPU
(NCCL and one GPU per rank work the same way). With ``--accumulate N`` each optimizer step
takes N micro-batches, all but the last without gradient sync: those are not sounded.
"""

import argparse
import contextlib
import gc
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="ddp.mid")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--fsdp", action="store_true", help="shard with fully_shard (FSDP2) instead of DDP")
parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
args = parser.parse_args()

dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
dataset = torch.utils.data.TensorDataset(x, y)
sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size=16, sampler=sampler)

torch.manual_seed(0)  # the same initial weights on every rank
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 10))
if args.fsdp:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    trained = fully_shard(model)
else:
    trained = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """DDP's no_sync(), or FSDP2's set_requires_gradient_sync(False), around a micro-batch."""
    if enabled:
        yield
    elif args.fsdp:
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        with module.no_sync():
            yield


# Every rank makes the Sonifier with the same arguments; only rank zero opens the file.
with gradmidi.Sonifier(trained, args.out, scale="dorian", key="E") as son:
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for i, (xb, yb) in enumerate(loader):
            last_micro = (i + 1) % args.accumulate == 0
            with gradient_sync(trained, last_micro):
                loss = F.cross_entropy(trained(xb), yb) / args.accumulate
                loss.backward()
            son.step(loss=loss)  # every rank, every micro-batch: the unsynced ones are skipped
            if last_micro:
                opt.step()
                opt.zero_grad()
        son.epoch()
if son.sounding:
    print(f"rank 0: {son.steps} steps sounded into {args.out}, {son.unsynced_steps} unsynced micro-steps skipped")
# DDP's reducer holds the process group: drop it first, or the group is torn down at interpreter exit,
# too late for gloo's threads (an abort at exit, now and then).
del trained, opt
gc.collect()
dist.destroy_process_group()
