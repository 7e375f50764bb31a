"""A model with more layers than MIDI has channels: gradmidi groups them into at most 15 voices.

    python examples/deep_model.py [--out deep.mid]

A small transformer encoder (6 blocks, about 40 layers with parameters). Layers are grouped by
module path; a group's norm is the root of the sum of its layers' squares. The grouping is
printed here and recorded in the score (gradmidi inspect deep.mid).
"""

import argparse

import torch
import torch.nn as nn

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="deep.mid")
parser.add_argument("--steps", type=int, default=60)
args = parser.parse_args()


class Tiny(nn.Module):
    def __init__(self, vocab=64, dim=32, blocks=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=blocks, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


torch.manual_seed(0)
model = Tiny()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
with gradmidi.Sonifier(model, args.out) as son:
    print(f"{len(son.layers)} layers -> {len(son.voices)} voices:")
    for voice in son.voices:
        print(f"  ch {voice.channel + 1:2d}  {gradmidi.GM_PROGRAMS[voice.program]:24s} {voice.name} "
              f"({len(voice.layers)} layers)")
    for _ in range(args.steps):
        tokens = torch.randint(0, 64, (8, 16))
        opt.zero_grad()
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))
        loss.backward()
        son.step(loss=loss)
        opt.step()
print(f"{son.steps} steps -> {args.out}")
