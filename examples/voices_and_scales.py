"""Choosing voices, instruments and scales.

    python examples/voices_and_scales.py [--out chosen.mid]

- voices={name: patterns}: three voices of your choosing (glob patterns over layer names);
- programs: General MIDI instruments by name (or number) per voice;
- scale and key, a narrower register, velocity following the norm, and an arpeggio so the
  voices play one after another within each sixteenth.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="chosen.mid")
parser.add_argument("--steps", type=int, default=80)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential()
model.add_module("stem", nn.Conv2d(1, 8, 3))
model.add_module("body1", nn.Conv2d(8, 8, 3))
model.add_module("body2", nn.Conv2d(8, 8, 3))
model.add_module("flat", nn.Flatten())
model.add_module("head", nn.Linear(8 * 10 * 10, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05)

with gradmidi.Sonifier(
    model, args.out,
    voices={"stem": "stem", "body": "body*", "head": "head"},
    programs={"stem": "Cello", "body": "Vibraphone", "head": "Flute"},
    scale="major", key="Eb", low_note=48, high_note=84, velocity="norm", arpeggio=True,
) as son:
    for _ in range(args.steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(torch.randn(16, 1, 16, 16)), torch.randint(0, 10, (16,)))
        loss.backward()
        son.step(loss=loss)
        opt.step()
print(f"{son.steps} steps, voices {[v.name for v in son.voices]} -> {args.out}")
