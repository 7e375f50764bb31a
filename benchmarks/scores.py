"""Synthetic gradmidi scores of any length, for benchmarks (the real pipeline, random norms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradmidi.clock import Clock
from gradmidi.mapping import Mapping
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import ScoreHeader
from gradmidi.sinks.midifile import MidiFileSink
from gradmidi.voices import plan_voices


def synthetic_score(path: Path, steps: int, n_layers: int = 8, seed: int = 0) -> Path:
    """Layers alternate convolution/linear; norms wander in log space with a burst every ~1000 steps."""
    layers = [(f"layer{i}", "Conv2d" if i % 2 else "Linear") for i in range(n_layers)]
    voices, assignment = plan_voices(layers)
    header = ScoreHeader(voices, Mapping(), Clock(), "synthetic", {"first_step": 0})
    builder = ScoreBuilder(header, assignment)
    sink = MidiFileSink(path, flush_interval=1e9)
    sink.open(header)
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3, 0, n_layers)
    present = np.ones(n_layers, bool)
    for step in range(steps):
        norms = 10 ** (base + 0.1 * rng.normal(size=n_layers) + (3 if step % 997 == 500 else 0))
        for slot in builder.add_step(step, norms, present, 1.0):
            sink.emit(slot)
    for slot in builder.finish():
        sink.emit(slot)
    sink.close()
    return path
