"""Scores with known content, made through the real pipeline and writer (no training needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradmidi.clock import Clock
from gradmidi.mapping import Mapping
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import ScoreHeader
from gradmidi.sinks.midifile import MidiFileSink
from gradmidi.voices import plan_voices


def make_score(
    path: Path,
    layers: list[tuple[str, str]],
    norms: Callable[[int], tuple[np.ndarray, np.ndarray]],
    steps: int,
    clock: Clock | None = None,
) -> Path:
    """``layers``: (name, module class); ``norms(step)`` -> (per-layer norms, present mask)."""
    voices, assignment = plan_voices(layers)
    header = ScoreHeader(voices, Mapping(), clock or Clock(), "test", {"first_step": 0})
    builder = ScoreBuilder(header, assignment)
    sink = MidiFileSink(path, flush_interval=1e9)
    sink.open(header)
    for step in range(steps):
        values, present = norms(step)
        for slot in builder.add_step(step, np.asarray(values, float), np.asarray(present, bool)):
            sink.emit(slot)
    for slot in builder.finish():
        sink.emit(slot)
    sink.close()
    return path
