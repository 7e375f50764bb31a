"""Gradient clipping: gradmidi hears the norms before clipping, which is what clipping acts on.

    python examples/clipping.py [--out clipped.mid]

A learning rate high enough that clip_grad_norm_ is busy: the notes show the raw norms (and
their spikes), while training stays stable because of the clipping after son.step().
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="clipped.mid")
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--max-norm", type=float, default=1.0)
args = parser.parse_args()

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
clipped = 0

with gradmidi.Sonifier(model, args.out, scale="dorian", key="D") as son:
    for _ in range(args.steps):
        idx = torch.randint(0, len(x), (32,))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        son.step(loss=loss)  # before clipping: the raw norms
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
        clipped += int(total > args.max_norm)  # (a host read, fine in an example)
        opt.step()
print(f"{son.steps} steps, clipped {clipped} of them, events: {dict(son.event_counts)} -> {args.out}")
