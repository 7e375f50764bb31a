"""A score as a picture: piano roll with event markers above, decoded norms (log axis) below.

Readable from 200 steps to 200,000: notes and norms are thinned into at most ``max_points``
bins per voice (each bin keeps its lowest and highest value, so spikes stay visible), while
every event marker is drawn, always.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GradmidiError
from .events import colour_of
from .instruments import GM_PROGRAMS
from .scorefile import ScoreFile, read_score


@dataclass
class PlotResult:
    """What was drawn, for callers and tests: the figure, one legend label per voice, the events."""

    figure: Any  # a matplotlib Figure (matplotlib is imported only when drawing)
    voice_labels: list[str] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, kind), one per marker drawn
    epochs: list[int] = field(default_factory=list)
    range_changes: list[int] = field(default_factory=list)  # steps where the adaptive range moved


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2*max_points points: each bin of x keeps its min and max y (spikes survive)."""
    if len(x) <= max_points:
        return x, y
    edges = np.linspace(x[0], x[-1] + 1, max_points + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max_points - 1)
    order = np.lexsort((y, which))
    x, y, which = x[order], y[order], which[order]
    first = np.r_[True, which[1:] != which[:-1]]
    last = np.r_[which[1:] != which[:-1], True]
    keep = first | last
    return x[keep], y[keep]


# tab20 holds each hue twice (dark, light): take every dark one before any light one, so up to
# ten voices get ten distinct hues and two voices of one kind never look alike.
_PALETTE_ORDER = [*range(0, 20, 2), *range(1, 20, 2)]


def plot_score(score: ScoreFile, max_points: int = 2000, title: str | None = None) -> PlotResult:
    """Draws on a figure of its own (never pyplot's), so the caller's matplotlib backend is untouched."""
    try:
        from matplotlib import colormaps
        from matplotlib.figure import Figure
    except ImportError:
        raise GradmidiError("plots need matplotlib: pip install 'gradmidi[plot]'") from None
    header = score.header
    fig = Figure(figsize=(12, 7), constrained_layout=True)
    roll, norms_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    palette = colormaps["tab20"]
    result = PlotResult(fig)
    for voice in header.voices:
        notes = score.notes.get(voice.index)
        colour = palette(_PALETTE_ORDER[voice.index % 20])
        label = f"{voice.name} ({GM_PROGRAMS[voice.program]})"
        result.voice_labels.append(label)
        if not notes:  # a silent voice is still one of the score's voices: listed, marked silent
            roll.scatter([], [], s=6, marker="s", color=colour, label=f"{label}, silent", linewidths=0)
            continue
        slots, pitches = notes.slots, notes.pitches
        steps = score.steps_of(slots)
        x, y = _thin(steps, pitches.astype(float), max_points)
        roll.scatter(x, y, s=6, marker="s", color=colour, label=label, linewidths=0)
        if not score.decodable:  # no mapping (no gradmidi header): the norms are not known, so not drawn
            continue
        x, y = _thin(steps, score.norms_of(slots, pitches), max_points)
        norms_ax.plot(*_break_at_gaps(x, y, _gap(steps, score.clock.every, max_points)), color=colour,
                      linewidth=0.8)
    by_kind: dict[str, list[int]] = {}
    for slot, kind in score.drums:
        by_kind.setdefault(kind, []).append(score.step_of(slot))
    for kind, at in by_kind.items():
        roll.vlines(at, 0, 1, transform=roll.get_xaxis_transform(), colors=colour_of(kind),
                    linewidth=0.8, alpha=0.8, label=f"event: {kind} ({len(at)})")
        result.events += [(s, kind) for s in at]
    epochs = [score.step_of(slot) for slot, text in score.markers if text.startswith("epoch")]
    if epochs:
        for ax in (roll, norms_ax):
            ax.vlines(epochs, 0, 1, transform=ax.get_xaxis_transform(), colors="0.6", linestyles="dashed",
                      linewidth=0.7)
        result.epochs = epochs
    moves = [score.step_of(slot) for slot, _ in score.ranges[1:]]
    if moves:  # where the same pitch starts to mean another norm: marked on both axes
        for ax in (roll, norms_ax):
            ax.vlines(moves, 0, 1, transform=ax.get_xaxis_transform(), colors="tab:purple", linestyles="dotted",
                      linewidth=0.9, label=f"range change ({len(moves)})" if ax is roll else None)
        result.range_changes = moves
    roll.set_ylabel("MIDI note")
    roll.set_ylim(header.mapping.low_note - 2, header.mapping.high_note + 2)
    roll.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    if norms_ax.lines:  # a log axis with nothing on it warns: a silent score keeps a linear, empty one
        norms_ax.set_yscale("log")
    norms_ax.set_ylabel("gradient norm (decoded)" if score.decodable else "no norms: no gradmidi header")
    norms_ax.set_xlabel("step")
    roll.set_title(title or f"{header.title}: {score.summary()['steps']} steps, {header.mapping.key} "
                   f"{header.mapping.scale.replace('_', ' ')}")
    return result


def _gap(steps: np.ndarray, every: int, max_points: int) -> float:
    """The largest step distance between neighbours that is not a silence: one slot, or (thinned) two bins."""
    if len(steps) <= max_points:
        return every
    return every + 2 * (steps[-1] - steps[0] + 1) / max_points


def _break_at_gaps(x: np.ndarray, y: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """A NaN between points further apart than ``gap``: a line does not join across a silent stretch."""
    at = np.flatnonzero(np.diff(x) > gap) + 1
    return np.insert(x.astype(float), at, np.nan), np.insert(y, at, np.nan)


def plot(score_path: str | os.PathLike | ScoreFile, out: str | os.PathLike, max_points: int = 2000,
         dpi: int = 110) -> PlotResult:
    """Draws a score (a path, or a score already read) to a PNG (or SVG/PDF by suffix)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise GradmidiError(f"{out}: plots are written as .png, .svg or .pdf")
    if not out.parent.exists():
        raise GradmidiError(f"{out.parent}: no such folder for the plot")
    score = score_path if isinstance(score_path, ScoreFile) else read_score(score_path)
    result = plot_score(score, max_points)
    result.figure.savefig(out, dpi=dpi)
    return result
