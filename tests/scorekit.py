"""Scores with known content, made through the real pipeline and writer (no training needed)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

import gradmidi
from gradmidi.clock import Clock
from gradmidi.mapping import Mapping, half_step_log
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import ScoreHeader, Slot, StepRecord
from gradmidi.sinks.base import Sink
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
    for first in range(0, steps, 1024):  # a block at a time, as the session's worker adds them
        records = [StepRecord(step, np.asarray(values, float), np.asarray(present, bool))
                   for step in range(first, min(first + 1024, steps)) for values, present in [norms(step)]]
        for slot in builder.add_steps(records):
            sink.emit(slot)
    for slot in builder.finish():
        sink.emit(slot)
    sink.close()
    return path


def assert_decodes_to(score_path, logged: dict[tuple[int, str], float]) -> None:
    score = gradmidi.read_score(score_path)
    decoded = {(step, name): norm for step, name, norm in score.decode()}
    finite = {k: v for k, v in logged.items() if math.isfinite(v)}
    assert set(decoded) == set(finite)
    for key, value in finite.items():
        pitch = min(score.notes[[v.name for v in score.header.voices].index(key[1])],
                    key=lambda n: abs(score.step_of(n[0]) - key[0]))[1]
        tolerance = half_step_log(pitch, score.header.mapping, score.log_range_at(0))
        assert abs(math.log10(decoded[key]) - math.log10(value)) <= tolerance + 1e-9, key


class Recorder(Sink):
    """A user's own sink: keeps every slot it is given."""

    name = "recorder"

    def __init__(self) -> None:
        self.slots: list[Slot] = []

    def emit(self, slot: Slot) -> None:
        self.slots.append(slot)
