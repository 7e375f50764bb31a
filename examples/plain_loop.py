"""gradmidi in a plain PyTorch loop: a small MLP on scikit-learn's bundled digits.

    python examples/plain_loop.py [--out digits.mid] [--epochs 3]

Then: gradmidi inspect digits.mid, or open digits.mid in any DAW.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="digits.mid")
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

with gradmidi.Sonifier(model, args.out, scale="major_pentatonic", key="D") as son:
    for _ in range(args.epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            son.step(loss=loss)  # after backward, before clipping and opt.step()
            opt.step()
        son.epoch()
print(f"{son.steps} steps sounded into {args.out}")
