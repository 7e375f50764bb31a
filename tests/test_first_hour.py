"""A new user's first hour: each stumble found by trying gradmidi as a newcomer would, pinned.

Real processes, real files, real FluidSynth: every test here failed before its fix.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from scorekit import make_score

import gradmidi

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradmidi", *args], capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300, **kwargs)


def train(son: gradmidi.Sonifier, model: nn.Module, steps: int, inputs: int = 6) -> None:
    torch.manual_seed(0)
    for _ in range(steps):
        model.zero_grad()
        loss = model(torch.randn(8, inputs)).pow(2).mean()
        loss.backward()
        son.step(loss=loss)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


@pytest.fixture(scope="module")
def score(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("score") / "run.mid"
    model = small_model()
    with gradmidi.Sonifier(model, path) as son:
        train(son, model, 40)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- bugs -----------------------------------------------------------------------------------------
def test_rendered_audio_is_readable_by_others_as_the_umask_allows(score, tmp_path):
    old = os.umask(0o022)
    try:
        wav = tmp_path / "run.wav"
        gradmidi.render(score, wav)
        model = small_model()
        with gradmidi.Sonifier(model, tmp_path / "son.mid", audio=tmp_path / "son.flac") as son:
            train(son, model, 10)
        from gradmidi.report import build_report

        build_report([score], tmp_path / "report")
    finally:
        os.umask(old)
    assert mode(wav) == 0o644
    assert mode(tmp_path / "son.flac") == 0o644
    assert mode(tmp_path / "report" / "run.ogg") == 0o644
    assert mode(tmp_path / "report" / "run.ogg") == mode(tmp_path / "report" / "index.html")


@pytest.mark.parametrize("command", [["decode", "{score}"], ["programs"], ["inspect", "{score}"]])
def test_a_closed_pipe_ends_the_command_quietly(score, command):
    args = " ".join(a.format(score=score) for a in command)
    line = f"{sys.executable} -m gradmidi {args} | head -3; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr == ""
    assert result.returncode in (0, 141)  # finished before head left, or stopped as SIGPIPE stops a command


def test_plot_score_leaves_the_users_matplotlib_backend_alone(score):
    code = ("import matplotlib; matplotlib.use('svg'); import gradmidi; from gradmidi.plot import plot_score; "
            f"plot_score(gradmidi.read_score({str(score)!r})); print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


# -- plots ----------------------------------------------------------------------------------------
def test_plot_of_a_silent_score_counts_its_voices_and_warns_nothing(tmp_path):
    path = make_score(tmp_path / "silent.mid", [("a", "Linear"), ("b", "Linear")],
                      lambda step: (np.zeros(2), np.zeros(2, bool)), 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from gradmidi.plot import plot

        drawn = plot(path, tmp_path / "silent.png")
    assert len(drawn.voice_labels) == 2
    cli = run("plot", str(path), "-o", str(tmp_path / "cli.png"))
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.strip() == f"{tmp_path / 'cli.png'}: 2 voices, 0 events"


def test_plot_norm_lines_do_not_join_across_a_silent_stretch(tmp_path):
    from gradmidi.plot import plot_score

    path = make_score(tmp_path / "gap.mid", [("a", "Linear")],
                      lambda step: (np.full(1, 0.1), np.full(1, not 10 <= step < 30)), 40)
    line = plot_score(gradmidi.read_score(path)).figure.axes[1].lines[0]
    x = np.asarray(line.get_xdata(), float)
    segments = np.split(x, np.flatnonzero(np.isnan(x)))
    assert [list(s[~np.isnan(s)][[0, -1]]) for s in segments] == [[0, 9], [30, 39]]


def test_plot_gives_two_voices_of_one_kind_clearly_different_colours(tmp_path):
    from matplotlib.colors import rgb_to_hsv, to_rgb

    from gradmidi.plot import plot_score

    path = make_score(tmp_path / "two.mid", [("fc1", "Linear"), ("fc2", "Linear")],
                      lambda step: (np.full(2, 0.1), np.ones(2, bool)), 10)
    roll = plot_score(gradmidi.read_score(path)).figure.axes[0]
    first, second = (rgb_to_hsv(to_rgb(c.get_facecolor()[0]))[0] for c in roll.collections[:2])
    assert min(abs(first - second), 1 - abs(first - second)) > 0.05  # hues apart, not one hue light and dark
