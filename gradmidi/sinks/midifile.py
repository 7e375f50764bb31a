"""The .mid sink: SMF type 1, written while training runs, crash-safe.

Track 0 is the conductor (tempo, 4/4, markers, the embedded score header); then one
named track per voice on its own channel with a program change at tick 0; then the drum
track on channel 10. Every ``flush_interval`` seconds the whole file is rewritten to a
temporary name and atomically renamed over the target, so a crash at any moment leaves
the last complete version. Notes are written as on/off pairs, so every version has every
note closed.

Notes are kept per slot as the slot's pitch and velocity arrays and encoded in numpy, a
few thousand slots at a time: the per-note Python of a naive writer would cap it at a few
hundred thousand notes a second.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from pathlib import Path

import numpy as np

from ..errors import GradmidiError
from ..notes import Arrangement, Notes
from ..score import ScoreHeader, Slot
from ..smf import (
    HEADER_TAG,
    RANGE_TAG,
    SEQUENCER_ID,
    TrackSpool,
    json_meta,
    meta,
    meta_body,
    parse_json_meta,
    text_meta,
    write_file,
)
from .base import Sink

BLOCK_SLOTS = 4096  # slots of notes held before they are encoded into the track spools
FLUSH_SHARE = 0.015  # a flush may cost at most this share of a core (its CPU time over the interval)
# Names that say the file holds something else: a score written there would be a surprise.
OTHER_CONTENT = {
    **dict.fromkeys((".wav", ".flac", ".ogg", ".mp3", ".aac", ".m4a", ".aif", ".aiff", ".opus"), "audio"),
    **dict.fromkeys((".png", ".svg", ".pdf", ".jpg", ".jpeg", ".gif", ".webp"), "an image"),
    **dict.fromkeys((".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".txt", ".html", ".npy", ".pt", ".pth",
                     ".ckpt", ".safetensors", ".py"), "data"),
}
_WRITING: weakref.WeakValueDictionary[Path, MidiFileSink] = weakref.WeakValueDictionary()  # open sinks by file


class MidiFileSink(Sink):
    name = "midi file"

    def __init__(self, path: str | os.PathLike, flush_interval: float = 2.0,
                 keep: tuple[list[list[tuple[int, bytes]]], int] | None = None, event_labels: bool = True) -> None:
        """``keep``: (an earlier score's tracks, a tick): a resumed run keeps what that score holds before
        the tick (its notes, drums, markers and range changes) and continues after it. ``event_labels``:
        write each event's marker (False: its slot's markers already hold them, as a summary's do)."""
        self.path = Path(path)
        self._keep = keep
        self._event_labels = event_labels
        problem = score_name_problem(self.path)
        if problem:
            raise GradmidiError(f"{self.path}: {problem}")
        writer = _WRITING.get(self.path.resolve())
        if writer is not None and writer._tracks:
            raise GradmidiError(f"{self.path} is already being written by another Sonifier (or listener) in this "
                                "process: give each its own path")
        if self.path.is_dir():
            raise GradmidiError(f"{self.path} is a folder; give a .mid file name")
        if not self.path.parent.exists():
            raise GradmidiError(f"folder {self.path.parent} does not exist")
        if self.path.exists() and not is_gradmidi_score(self.path):
            raise GradmidiError(f"{self.path} exists and is not a gradmidi score; refusing to overwrite it")
        _check_writable(self.path)
        self.flush_interval = flush_interval
        self._tracks: list[TrackSpool] = []
        self._dirty = False
        self._last_flush = 0.0
        self._flush_seconds = 0.0  # the last flush's CPU time (this thread's, the kernel's copy included)
        self._flush_wall = 0.0
        self._end_tick = 0
        self._starts: list[int] = []
        self._pitches: list[np.ndarray] = []
        self._velocities: list[np.ndarray] = []

    @property
    def max_delay(self) -> float:  # type: ignore[override]
        """Steps reach the file at least as often as it is flushed (a crash loses at most that much)."""
        return self.flush_interval

    def open(self, header: ScoreHeader) -> None:
        _WRITING[self.path.resolve()] = self
        self.header = header
        self.clock = header.clock
        self.arrangement = Arrangement(header)
        lo, hi = header.mapping.norm_range
        self._range = (math.log10(lo), math.log10(hi))  # the range the file holds so far
        conductor = TrackSpool()
        conductor.add(0, text_meta(0x03, header.title))
        conductor.add(0, meta(0x51, self.clock.tempo_us.to_bytes(3, "big")))
        conductor.add(0, meta(0x58, bytes([4, 2, 24, 8])))  # 4/4
        conductor.add(0, json_meta(HEADER_TAG, header.to_dict()))
        self._tracks = [conductor]
        for voice, program in zip(header.voices, self.arrangement.programs(), strict=True):
            track = TrackSpool()
            track.add(0, text_meta(0x03, voice.name))
            track.add(0, text_meta(0x04, voice.kind))  # instrument name: the layer kind
            track.add(0, program)
            self._tracks.append(track)
        drums = TrackSpool()
        drums.add(0, text_meta(0x03, "events"))
        self._tracks.append(drums)
        if self._keep is not None:
            self._keep_earlier(*self._keep)
        self._n_voices = len(header.voices)
        self._slot_ticks = self.clock.slot_ticks
        self._dirty = True
        self._last_flush = time.monotonic()
        self.flush()

    def _keep_earlier(self, tracks: list[list[tuple[int, bytes]]], until: int) -> None:
        """The earlier score's events before ``until`` (and the note-offs of its notes), after this
        score's own opening (names, programs, the header): the old opening is not kept."""
        for spool, events in zip(self._tracks, tracks, strict=True):
            sounding: set[tuple[int, int]] = set()
            for tick, event in events:
                status = event[0]
                if status & 0xF0 == 0x90 and event[2]:
                    if tick < until:
                        sounding.add((status, event[1]))
                        spool.add(tick, event)
                elif status & 0xF0 in (0x80, 0x90):
                    if (0x90 | (status & 0x0F), event[1]) in sounding:
                        sounding.discard((0x90 | (status & 0x0F), event[1]))
                        spool.add(tick, event)
                elif tick < until and (event[:2] == b"\xff\x06" or _is_range_change(event)):
                    spool.add(tick, event)
                    if _is_range_change(event):
                        record = parse_json_meta(meta_body(event))
                        if record is not None:
                            lo, hi = record[1]["log_range"]
                            self._range = (float(lo), float(hi))
        self._end_tick = until  # the kept part ends with the slot before the resumed step

    def emit(self, slot: Slot) -> None:
        start = slot.index * self._slot_ticks
        if slot.steps:  # a slot holding only markers (an epoch after the last step) adds no time
            self._end_tick = start + self._slot_ticks
        if self._n_voices:
            self._starts.append(start)
            self._pitches.append(slot.pitches)
            self._velocities.append(slot.velocities)
            if len(self._starts) >= BLOCK_SLOTS:
                self._encode_notes()
        if slot.log_range != self._range:
            self._range = slot.log_range
            self._tracks[0].add(start, json_meta(RANGE_TAG, {"slot": slot.index, "log_range": list(slot.log_range)}))
        if slot.events or slot.markers:
            self._emit_conductor_and_drums(slot, start)
        self._dirty = True

    def _emit_conductor_and_drums(self, slot: Slot, start: int) -> None:
        conductor = self._tracks[0]
        for text in slot.markers:
            conductor.add(start, text_meta(0x06, text))
        for event in slot.events if self._event_labels else ():
            conductor.add(start, text_meta(0x06, event.label()))
        hits = self.arrangement.drum_notes(slot)
        if len(hits):
            self._add_notes(self._tracks[-1], hits, start)

    def _encode_notes(self) -> None:
        """The held slots' notes into their voice tracks: per voice, on/off pairs in tick order."""
        if not self._starts:
            return
        starts = np.asarray(self._starts, dtype=np.int64)
        pitches = np.concatenate(self._pitches).reshape(-1, self._n_voices)  # far cheaper than vstack
        velocities = np.concatenate(self._velocities).reshape(-1, self._n_voices)
        self._starts, self._pitches, self._velocities = [], [], []
        for index, notes in enumerate(self.arrangement.voice_notes(starts, pitches, velocities)):
            if len(notes):
                self._add_notes(self._tracks[1 + index], notes)

    @staticmethod
    def _add_notes(track: TrackSpool, notes: Notes, start: int = 0) -> None:
        """Note-on/note-off pairs in tick order: a voice's notes follow one another (on, off, on,
        off, ...), a slot's drum hits sound together (every on, then every off); a summary's hits,
        spread over their slot, are sorted (an off before an on at the same tick)."""
        n = len(notes)
        on = start + notes.onset
        together = n > 1 and notes.onset[1] == notes.onset[0]
        ons, offs = (slice(0, n), slice(n, None)) if together else (slice(0, None, 2), slice(1, None, 2))
        ticks = np.empty(2 * n, dtype=np.int64)
        ticks[ons], ticks[offs] = on, on + notes.length
        events = np.empty((2 * n, 3), dtype=np.uint8)
        events[ons, 0], events[offs, 0] = 0x90 | notes.channel, 0x80 | notes.channel
        events[ons, 1] = events[offs, 1] = notes.key
        events[ons, 2], events[offs, 2] = notes.velocity, 0
        if (together and np.any(notes.onset != notes.onset[0])) or np.any(ticks[1:] < ticks[:-1]):
            order = np.lexsort((events[:, 0] >= 0x90, ticks))
            ticks, events = ticks[order], events[order]
        track.add_block(ticks, events)

    def tick(self) -> None:
        # A huge score's rewrite takes a while: space flushes out so they cost at most 1.5 % of a core.
        interval = max(self.flush_interval, self._flush_seconds / FLUSH_SHARE)
        if time.monotonic() - self._last_flush >= interval:
            self.flush()

    def flush(self) -> None:
        """Write the whole score to a temporary file and rename it over the target."""
        began, cpu = time.monotonic(), time.thread_time()
        self._last_flush = began
        if not self._dirty:
            return
        self._encode_notes()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                write_file(out, self._tracks, self.clock.ticks_per_beat, self._end_tick)
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._dirty = False
        self._flush_seconds = time.thread_time() - cpu
        self._flush_wall = time.monotonic() - began

    def close(self) -> None:
        if not self._tracks:
            return
        self.flush()
        for track in self._tracks:
            track.close()
        self._tracks = []
        if _WRITING.get(self.path.resolve()) is self:
            del _WRITING[self.path.resolve()]


def score_name_problem(path: Path) -> str | None:
    """Why a score must not be written under this name (its suffix promises other content), or None."""
    holds = OTHER_CONTENT.get(path.suffix.lower())
    if holds is None:
        return None
    return f"a {path.suffix} name promises {holds}, but this is a MIDI score: name it .mid"


def _is_range_change(event: bytes) -> bool:
    return event[:2] == b"\xff\x7f" and (SEQUENCER_ID + RANGE_TAG + b"\x00") in event[:24]


def _check_writable(path: Path) -> None:
    """Refuses, before training begins, a folder the score cannot be written into (read-only,
    no permission): later, a failed flush only stops this sink, with a warning."""
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise GradmidiError(f"cannot write {path}: {exc.strerror or exc}") from None


def is_gradmidi_score(path: Path) -> bool:
    """True for an empty file or one whose opening holds gradmidi's header (a cheap look, no parse)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return not head or (SEQUENCER_ID + HEADER_TAG + b"\x00") in head
