"""gradmidi under DeepSpeed ZeRO: the same code on every rank, only rank zero sounds.

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 examples/deepspeed_zero.py [--stage 3] [--fp16|--bf16]

ZeRO stage 1, 2 or 3 (``--stage``, 2 by default) with gloo on the CPU (NCCL and one GPU per rank
work the same way, without ``DS_ACCELERATOR``). Each optimizer step takes ``--accumulate``
micro-batches (2): only the last, the accumulation boundary, is sounded. Under ``--fp16`` the
loss scale starts too high, so DeepSpeed skips the first steps: heard as open triangles.
Needs ``pip install 'gradmidi[deepspeed,demo]'``.
"""

import argparse
import gc
import os

import deepspeed
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="zero.mid")
parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
parser.add_argument("--batch-size", type=int, default=16, help="micro-batch per rank")
precision = parser.add_mutually_exclusive_group()
precision.add_argument("--fp16", action="store_true")
precision.add_argument("--bf16", action="store_true")
args = parser.parse_args()

deepspeed.init_distributed(dist_backend="gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
dataset = torch.utils.data.TensorDataset(x, y)
sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=0)
loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)

torch.manual_seed(0)  # the same initial weights on every rank
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 10))
config = {
    "train_micro_batch_size_per_gpu": args.batch_size,
    "gradient_accumulation_steps": args.accumulate,
    "zero_optimization": {"stage": args.stage},
    "zero_allow_untested_optimizer": True,  # a plain torch optimizer
    "fp16": {"enabled": args.fp16, "initial_scale_power": 20, "hysteresis": 1},
    "bf16": {"enabled": args.bf16},
}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                  config=config)
dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32

# Every rank makes the Sonifier with the same arguments (the engine itself); only rank zero opens the file.
with gradmidi.Sonifier(engine, args.out, scale="dorian", key="E") as son:
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = F.cross_entropy(engine(xb.to(dtype)).float(), yb)
            engine.backward(loss)
            son.step(loss=loss)  # every rank, every micro-batch, after backward and before engine.step()
            engine.step()
        son.epoch()
if son.sounding:
    print(f"rank 0: {son.steps} steps sounded into {args.out}, {son.unsynced_steps} micro-steps before a boundary "
          f"skipped, {engine.skipped_steps} overflow steps skipped by DeepSpeed")
engine.destroy()
# The engine, the model's ZeRO-3 parameters and the Sonifier (it reads the engine's partitions) hold the
# process groups: free them while torch is alive, or gloo's threads can abort at interpreter exit now and then.
del engine, model, son
gc.collect()
dist.destroy_process_group()
