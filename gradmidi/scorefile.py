"""Reading a gradmidi .mid back: voices, notes, events, markers and the decoded norms."""

from __future__ import annotations

import bisect
import csv
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import pair, real, whole
from .errors import GradmidiError, NotAScoreError
from .instruments import DRUM_CHANNEL, GM_PROGRAMS
from .mapping import pitches_to_norms
from .score import ScoreHeader
from .smf import HEADER_TAG, RANGE_TAG, SMFError, parse_json_meta, read_smf


@dataclass
class ScoreFile:
    path: Path
    header: ScoreHeader
    notes: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # voice -> (slot, pitch, velocity)
    drums: list[tuple[int, str]] = field(default_factory=list)  # (slot, kind)
    markers: list[tuple[int, str]] = field(default_factory=list)  # (slot, text)
    ranges: list[tuple[int, tuple[float, float]]] = field(default_factory=list)  # (from slot, log range)
    last_slot: int = -1

    def __repr__(self) -> str:
        voices = len(self.header.voices)
        events = Counter(kind for _, kind in self.drums)
        heard = ", ".join(f"{kind} {n}" for kind, n in events.items()) or "no events"
        return (f"<ScoreFile {self.path.name} {self.header.title!r}: {voices} voice{'s' if voices != 1 else ''}, "
                f"{self.last_slot + 1} slots, {heard}>")

    @property
    def clock(self):
        return self.header.clock

    def step_of(self, slot: int) -> int:
        return int(self.header.info.get("first_step", 0)) + slot * self.clock.every

    def log_range_at(self, slot: int) -> tuple[float, float]:
        starts = [s for s, _ in self.ranges]
        i = bisect.bisect_right(starts, slot) - 1
        return self.ranges[i][1]

    def decode(self) -> list[tuple[int, str, float]]:
        """(step, voice name, norm) for every sounded note, in step then voice order."""
        rows = []
        mapping = self.header.mapping
        for voice in self.header.voices:
            for slot, pitch, _ in self.notes.get(voice.index, []):
                norm = float(pitches_to_norms(np.array([pitch]), self.log_range_at(slot), mapping)[0])
                rows.append((self.step_of(slot), voice.index, voice.name, norm))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [(step, name, norm) for step, _, name, norm in rows]

    def write_csv(self, out: str | os.PathLike) -> int:
        rows = self.decode()
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "voice", "norm"])
            for step, name, norm in rows:
                writer.writerow([step, name, f"{norm:.6g}"])
        return len(rows)

    def summary(self) -> dict:
        """What ``gradmidi inspect`` shows: voices, pitch ranges, steps, events."""
        voices = []
        for v in self.header.voices:
            pitches = [p for _, p, _ in self.notes.get(v.index, [])]
            voices.append({
                "name": v.name, "channel": v.channel + 1, "program": v.program,
                "instrument": GM_PROGRAMS[v.program], "kind": v.kind, "layers": len(v.layers),
                "notes": len(pitches),
                "pitch_range": [min(pitches), max(pitches)] if pitches else None,
            })
        kinds = Counter(kind for _, kind in self.drums)
        first: dict[str, int] = {}
        for slot, kind in self.drums:
            first.setdefault(kind, self.step_of(slot))
        clock = self.clock
        return {
            "file": str(self.path),
            "title": self.header.title,
            "model": self.header.info.get("model"),
            "steps": self.step_of(self.last_slot) + clock.every if self.last_slot >= 0 else 0,
            "slots": self.last_slot + 1,
            "every": clock.every,
            "bpm": round(clock.bpm, 3),
            "seconds": round(clock.seconds_of(self.last_slot + 1), 3),
            "scale": f"{self.header.mapping.key} {self.header.mapping.scale}",
            "voices": voices,
            "events": {kind: kinds.get(kind, 0) for kind in self.header.drums},  # every kind of the file's table
            "first_event_step": first,
            "markers": [[self.step_of(slot), text] for slot, text in self.markers],
        }


def load_tracks(path: str | os.PathLike) -> tuple[list[list[tuple[int, bytes]]], int]:
    """(tracks, ticks per beat) of any MIDI file; one-line GradmidiError when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise GradmidiError(f"{path}: no such file")
    if path.is_dir():
        raise GradmidiError(f"{path}: is a folder, not a MIDI file")
    data = path.read_bytes()
    if not data:
        raise GradmidiError(f"{path}: an empty file, not a MIDI file (a run that never wrote its score?)")
    try:
        _, division, tracks = read_smf(data)
    except SMFError as exc:
        raise GradmidiError(f"{path}: not a readable MIDI file ({exc})") from None
    except (IndexError, KeyError, struct.error):  # the parser ran off the end of the bytes, or met garbage
        raise GradmidiError(f"{path}: not a readable MIDI file (damaged: an event is cut short)") from None
    return tracks, division


def read_score(path: str | os.PathLike) -> ScoreFile:
    """Parses a score written by gradmidi; one-line GradmidiError for anything else."""
    return score_from_tracks(path, load_tracks(path)[0])


def score_from_tracks(path: str | os.PathLike, tracks: list[list[tuple[int, bytes]]]) -> ScoreFile:
    path = Path(path)
    header = None
    ranges: list[tuple[int, tuple[float, float]]] = []
    for track in tracks:
        for _, event in track:
            if event[:2] == b"\xff\x7f":
                parsed = parse_json_meta(_meta_body(event))
                if parsed and parsed[0] == HEADER_TAG:
                    header = parsed[1]
                elif parsed and parsed[0] == RANGE_TAG:
                    ranges.append(_range_change(path, parsed[1]))
    if header is None:
        raise NotAScoreError(f"{path}: a MIDI file, but not a gradmidi score (no gradmidi header)")
    try:
        score_header = ScoreHeader.from_dict(header)
    except (KeyError, TypeError, ValueError) as exc:
        raise GradmidiError(f"{path}: damaged gradmidi header ({exc})") from None
    clock, mapping = score_header.clock, score_header.mapping
    lo, hi = mapping.norm_range
    ranges = [(0, (float(np.log10(lo)), float(np.log10(hi))))] + sorted(ranges)
    voice_of_channel = {v.channel: v.index for v in score_header.voices}
    kind_of_key = {key: kind for kind, key in score_header.drums.items()}  # the file's own table, not ours
    markers, drums = [], []
    notes: dict[int, list[tuple[int, int, int]]] = {}
    last_slot = -1
    slot_ticks = clock.slot_ticks
    for track in tracks:
        for tick, event in track:
            status = event[0]
            if status & 0xF0 == 0x90 and event[2] > 0:
                slot = tick // slot_ticks
                last_slot = max(last_slot, slot)
                channel = status & 0x0F
                if channel == DRUM_CHANNEL:
                    kind = kind_of_key.get(event[1])  # None: the epoch downbeat, or no event
                    if kind is not None:
                        drums.append((slot, kind))
                elif channel in voice_of_channel:
                    notes.setdefault(voice_of_channel[channel], []).append((slot, event[1], event[2]))
            elif event[:2] == b"\xff\x06":
                markers.append((tick // slot_ticks, _meta_body(event).decode("latin-1")))
            elif event[:2] == b"\xff\x2f" and tick > 0:
                last_slot = max(last_slot, tick // slot_ticks - 1)
    for entries in notes.values():
        entries.sort()
    drums.sort()
    markers.sort(key=lambda m: m[0])
    return ScoreFile(path, score_header, notes, drums, markers, ranges, last_slot)


def _range_change(path: Path, record) -> tuple[int, tuple[float, float]]:
    """(slot, log range) of an adaptive range change; one-line error when damaged."""
    try:
        slot = whole("range slot", record["slot"], 0, 2**53)
        lo, hi = (real("log range", v, -300, 300) for v in pair("log range", record["log_range"]))
    except (KeyError, TypeError, GradmidiError) as exc:
        raise GradmidiError(f"{path}: damaged range change in the score ({exc})") from None
    if not lo < hi:
        raise GradmidiError(f"{path}: damaged range change in the score (log range {lo} >= {hi})")
    return slot, (lo, hi)


def _meta_body(event: bytes) -> bytes:
    """The data of a whole meta event (FF type varlen data)."""
    pos = 2
    while event[pos] & 0x80:
        pos += 1
    return event[pos + 1 :]
