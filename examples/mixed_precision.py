"""Mixed precision with a GradScaler: skipped optimizer steps are heard as an open triangle.

    python examples/mixed_precision.py [--out amp.mid]

float16 autocast on the CPU (the same code runs on CUDA). The scaler starts at a deliberately
high scale, so its first steps overflow and are skipped while it calibrates: listen for the
triangles at the start, then the voices settle.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="amp.mid")
parser.add_argument("--steps", type=int, default=120)
args = parser.parse_args()

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
scaler = torch.amp.GradScaler(device, init_scale=2.0**24)

with gradmidi.Sonifier(model, args.out) as son:
    for _ in range(args.steps):
        idx = torch.randint(0, len(x), (32,))
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # real gradient norms from here on
        son.step(loss=loss, scaler=scaler)  # a step the scaler will skip sounds as 'skipped'
        scaler.step(opt)
        scaler.update()
print(f"{son.steps} steps, events: {dict(son.event_counts)} -> {args.out}")
