"""Time in one place: training steps -> grid slots -> MIDI ticks and seconds.

One slot holds one step, or one aggregate of ``every`` steps. A slot is a fixed note
value (a sixteenth by default) at the tempo. ``duration=`` with a known number of steps
picks the tempo (and, past the fastest sensible tempo, a larger ``every``) so that the
whole run plays in about that many seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .checks import flag, real, whole
from .errors import GradmidiError

TICKS_PER_BEAT = 480
MAX_BPM = 300.0
MIN_BPM = 20.0
MAX_EVERY = 2**31  # steps per slot; far beyond any run, and keeps step arithmetic in int64


@dataclass(frozen=True)
class Clock:
    bpm: float = 120.0
    slot_beats: float = 0.25  # a sixteenth note
    every: int = 1
    ticks_per_beat: int = TICKS_PER_BEAT
    arpeggio: bool = False
    gate: float = 0.9  # fraction of a slot a note sounds, so a voice never overlaps itself

    def __post_init__(self) -> None:
        real("bpm (the tempo)", self.bpm, MIN_BPM, MAX_BPM * 4)
        whole("every", self.every, 1, MAX_EVERY)
        real("slot_beats", self.slot_beats, 0, 4, low_open=True)
        whole("ticks_per_beat", self.ticks_per_beat, 24, 0x7FFF)  # an SMF division holds 15 bits
        flag("arpeggio", self.arpeggio)
        if self.slot_ticks < 2:
            raise GradmidiError("slot too short for the MIDI resolution")
        real("gate", self.gate, 0.05, 1.0)

    @classmethod
    def for_duration(cls, seconds: float, steps: int, **kwargs: Any) -> Clock:
        """A clock that plays ``steps`` steps in about ``seconds`` seconds."""
        if seconds <= 0 or steps <= 0:
            raise GradmidiError("duration and total_steps must both be positive")
        slot_beats = kwargs.pop("slot_beats", 0.25)
        every = max(int(kwargs.pop("every", 1)), 1)
        while True:
            slots = math.ceil(steps / every)
            bpm = 60.0 * slots * slot_beats / seconds
            if bpm <= MAX_BPM:
                return cls(bpm=max(bpm, MIN_BPM), slot_beats=slot_beats, every=every, **kwargs)
            every = math.ceil(every * bpm / MAX_BPM)

    @property
    def slot_ticks(self) -> int:
        return int(round(self.slot_beats * self.ticks_per_beat))

    @property
    def tempo_us(self) -> int:
        """Microseconds per quarter note, as the MIDI set_tempo meta message wants."""
        return int(round(60_000_000 / self.bpm))

    @property
    def slot_seconds(self) -> float:
        return self.slot_beats * 60.0 / self.bpm

    def slot_of(self, step_index: int) -> int:
        return step_index // self.every

    def tick_of(self, slot: int) -> int:
        return slot * self.slot_ticks

    def slot_at_tick(self, tick: int) -> int:
        return tick // self.slot_ticks

    def seconds_of(self, slot: int) -> float:
        return slot * self.slot_seconds

    def note_span(self, position: int, voices: int) -> tuple[int, int]:
        """(offset, length) in ticks of the ``position``-th sounding voice within a slot."""
        if self.arpeggio and voices > 1:
            width = self.slot_ticks // voices
            if width >= 2:
                return position * width, max(1, int(width * self.gate))
        return 0, max(1, int(self.slot_ticks * self.gate))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Clock:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
