"""One voice's notes as numpy columns: what a read score holds per voice.

A million-step score holds tens of millions of notes: as Python tuples that is gigabytes, as
columns a few bytes a note. A score gradmidi wrote sounds each voice at most once a slot, so its
notes are kept as a grid (a pitch per slot, -1 where silent): one byte a slot, whatever the
length of the gaps. Either way the notes iterate as (slot, pitch, velocity) tuples, sorted by slot.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SILENT = -1


class VoiceNotes:
    """A voice's notes sorted by slot: ``slots``, ``pitches`` and ``velocities`` as arrays."""

    def __init__(self, slots: np.ndarray, pitches: np.ndarray, velocities: np.ndarray) -> None:
        self._slots = np.asarray(slots, dtype=np.int64)
        self._pitches = np.asarray(pitches, dtype=np.uint8)
        self._velocities = np.asarray(velocities, dtype=np.uint8)
        self._grid: np.ndarray | None = None  # int8 pitch per slot, SILENT where none
        self._grid_velocity: np.ndarray | None = None
        self._count = len(self._pitches)

    @classmethod
    def from_tuples(cls, entries: list[tuple[int, int, int]]) -> VoiceNotes:
        if not entries:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint8))
        slots, pitches, velocities = zip(*entries, strict=True)
        return cls(np.array(slots), np.array(pitches), np.array(velocities))

    @classmethod
    def on_grid(cls, pitch: np.ndarray, velocity: np.ndarray) -> VoiceNotes:
        """From a pitch and a velocity per slot (int8, ``SILENT`` where the voice did not sound)."""
        notes = cls.__new__(cls)
        notes._grid, notes._grid_velocity = pitch, velocity
        notes._count = int(np.count_nonzero(pitch >= 0))
        return notes

    @property
    def slots(self) -> np.ndarray:
        return np.flatnonzero(self._grid >= 0) if self._grid is not None else self._slots

    @property
    def pitches(self) -> np.ndarray:
        return self._grid[self._grid >= 0].astype(np.uint8) if self._grid is not None else self._pitches

    @property
    def velocities(self) -> np.ndarray:
        if self._grid is not None and self._grid_velocity is not None:
            return self._grid_velocity[self._grid >= 0]
        return self._velocities

    def window(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, pitches) of the notes in slots ``first`` to ``stop - 1``, without touching the rest."""
        if self._grid is not None:
            part = self._grid[first:stop]
            sounding = np.flatnonzero(part >= 0)
            return sounding + first, part[sounding].astype(np.uint8)
        lo, hi = np.searchsorted(self._slots, [first, stop])
        return self._slots[lo:hi], self._pitches[lo:hi]

    def pitch_range(self) -> tuple[int, int] | None:
        if not self._count:
            return None
        if self._grid is not None:
            sounding = self._grid[self._grid >= 0]
            return int(sounding.min()), int(sounding.max())
        return int(self._pitches.min()), int(self._pitches.max())

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return zip(self.slots.tolist(), self.pitches.tolist(), self.velocities.tolist(), strict=True)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return self.slots[index].item(), int(self.pitches[index]), int(self.velocities[index])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (VoiceNotes, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container: not hashable, like a list

    def __repr__(self) -> str:
        return f"<VoiceNotes: {self._count} notes>"
