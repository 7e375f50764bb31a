"""Finished runs back into scores: TensorBoard event files, CSV and JSONL of (step, name, value).

The values go through the same score session as a live run: the same aggregation over
``every`` steps, the same events, mapping and writer. TensorBoard logs are
read with TensorBoard's own reader, with no downsampling (scalars and tensor events). By
default the tags that look like gradient norms are the voices: Lightning's ``grad_norm``
(``grad_2.0_norm/...``) and Hugging Face's ``train/grad_norm``; ``tags`` picks any others.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from . import __version__
from .clock import Clock
from .errors import GradmidiError
from .events import SpikeSettings
from .mapping import Mapping
from .score import ScoreHeader, StepRecord
from .session import ScoreSession
from .sinks.factory import build_sinks
from .voices import plan_voices

DEFAULT_TAGS = re.compile(r"grad[^/]*norm", re.IGNORECASE)
LOSS_NAMES = ("loss", "train_loss")  # a series so named (or ending in /loss) is the run's loss, not a voice
NAME_COLUMNS = ("name", "tag", "voice", "layer")
VALUE_COLUMNS = ("value", "norm")


@dataclass
class Series:
    """name -> {step: value}, plus what was odd about the input (said to the user)."""

    values: dict[str, dict[int, float]] = field(default_factory=dict)
    duplicates: int = 0
    unsorted: bool = False
    non_finite: int = 0

    def add(self, name: str, step: int, value: float, last_step: dict[str, int]) -> None:
        if not -(2**53) <= step <= 2**53:  # beyond this a float log cannot have counted exactly
            raise ValueError(f"step {step} is out of range")
        series = self.values.setdefault(name, {})
        if step in series:
            self.duplicates += 1  # the later value wins, as TensorBoard shows it
        if step < last_step.get(name, -math.inf):
            self.unsorted = True
        last_step[name] = step
        if not math.isfinite(value):
            self.non_finite += 1
        series[step] = value

    def notes(self) -> list[str]:
        steps = sorted({s for v in self.values.values() for s in v})
        out = []
        if self.unsorted:
            out.append("steps were out of order: sorted")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicated step(s): the last value of each kept")
        if self.non_finite:
            out.append(f"{self.non_finite} NaN/Inf value(s): sounded as events")
        if steps:
            gaps = (steps[-1] - steps[0] + 1) - len(steps)
            if gaps:
                out.append(f"{gaps} missing step(s) between {steps[0]} and {steps[-1]}: silent")
        return out

    def loss_name(self) -> str | None:
        """The series that is the run's loss (a training one first), or None."""
        losses = [name for name in self.values if is_loss(name)]
        return min(losses, key=lambda n: ("train" not in n.lower(), list(self.values).index(n)), default=None)


def is_loss(name: str) -> bool:
    return name.rsplit("/", 1)[-1].lower() in LOSS_NAMES


def read_series(path: str | os.PathLike, tags: list[str] | None = None) -> Series:
    path = Path(path)
    if not path.exists():
        raise GradmidiError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_file():
        _refuse_other_files(path)
    if path.is_file() and suffix == ".csv":
        series = _read_csv(path)
    elif path.is_file() and suffix in (".jsonl", ".ndjson"):
        series = _read_jsonl(path)
    else:
        series = _read_tensorboard(path)
    chosen = Series(duplicates=series.duplicates, unsorted=series.unsorted, non_finite=series.non_finite)
    for name, values in series.values.items():
        if (tags and any(fnmatch.fnmatchcase(name, t) for t in tags)) or (not tags and (
                suffix in (".csv", ".jsonl", ".ndjson") or DEFAULT_TAGS.search(name) or is_loss(name))):
            chosen.values[name] = values
    if not chosen.values or (not tags and all(is_loss(name) for name in chosen.values)):
        found = ", ".join(sorted(series.values)[:8]) or "none"
        what = f"no tag matches {', '.join(tags)}" if tags else "no gradient-norm tags"
        raise GradmidiError(f"{path}: {what} (tags found: {found}); choose some with --tags PATTERN")
    return chosen


def _refuse_other_files(path: Path) -> None:
    """A file that is none of the logs sonify reads gets a line saying what it is and what is read."""
    with open(path, "rb") as f:
        head = f.read(4)
    reads = "sonify reads a TensorBoard log folder or event file (*tfevents*), a .csv or a .jsonl"
    if head == b"MThd":
        raise GradmidiError(f"{path} is a MIDI score, not a log: {reads} (to look at a score: gradmidi inspect)")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson") and "tfevents" not in path.name:
        raise GradmidiError(f"{path}: {reads}, not a {path.suffix or 'suffix-less'} file")


def _column(header: list[str], choices: tuple[str, ...], path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    for choice in choices:
        if choice in lowered:
            return lowered.index(choice)
    raise GradmidiError(f"{path}: no {'/'.join(choices)} column (columns: {', '.join(header) or 'none'}); "
                        "need step, name, value")


def _read_csv(path: Path) -> Series:
    series, last = Series(), dict[str, int]()
    with _open_text(path) as f:
        first = f.readline()
        f.seek(0)
        rows = csv.reader(f, delimiter=max(",;\t", key=first.count))  # spreadsheets may save with ';' or tabs
        header = next(rows, [])
        step_i = _column(header, ("step",), path)
        name_i, value_i = _column(header, NAME_COLUMNS, path), _column(header, VALUE_COLUMNS, path)
        try:
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                try:
                    series.add(row[name_i], int(float(row[step_i])), float(row[value_i]), last)
                except (ValueError, IndexError, OverflowError):
                    shown = ",".join(row).replace("\r", "\\r").replace("\n", "\\n")[:200]  # quoted fields hold newlines
                    raise GradmidiError(f"{path}:{line}: not a step, name, value row: {shown}") from None
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
    return series


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    """A log as UTF-8 text (a byte-order mark, as spreadsheets write, skipped); one line if it is not."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            f.readline()
            f.seek(0)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
        yield f


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> GradmidiError:
    return GradmidiError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                         "save the log as UTF-8")


def _read_jsonl(path: Path) -> Series:
    series, last = Series(), dict[str, int]()
    with _open_text(path) as f:
        try:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                    name = next(record[k] for k in NAME_COLUMNS if k in record)
                    value = next(record[k] for k in VALUE_COLUMNS if k in record)
                    series.add(str(name), int(record["step"]), float(value), last)
                except (ValueError, KeyError, StopIteration, TypeError, OverflowError) as exc:
                    if isinstance(exc, UnicodeDecodeError):
                        raise
                    raise GradmidiError(f"{path}:{line}: not a {{step, name, value}} record") from None
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
    return series


def _read_tensorboard(path: Path) -> Series:
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError:
        raise GradmidiError("reading TensorBoard logs needs tensorboard: pip install 'gradmidi[tensorboard]'") from None
    files = [path] if path.is_file() else sorted(path.rglob("*tfevents*"))
    if not files:
        raise GradmidiError(f"{path}: no TensorBoard event files (*tfevents*) here")
    series, last = Series(), dict[str, int]()
    for file in files:
        accumulator = ea.EventAccumulator(str(file), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})  # 0: keep all
        try:
            accumulator.Reload()
        except Exception as exc:  # TensorBoard raises several kinds for damaged records
            raise GradmidiError(f"{file}: not a readable TensorBoard event file ({type(exc).__name__})") from None
        tags = accumulator.Tags()
        for tag in tags.get("scalars", []):
            for event in accumulator.Scalars(tag):
                series.add(tag, int(event.step), float(event.value), last)
        for tag in tags.get("tensors", []):
            for event in accumulator.Tensors(tag):
                value = np.asarray(_tensor_value(event.tensor_proto))
                if value.size == 1:
                    series.add(tag, int(event.step), float(value.reshape(-1)[0]), last)
    if not series.values and files:
        raise GradmidiError(f"{path}: the event files hold no readable scalar values (empty or damaged?)")
    return series


def _tensor_value(proto):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(proto)


def sonify_series(
    series: Series,
    out: str | os.PathLike,
    *,
    title: str = "replay",
    mapping: Mapping | None = None,
    clock: Clock | None = None,
    aggregate: str = "max",
    spikes: SpikeSettings | None = None,
    voices: Sequence[str] | None = None,
    programs: MappingABC[str, int | str] | None = None,
) -> int:
    """Writes the score through the same session a training run uses; returns the number of steps.

    A loss series (``Series.loss_name``) drives the loss, as ``son.step(loss=)`` does: its jumps
    are loss spikes. ``voices`` and ``programs`` mean what the Sonifier's options do."""
    loss_name = series.loss_name()
    names = [n for n in series.values if n != loss_name]
    if not names:
        raise GradmidiError(f"{loss_name} is the loss; a score needs gradient norms to sound too")
    steps = sorted({s for values in series.values.values() for s in values})
    # The text after the last '/' (a layer or parameter name) hints the layer kind, and so the instrument.
    table, assignment = plan_voices([(n, n.rsplit("/", 1)[-1]) for n in names], voices=voices, programs=programs)
    header = ScoreHeader(table, mapping or Mapping(), clock or Clock(), title,
                         {"gradmidi": __version__, "first_step": steps[0], "source": "replay", "layers": names,
                          "aggregate": aggregate})
    sinks = build_sinks(path=out, flush_interval=math.inf).sinks
    session = ScoreSession(header, sinks, assignment=assignment, aggregate=aggregate, spikes=spikes)
    columns = [series.values[n] for n in names]
    losses = series.values.get(loss_name, {}) if loss_name else {}
    try:
        for step in steps:
            norms = np.array([c.get(step, np.nan) for c in columns])
            present = np.array([step in c for c in columns])
            session.submit(StepRecord(step, norms, present, losses.get(step)))
    finally:
        session.close()
    return len(steps)
