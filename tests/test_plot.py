"""Plots: one legend entry per voice, one marker per event, readable at any length."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradmidi
from gradmidi.plot import plot, plot_score
from scorekit import make_score


def events_every(n_layers: int, nan_steps: set[int], spike_steps: set[int]):
    rng = np.random.default_rng(0)

    def norms(step):
        values = 10 ** (-1 + 0.05 * rng.normal(size=n_layers))
        if step in spike_steps:
            values[0] *= 1000
        if step in nan_steps:
            values[1] = np.nan
        return values, np.ones(n_layers, bool)

    return norms


def test_plot_has_one_legend_entry_per_voice_and_one_marker_per_event(tmp_path):
    layers = [("conv", "Conv2d"), ("fc", "Linear"), ("norm", "LayerNorm")]
    score_path = make_score(tmp_path / "run.mid", layers, events_every(3, {60, 61, 120}, {40, 90}), 200)
    score = gradmidi.read_score(score_path)
    result = plot(score_path, tmp_path / "run.png")
    assert (tmp_path / "run.png").stat().st_size > 10_000
    assert result.voice_labels == ["conv (Marimba)", "fc (Acoustic Grand Piano)", "norm (Pad 2 (warm))"]
    legend = [t.get_text() for t in result.figure.axes[0].get_legend().get_texts()]
    assert legend[:3] == result.voice_labels
    assert sorted(result.events) == sorted((score.step_of(slot), kind) for slot, kind in score.drums)
    assert {kind for _, kind in result.events} == {"nan", "spike"}
    # the data drawn: one vertical segment per event, in the event line collections
    drawn = sum(len(c.get_segments()) for c in result.figure.axes[0].collections if c.get_label().startswith("event"))
    assert drawn == len(score.drums)


def test_long_runs_are_thinned_but_no_event_is_dropped(tmp_path):
    nan_steps = {1000, 7000, 15000}
    spikes = set(range(500, 20000, 1500))
    score_path = make_score(tmp_path / "long.mid", [("a", "Linear"), ("b", "Linear")],
                            events_every(2, nan_steps, spikes), 20000)
    score = gradmidi.read_score(score_path)
    result = plot_score(score, max_points=300)
    roll = result.figure.axes[0]
    notes = [c for c in roll.collections if not c.get_label().startswith("event")]
    assert all(len(c.get_offsets()) <= 2 * 300 for c in notes)
    assert len(result.events) == len(score.drums) >= len(nan_steps) + len(spikes) - 2


def test_plot_command_and_bad_suffix(tmp_path):
    score_path = make_score(tmp_path / "run.mid", [("fc", "Linear")], events_every(1, set(), set()), 20)
    ok = subprocess.run([sys.executable, "-m", "gradmidi", "plot", str(score_path)], capture_output=True, text=True,
                        stdin=subprocess.DEVNULL, timeout=120)
    assert ok.returncode == 0 and (tmp_path / "run.png").exists(), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "gradmidi", "plot", str(score_path), "-o", str(tmp_path / "x.gif")],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("Error:") and "Traceback" not in bad.stderr
    with pytest.raises(gradmidi.GradmidiError, match="no such folder"):
        plot(score_path, tmp_path / "missing" / "x.png")
