"""Slots -> what sounds: the one place where a slot becomes MIDI notes.

Voice notes, drum hits for events and the optional epoch downbeat, with their channel, key,
velocity, onset and length, come from here as arrays. Outputs only encode them (the .mid
writer), send them at their times (the live scheduler), or stream the slots they come from
(the network), so every output plays the same music.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import events
from .instruments import DRUM_CHANNEL
from .score import SUMMARY, ScoreHeader, Slot


@dataclass(frozen=True)
class Notes:
    """Notes as parallel arrays; ``onset`` and ``length`` in ticks (from the slot's start, or absolute)."""

    channel: np.ndarray
    key: np.ndarray
    velocity: np.ndarray
    onset: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def concat(cls, parts: list[Notes]) -> Notes:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


DEFAULT_DRUM_VELOCITY = 110  # a kind the score knows but this process has not registered
_FIELDS = ("channel", "key", "velocity", "onset", "length")
_NONE = Notes(*(np.zeros(0, dtype=np.int64) for _ in _FIELDS))


class Arrangement:
    """Where a score's sounds go: each voice's channel and place in the slot, the drums' keys."""

    def __init__(self, header: ScoreHeader) -> None:
        clock, voices = header.clock, header.voices
        spans = [clock.note_span(v.index, len(voices)) for v in voices]
        self.header = header
        self.channels = np.array([v.channel for v in voices], dtype=np.int64)
        self.offsets = np.array([offset for offset, _ in spans], dtype=np.int64)
        self.lengths = np.array([length for _, length in spans], dtype=np.int64)
        self.drum_length = clock.note_span(0, 1)[1]
        self.drum_keys = dict(header.drums)  # the score's own table: a file decodes by it
        self.epoch_downbeat = header.epoch_downbeat
        # a summary's slots spread their drum hits over the slot (drum_notes); 0: every hit at the slot's start
        self.slot_ticks = clock.slot_ticks if SUMMARY in header.info else 0

    def programs(self) -> list[bytes]:
        """The program changes that set every voice's instrument, sent (or written) first."""
        return [bytes([0xC0 | v.channel, v.program]) for v in self.header.voices]

    def notes(self, slot: Slot) -> Notes:
        """Everything one slot sounds: its voice notes (in voice order), then its drum hits; onsets from the
        slot's start. A few array operations whatever the voice count: live outputs call it every slot."""
        sounding = slot.pitches >= 0
        voices = Notes(self.channels[sounding], slot.pitches[sounding], slot.velocities[sounding],
                       self.offsets[sounding], self.lengths[sounding])
        drums = self.drum_notes(slot)
        return Notes.concat([voices, drums]) if len(drums) else voices

    def voice_notes(self, starts: np.ndarray, pitches: np.ndarray, velocities: np.ndarray) -> list[Notes]:
        """Per voice, the notes of many slots at once (rows: slots starting at ``starts`` ticks)."""
        out = []
        for v in range(len(self.channels)):
            sounding = pitches[:, v] >= 0
            n = int(np.count_nonzero(sounding))
            if not n:
                out.append(_NONE)
                continue
            out.append(Notes(
                channel=np.full(n, self.channels[v]), key=pitches[sounding, v],
                velocity=velocities[sounding, v], onset=starts[sounding] + self.offsets[v],
                length=np.full(n, self.lengths[v]),
            ))
        return out

    def drum_notes(self, slot: Slot) -> Notes:
        """One hit per event kind the slot holds (in order of first appearance), then the epoch downbeat.

        A summary's slot stands for many of the run's: there every event is a hit at the place of its
        step within the slot (hits of one kind closer than a tick are one), each ended before the next
        of its key and within the slot."""
        spread = bool(self.slot_ticks and slot.steps)
        hits: dict[tuple[int, int], int] = {}  # (key, onset) -> velocity, in order of first appearance
        for event in slot.events:
            key = self.drum_keys.get(event.kind)
            if key is None:
                continue
            onset = 0
            if spread:
                onset = min(max((event.step - slot.first_step) * self.slot_ticks // slot.steps, 0), self.slot_ticks - 1)
            kind = events.get(event.kind)
            hits.setdefault((key, onset), kind.velocity if kind is not None else DEFAULT_DRUM_VELOCITY)
        if self.epoch_downbeat and any(m.startswith("epoch") for m in slot.markers):
            hits.setdefault((events.DOWNBEAT_KEY, 0), events.DOWNBEAT_VELOCITY)
        if not hits:
            return _NONE
        placed = sorted(hits) if spread else list(hits)  # spread: by key, then onset
        keys = np.array([key for key, _ in placed])
        onsets = np.array([onset for _, onset in placed], dtype=np.int64)
        lengths = np.full(len(placed), self.drum_length)
        if spread:  # each hit ends before the next of its key, and within the slot
            ends = np.full(len(placed), self.slot_ticks)
            same_key_next = keys[1:] == keys[:-1]
            ends[:-1][same_key_next] = onsets[1:][same_key_next]
            lengths = np.maximum(np.minimum(lengths, ends - onsets), 1)
        return Notes(np.full(len(placed), DRUM_CHANNEL), keys, np.array([hits[p] for p in placed]), onsets, lengths)
