"""The score's records: the voice table, training events and one slot of music.

These plain objects are the one truth every sink consumes; sinks only decide where
and when they go.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from .checks import flag, whole
from .clock import Clock
from .errors import GradmidiError
from .instruments import DRUM_CHANNEL
from .mapping import Mapping

FORMAT_VERSION = 2  # 2: the header carries its drum table and epoch_downbeat
SUMMARY = "summary"  # the header.info record of a summary (summary.py): its slots each stand for many


@dataclass(frozen=True)
class Voice:
    """One melodic line: a layer, or a group of layers sounded as the root of their sum of squares."""

    index: int
    name: str
    layers: tuple[str, ...]
    kind: str
    channel: int
    program: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Voice:
        channel = whole("voice channel", data["channel"], 0, 15)
        if channel == DRUM_CHANNEL:
            raise GradmidiError("voice channel must not be 9 (channel 10): it is the drums'")
        if not isinstance(data["layers"], list):
            raise GradmidiError(f"voice layers must be a list of names, not {data['layers']!r}")
        return cls(
            index=whole("voice index", data["index"], 0, 15), name=str(data["name"]),
            layers=tuple(str(layer) for layer in data["layers"]), kind=str(data["kind"]), channel=channel,
            program=whole("voice program", data["program"], 0, 127),
        )


@dataclass(frozen=True)
class Event:
    """A training event sounded on the drum channel and written as a marker."""

    step: int
    kind: str  # the name of a registered event kind (events.py)
    voices: tuple[str, ...] = ()
    value: float | None = None

    def label(self) -> str:
        where = f" {', '.join(map(_marker_name, self.voices))}" if self.voices else ""
        value = f" ({self.value:.4g})" if self.value is not None else ""
        return f"{self.kind}{where}{value} @ step {self.step}"


_PLAIN_NAME = re.compile(r"[A-Za-z_][\w.\-]*")


def _marker_name(name: str) -> str:
    """A voice name in a marker, quoted unless it reads as a name: an unnamed Sequential's '0', '2'
    would read as counts, and a name holding a comma or a space would read as two."""
    return name if _PLAIN_NAME.fullmatch(name) else repr(name)


def _registered_drums() -> dict[str, int]:
    from .events import drum_table  # events imports this module (Event)

    return drum_table()


@dataclass(frozen=True)
class ScoreHeader:
    """Everything needed to read a score back: voices, mapping, clock, drum table and provenance.

    ``drums`` (event kind -> drum key) is the registry's table when the score was written: a
    reader decodes the drum track by it, so remapping a kind later never mis-reads old scores.
    """

    voices: tuple[Voice, ...]
    mapping: Mapping
    clock: Clock
    title: str = "gradmidi"
    info: dict = field(default_factory=dict)
    drums: dict[str, int] = field(default_factory=_registered_drums)
    epoch_downbeat: bool = False  # epoch markers sound a soft downbeat (events.DOWNBEAT_KEY)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "title": self.title,
            "voices": [v.to_dict() for v in self.voices],
            "mapping": self.mapping.to_dict(),
            "clock": self.clock.to_dict(),
            "info": self.info,
            "drums": dict(self.drums),
            "epoch_downbeat": self.epoch_downbeat,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ScoreHeader:
        """Checks every field: a header read back from a file may be damaged or hostile."""
        voices = data["voices"]
        if not isinstance(voices, list) or not all(isinstance(v, dict) for v in voices):
            raise GradmidiError("voices must be a list of voice records")
        info = data.get("info", {})
        if not isinstance(info, dict):
            raise GradmidiError("info must be a record")
        whole("first_step", info.get("first_step", 0), -(2**53), 2**53)
        for name in ("mapping", "clock"):
            if not isinstance(data[name], dict):
                raise GradmidiError(f"{name} must be a record")
        header = cls(
            voices=tuple(Voice.from_dict(v) for v in voices),
            mapping=Mapping.from_dict(data["mapping"]),
            clock=Clock.from_dict(data["clock"]),
            title=str(data.get("title", "gradmidi")),
            info=dict(info),
            drums=_drums(data["drums"]) if "drums" in data else _legacy_drums(),
            epoch_downbeat=flag("epoch_downbeat", data.get("epoch_downbeat", False)),
        )
        if [v.index for v in header.voices] != list(range(len(header.voices))):
            raise GradmidiError("voice indices must count 0, 1, 2, ... in order")
        if len({v.channel for v in header.voices}) != len(header.voices):
            raise GradmidiError("two voices share a channel")
        return header


def _legacy_drums() -> dict[str, int]:
    """A format-1 score carries no drum table: it was written with gradmidi 0.1.0's."""
    from .events import LEGACY_DRUMS

    return dict(LEGACY_DRUMS)


def _drums(table) -> dict[str, int]:
    """A drum table read from a file: non-empty kind names, keys 0-127, no key twice."""
    if not isinstance(table, dict):
        raise GradmidiError(f"drums must be a record of event kind: drum key, not {table!r}")
    keys: dict[int, str] = {}
    for name, key in table.items():
        if not isinstance(name, str) or not name:
            raise GradmidiError(f"drums: an event kind name must be a non-empty string, not {name!r}")
        key = whole(f"drum key of {name!r}", key, 0, 127)
        if key in keys:
            raise GradmidiError(f"drums: key {key} sounds both {keys[key]!r} and {name!r}")
        keys[key] = name
    return {name: key for key, name in keys.items()}


@dataclass
class Slot:
    """One grid slot: the aggregated norms of its steps, their notes, and its events.

    ``present`` counts, per voice, the slot's steps that had that voice's gradient: it is what
    slots merged later (a live output catching up) are weighted by, so merging equals aggregating
    their steps. ``log_range`` is the pitch range in force for this slot's notes, always set, so
    no output has to re-derive it from earlier slots.
    """

    index: int
    first_step: int
    steps: int
    norms: np.ndarray  # per voice; NaN/Inf kept, NaN also where a voice had no gradient
    pitches: np.ndarray  # per voice; -1 = silent
    velocities: np.ndarray
    present: np.ndarray  # per voice: how many of the slot's steps had its gradient
    log_range: tuple[float, float]  # log10 norms at the register's bottom and top
    events: list[Event] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    loss: float | None = None


@dataclass(frozen=True)
class StepRecord:
    """One step's host values per layer: what every source (training, a log, a test) hands the session."""

    step: int
    norms: np.ndarray  # per layer; NaN/Inf kept
    present: np.ndarray  # per layer, bool: it had a gradient this step
    loss: float | None = None
    skipped: bool = False  # the GradScaler skipped this optimizer step


@dataclass(frozen=True)
class MarkerRecord:
    """A text marker placed before ``step`` (an epoch, 'lr warm-up done', 'interrupted')."""

    step: int
    text: str
