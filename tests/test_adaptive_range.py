"""The adaptive range serves long runs: it leaves headroom, re-centres early when values are pinned at
an edge of the register, and every move is shown in ``inspect``, the plot and the report."""

from __future__ import annotations

import html
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.mapping import Mapping, PitchMapper
from gradmidi.plot import plot_score
from gradmidi.report import build_report

STEPS = 1000
DECADES = 2.0


def rising_run(path, steps: int = STEPS, **options) -> None:
    """Real training whose gradient norms rise steadily by DECADES over the run: the loss is scaled
    up by 10**(DECADES * step / steps), as a warming learning rate or a growing loss scale would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    with gradmidi.Sonifier(model, path, **options) as son:
        for step in range(steps):
            model.zero_grad()
            loss = (model(x) - y).pow(2).mean() * 10 ** (DECADES * step / steps)
            loss.backward()
            son.step(loss=loss)


def pinned_steps(score) -> float:
    """The share of steps with a voice at the bottom or top note of the register."""
    edges = {int(score.header.mapping.notes[0]), int(score.header.mapping.notes[-1])}
    steps = {score.step_of(slot) for notes in score.notes.values() for slot, pitch, _ in notes if pitch in edges}
    return len(steps) / (score.last_slot + 1)


@pytest.fixture(scope="module")
def rising(tmp_path_factory):
    path = tmp_path_factory.mktemp("adaptive") / "rising.mid"
    rising_run(path, adaptive=True)
    return path


def test_norms_rising_two_decades_spend_at_most_a_tenth_of_the_steps_pinned_at_an_edge(rising):
    score = gradmidi.read_score(rising)
    norms = {}
    for step, voice, norm in score.decode():
        norms.setdefault(voice, {})[step] = norm
    first, last = (np.median([np.log10(v[s]) for v in norms.values()]) for s in (60, STEPS - 1))
    assert last - first > 0.8 * DECADES * (STEPS - 60) / STEPS  # the norms did rise (decoded as heard)
    assert len(score.ranges) > 2  # the range followed them
    assert pinned_steps(score) <= 0.10


def test_a_steady_rise_is_re_centred_before_adaptive_every_runs_out():
    """Norms rising a decade every 100 slots leave a 200-slot schedule behind: it moves early."""
    mapper = PitchMapper(Mapping(adaptive=True, adaptive_warmup=50, adaptive_every=200))
    moves = [i for i in range(400) if mapper.observe(10.0 ** np.array([i / 100, i / 100 - 0.5])) is not None]
    assert moves[0] == 49  # the end of the warm-up
    assert len(moves) > 2 and all(b - a < 200 for a, b in zip(moves, moves[1:], strict=False))


def test_a_re_centred_range_leaves_headroom_above_and_below_the_run():
    mapper = PitchMapper(Mapping(adaptive=True, adaptive_warmup=20, adaptive_every=1000))
    rng = np.random.default_rng(0)
    for _ in range(20):
        result = mapper.observe(10.0 ** rng.uniform(-2, -1, size=8))
    assert result is not None
    lo, hi = result
    assert lo < -2 - 0.2 and hi > -1 + 0.2  # a quarter of the run's span to spare on each side


def test_range_changes_are_listed_by_inspect(rising):
    score = gradmidi.read_score(rising)
    moves = [score.step_of(slot) for slot, _ in score.ranges[1:]]
    got = subprocess.run([sys.executable, "-m", "gradmidi", "inspect", "--json", str(rising)],
                         capture_output=True, text=True, check=True)
    changes = json.loads(got.stdout)["range_changes"]
    assert [c["step"] for c in changes] == moves
    lo, hi = score.ranges[-1][1]
    assert changes[-1]["norms"] == pytest.approx([10 ** lo, 10 ** hi])
    text = subprocess.run([sys.executable, "-m", "gradmidi", "inspect", str(rising)],
                          capture_output=True, text=True, check=True).stdout
    assert f"range changes: {len(moves)}: step {moves[0]}:" in text


def test_range_changes_are_marked_lines_in_the_plot_and_rows_in_the_report(rising, tmp_path):
    score = gradmidi.read_score(rising)
    moves = [score.step_of(slot) for slot, _ in score.ranges[1:]]
    result = plot_score(score)
    assert result.range_changes == moves
    roll = result.figure.axes[0]
    assert f"range change ({len(moves)})" in [t.get_text() for t in roll.get_legend().get_texts()]
    page = html.unescape(build_report([rising], tmp_path / "report", audio=False).read_text())
    assert page.count("span the register") == len(moves)


def test_a_fixed_range_has_no_range_changes(tmp_path):
    path = tmp_path / "fixed.mid"
    rising_run(path, steps=60)
    score = gradmidi.read_score(path)
    assert score.summary()["range_changes"] == []
    assert plot_score(score).range_changes == []
