"""Summaries: a run of any length heard in the time you have.

Consecutive slots are merged ``factor`` at a time with the run's own aggregation (the builder's
``_aggregate``: max, rms or last of their norms; NaN and Inf never averaged away) into a score
with the same voices, mapping and tempo that plays in the time asked, slowed (by less than 2x) so
that it fills it. Nothing that happened is dropped: every event is a drum hit at the place of its
step within its merged slot (not one hit per kind, as in a slot of the run) and every marker is
kept. The summary is a gradmidi score in its own right: its header says what it stands for.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .clock import MIN_BPM
from .errors import GradmidiError
from .mapping import norms_to_pitches, pitches_to_velocities
from .pipeline import AGGREGATES, _aggregate
from .score import SUMMARY, Event, ScoreHeader, Slot
from .scorefile import ScoreFile, read_score

MIN_SLOTS = 8  # a summary shorter than this many slots says nothing
BLOCK_SLOTS = 1 << 16  # the run's slots merged at a time: memory stays bounded whatever its length


@dataclass(frozen=True)
class Summary:
    """A run's slots merged ``factor`` at a time, as a score's header and slots."""

    header: ScoreHeader
    slots: list[Slot]
    factor: int  # the run's slots in one of the summary's
    source_seconds: float  # how long the run's score plays

    @property
    def seconds(self) -> float:
        return self.header.clock.seconds_of(len(self.slots))

    def describe(self, tail: float = 0.0) -> str:
        """In words, for a report's card and the command line (``tail``: what the audio adds after the music)."""
        return (f"a {_clock_time(self.seconds + tail)} summary of {_clock_time(self.source_seconds)} "
                f"({self.factor} slots merged into each, {self.header.info[SUMMARY]['aggregate']} of their norms)")


def summarise(score: ScoreFile, seconds: float, tail: float = 0.0) -> Summary | None:
    """``score`` merged to play within ``seconds`` (its music; ``tail``: what the audio adds after it,
    named in errors), or None when it already fits."""
    if not score.decodable:
        raise GradmidiError(f"{score.label}: not a gradmidi score (no header), so it cannot be summarised: "
                            "a summary merges the run's norms")
    clock = score.clock
    n = score.last_slot + 1
    length = score.seconds if score.seconds is not None else clock.seconds_of(n)
    if n <= 0 or length <= seconds:
        return None
    fit = int(seconds / clock.slot_seconds)
    if fit < MIN_SLOTS:
        raise GradmidiError(f"a {seconds + tail:g} s summary is too short: at this score's tempo it needs at least "
                            f"{MIN_SLOTS * clock.slot_seconds + tail:.3g} s")
    factor = math.ceil(n / fit)
    groups = math.ceil(n / factor)
    how = score.header.info.get("aggregate", "max")
    how = how if how in AGGREGATES else "max"
    bpm = max(clock.bpm * groups * clock.slot_seconds / seconds, MIN_BPM)  # slowed to fill the time
    info = {**score.header.info, SUMMARY: {"slots_merged": factor, "of_slots": n, "of_seconds": round(length, 3),
                                           "aggregate": how}}
    header = replace(score.header, clock=replace(clock, every=clock.every * factor, bpm=bpm), info=info,
                     title=f"{score.header.title} (summary)")
    slots = _merged_slots(score, header, factor, how)
    return Summary(header, slots, factor, length)


def _merged_slots(score: ScoreFile, header: ScoreHeader, factor: int, how: str) -> list[Slot]:
    n, every = score.last_slot + 1, score.clock.every
    drums: dict[int, list[Event]] = defaultdict(list)
    for slot, kind in score.drums:
        drums[slot // factor].append(Event(score.step_of(slot), kind))
    markers: dict[int, list[str]] = defaultdict(list)
    for slot, text in score.markers:
        markers[slot // factor].append(text)
    slots = []
    for first, norms, present in _merged_norms(score, factor, how):
        pitches, ranges = _pitches(score, header, norms, first, factor)
        for i in range(len(norms)):
            group = first + i
            start, stop = group * factor, min((group + 1) * factor, n)
            slots.append(Slot(
                index=group, first_step=score.step_of(start), steps=(stop - start) * every, norms=norms[i],
                pitches=pitches[i], velocities=pitches_to_velocities(pitches[i], header.mapping),
                present=present[i], log_range=ranges[i], events=drums.get(group, []), markers=markers.get(group, []),
            ))
    return slots


def _merged_norms(score: ScoreFile, factor: int, how: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first merged slot, norms per merged slot and voice, slots present per merged slot and voice), a
    bounded block of the run's slots at a time."""
    n, voices = score.last_slot + 1, len(score.header.voices)
    per_block = factor * max(1, BLOCK_SLOTS // factor)
    for first in range(0, n, per_block):
        stop = min(first + per_block, n)
        groups = math.ceil((stop - first) / factor)
        rows = np.full((groups * factor, voices), np.nan)
        weights = np.zeros((groups * factor, voices), dtype=np.int64)
        for voice, notes in score.notes.items():
            slots, pitches = notes.window(first, stop)
            if len(slots):
                rows[slots - first, voice] = score.norms_of(slots, pitches)
                weights[slots - first, voice] = 1
        # (groups * factor, voices) -> (factor, groups, voices): each group's slots along axis 0
        rows = rows.reshape(groups, factor, voices).swapaxes(0, 1)
        weights = weights.reshape(groups, factor, voices).swapaxes(0, 1)
        yield first // factor, _aggregate(rows, weights, how), weights.sum(axis=0)


def _pitches(score: ScoreFile, header: ScoreHeader, norms: np.ndarray, first: int,
             factor: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Each merged slot's pitches by the range in force at its last slot (the newest, as live merging does)."""
    last = np.minimum((first + np.arange(len(norms)) + 1) * factor, score.last_slot + 1) - 1
    starts = np.array([s for s, _ in score.ranges])
    which = np.searchsorted(starts, last, side="right") - 1
    pitches = np.empty(norms.shape, dtype=np.int64)
    for r in np.unique(which).tolist():
        rows = which == r
        pitches[rows] = norms_to_pitches(norms[rows], score.ranges[r][1], header.mapping)
    return pitches, [score.ranges[r][1] for r in which.tolist()]


def write_summary(summary: Summary, out: str | os.PathLike) -> Path:
    """The summary as a .mid file (the run's event markers are among its slots' markers)."""
    from .sinks.midifile import MidiFileSink

    sink = MidiFileSink(out, flush_interval=math.inf, event_labels=False)
    sink.open(summary.header)
    for slot in summary.slots:
        sink.emit(slot)
    sink.close()
    return sink.path


@contextlib.contextmanager
def summarised(path: str | os.PathLike, seconds: float | None,
               tail: float = 0.0) -> Iterator[tuple[Path, Summary | None]]:
    """(a score file whose music plays within ``seconds`` less ``tail``, its summary or None): ``path``
    itself when it fits (or ``seconds`` is None), else its summary in a temporary file that lasts as long
    as the context."""
    if seconds is not None and seconds <= tail:
        raise GradmidiError(f"a duration of {seconds:g} s leaves no time for music before the {tail:g} s tail")
    summary = None
    if seconds is not None:
        score = read_score(path)
        if score.decodable or _plain_length(path) > seconds - tail:  # plain MIDI that fits plays whole
            summary = summarise(score, seconds - tail, tail)
    if summary is None:
        yield Path(path), None
        return
    with tempfile.TemporaryDirectory(prefix="gradmidi-summary-") as folder:
        yield write_summary(summary, Path(folder) / "summary.mid"), summary


def _plain_length(path: str | os.PathLike) -> float:
    from .render import read_timeline

    return read_timeline(path).seconds


def _clock_time(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
