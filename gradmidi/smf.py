"""Standard MIDI File bytes, written incrementally.

mido's ``MidiFile.save`` re-encodes the whole file from message objects, which is no
streaming writer. A score is append-only, so each track is kept as encoded bytes in a
spool file (unlinked at creation, so even ``kill -9`` leaves no litter); writing the
.mid is a header plus the spools copied in order. Absolute ticks are turned into deltas
once, here, so no rounding drifts.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import unicodedata
from typing import IO

import numpy as np
from numpy.typing import ArrayLike

SEQUENCER_ID = b"\x7d"  # manufacturer id 0x7D: non-commercial use, ignored by every DAW
HEADER_TAG = b"gradmidi"
RANGE_TAG = b"gradmidi-range"
END_OF_TRACK = b"\xff\x2f\x00"


def vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    if value < 0:
        raise ValueError("negative delta time")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_text(text: str) -> bytes:
    """Meta text as latin-1 (what DAWs and mido expect); other scripts fall back to ASCII."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return (folded if folded.strip() else "?").encode("latin-1", "replace")


def meta(kind: int, data: bytes) -> bytes:
    return b"\xff" + bytes([kind]) + vlq(len(data)) + data


def text_meta(kind: int, text: str) -> bytes:
    return meta(kind, midi_text(text))


def json_meta(tag: bytes, payload: dict) -> bytes:
    """A sequencer-specific meta event holding JSON (ASCII, so any reader round-trips it)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return meta(0x7F, SEQUENCER_ID + tag + b"\x00" + body)


def parse_json_meta(data: bytes | tuple) -> tuple[bytes, dict] | None:
    raw = bytes(data)
    if not raw.startswith(SEQUENCER_ID):
        return None
    tag, sep, body = raw[1:].partition(b"\x00")
    if not sep:
        return None
    try:
        return tag, json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def meta_body(event: bytes) -> bytes:
    """The data of a whole meta event (FF type varlen data), as ``read_smf`` returns them."""
    pos = 2
    while event[pos] & 0x80:
        pos += 1
    return event[pos + 1 :]


def text_carrier(tag: bytes, payload: dict) -> str:
    """The same JSON as ``json_meta``, as the text of a text event (``gradmidi {...}``): for tools such
    as pretty_midi that keep text events but drop sequencer-specific ones."""
    return tag.decode("ascii") + " " + json.dumps(payload, separators=(",", ":"), ensure_ascii=True)


def parse_text_carrier(data: bytes) -> tuple[bytes, dict] | None:
    """(tag, payload) of a ``text_carrier`` text; None for any other text."""
    tag, sep, body = bytes(data).partition(b" ")
    if not sep or tag not in (HEADER_TAG, RANGE_TAG):
        return None
    try:
        payload = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (tag, payload) if isinstance(payload, dict) else None


class TrackSpool:
    """One track's encoded events; appended in tick order."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="gradmidi-")
        self._pending = bytearray()
        self._last_tick = 0
        self.size = 0

    def add(self, tick: int, event: bytes) -> None:
        if tick < self._last_tick:
            raise ValueError(f"track events out of order: tick {tick} after {self._last_tick}")
        self._pending += vlq(tick - self._last_tick) + event
        self._last_tick = tick
        if len(self._pending) > 1 << 16:
            self._spill()

    def add_block(self, ticks: np.ndarray, events: np.ndarray) -> None:
        """Many 3-byte channel events at once (non-decreasing absolute ticks), encoded in numpy."""
        if len(ticks) == 0:
            return
        if ticks[0] < self._last_tick:
            raise ValueError(f"track events out of order: tick {ticks[0]} after {self._last_tick}")
        self._pending += encode_block(ticks, events, self._last_tick)
        self._last_tick = int(ticks[-1])
        if len(self._pending) > 1 << 16:
            self._spill()

    def _spill(self) -> None:
        if self._pending:
            self._file.write(self._pending)
            self.size += len(self._pending)
            self._pending.clear()

    def write_chunk(self, out: IO[bytes], end_tick: int = 0) -> None:
        """The track chunk; its End of Track sits at ``end_tick`` (the score's length) or later."""
        self._spill()
        self._file.flush()
        tail = vlq(max(0, end_tick - self._last_tick)) + END_OF_TRACK
        out.write(b"MTrk" + struct.pack(">I", self.size + len(tail)))
        _copy_spool(self._file, out, self.size)
        out.write(tail)

    def close(self) -> None:
        self._file.close()


def _copy_spool(spool: IO[bytes], out: IO[bytes], size: int) -> None:
    """Copies a spool into ``out`` in the kernel where it can: a big score's flush then costs
    little CPU (no bytes pass through Python)."""
    out.flush()
    offset = 0
    try:
        while offset < size:
            done = os.copy_file_range(spool.fileno(), out.fileno(), size - offset, offset)
            if done == 0:
                break
            offset += done
        out.seek(0, 2)
    except (AttributeError, OSError):  # no copy_file_range here (macOS, old kernels, some filesystems)
        out.seek(0, 2)
        spool.seek(offset)
        shutil.copyfileobj(spool, out, 1 << 20)
        spool.seek(0, 2)


def encode_block(ticks: np.ndarray, events: np.ndarray, last_tick: int = 0) -> bytes:
    """Track bytes for 3-byte events at absolute ``ticks``: each a VLQ delta, then the event.

    Vectorised: deltas below 2**28 ticks take 1-4 VLQ bytes. When every delta has the same
    length (a steady grid) each event is one row of a 2-D array; otherwise the rows are laid
    out left-aligned in 7 bytes and packed with one boolean mask.
    """
    ticks = np.asarray(ticks, dtype=np.int64)
    deltas = np.diff(ticks, prepend=np.int64(last_tick))
    if deltas.min() < 0 or deltas.max() >= 1 << 28:
        return b"".join(vlq(int(d)) + bytes(e) for d, e in zip(deltas, np.asarray(events, dtype=np.uint8), strict=True))
    size = 1 + (deltas >= 1 << 7) + (deltas >= 1 << 14) + (deltas >= 1 << 21)
    width = int(size.max())
    if width == size.min():  # the usual case (a steady grid): one row layout for every event
        rows = np.empty((len(deltas), width + 3), dtype=np.uint8)
        for j in range(width):
            rows[:, j] = ((deltas >> (7 * (width - 1 - j))) & 0x7F) | (0x80 if j < width - 1 else 0)
        rows[:, width:] = events
        return rows.tobytes()
    rows = np.zeros((len(deltas), 7), dtype=np.uint8)
    for j in range(4):  # byte j of each delta, most significant first, continuation bit on all but the last
        shift = 7 * np.maximum(size - 1 - j, 0)
        byte = ((deltas >> shift) & 0x7F) | np.where(j < size - 1, 0x80, 0)
        rows[:, j] = np.where(j < size, byte, 0)
    index = np.arange(len(deltas))
    for k in range(3):
        rows[index, size + k] = events[:, k]
    return rows[np.arange(7) < (size + 3)[:, None]].tobytes()


def write_file(out: IO[bytes], tracks: list[TrackSpool], ticks_per_beat: int, end_tick: int = 0) -> None:
    out.write(b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), ticks_per_beat))
    for track in tracks:
        track.write_chunk(out, end_tick)


# ---------------------------------------------------------------- reading
DATA_BYTES = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


class SMFError(ValueError):
    """Not a Standard MIDI File, or a damaged one."""


def read_smf(data: bytes) -> tuple[int, int, list[list[tuple[int, bytes]]]]:
    """(format, ticks per beat, tracks as [(absolute tick, event bytes)]) from SMF bytes.

    A lean parser (running status, meta, sysex) for reading scores back fast: mido builds
    and validates an object per message, which is slow for millions of notes. Meta events
    come back whole (``FF type len data``); channel events as their 2 or 3 bytes.
    """
    if data[:4] != b"MThd" or len(data) < 14:
        raise SMFError("no MThd header")
    length, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if division & 0x8000:
        raise SMFError("SMPTE time division is not supported")
    if division == 0:
        raise SMFError("zero ticks per beat")
    pos = 8 + length
    tracks: list[list[tuple[int, bytes]]] = []
    for _ in range(ntracks):
        if pos + 8 > len(data):
            raise SMFError(f"truncated: track {len(tracks)} is missing or cut short")
        if data[pos : pos + 4] != b"MTrk":
            raise SMFError(f"damaged: track {len(tracks)} does not start with MTrk")
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        start, end = pos + 8, pos + 8 + size
        if end > len(data):
            raise SMFError(f"truncated: track {len(tracks)} is cut short")
        tracks.append(_read_track(data, start, end))
        pos = end
    return fmt, division, tracks


def _vlq_at(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the variable-length quantity at ``pos``."""
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos


def _read_track(data: bytes, pos: int, end: int) -> list[tuple[int, bytes]]:
    events = []
    tick = 0
    status = 0
    while pos < end:
        delta, pos = _vlq_at(data, pos)
        tick += delta
        first = data[pos]
        if first == 0xFF:
            length, body = _vlq_at(data, pos + 2)
            events.append((tick, data[pos : body + length]))
            kind, pos = data[pos + 1], body + length
            if kind == 0x2F:
                break
        elif first in (0xF0, 0xF7):
            length, body = _vlq_at(data, pos + 1)
            pos = body + length
        else:
            if first & 0x80:
                status = first
                pos += 1
            elif not status:
                raise SMFError("data byte without a status byte")
            n = DATA_BYTES[status & 0xF0]
            events.append((tick, bytes((status,)) + data[pos : pos + n]))
            pos += n
    if pos > end:
        raise SMFError("an event runs past the end of its track")
    return events


def tempo_map(tracks: list[list[tuple[int, bytes]]]) -> list[tuple[int, int]]:
    """(tick, microseconds per beat) changes, starting with 120 bpm at tick 0."""
    changes = sorted(((t, int.from_bytes(e[3:6], "big")) for track in tracks for t, e in track
                      if e[:2] == b"\xff\x51"), key=lambda change: change[0])  # stable: at one tick the last wins
    return [(0, 500_000)] + changes


def ticks_to_seconds(ticks: ArrayLike, tempos: list[tuple[int, int]], ticks_per_beat: int) -> np.ndarray:
    """Vectorised tick -> seconds through a tempo map."""
    import numpy as np

    ticks = np.asarray(ticks, dtype=np.float64)
    seconds = np.zeros_like(ticks)
    elapsed = 0.0
    for i, (start, tempo) in enumerate(tempos):
        stop = tempos[i + 1][0] if i + 1 < len(tempos) else np.inf
        inside = (ticks >= start) & (ticks < stop)
        seconds[inside] = elapsed + (ticks[inside] - start) * tempo / 1e6 / ticks_per_beat
        if np.isfinite(stop):
            elapsed += (stop - start) * tempo / 1e6 / ticks_per_beat
    return seconds


def encode_smf(tracks: list[list[tuple[int, bytes]]], ticks_per_beat: int) -> bytes:
    """A type 1 file from tracks of (absolute tick, event bytes), as ``read_smf`` returns them."""
    out = [b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), ticks_per_beat)]
    for track in tracks:
        body, last = bytearray(), 0
        for tick, event in track:
            body += vlq(tick - last) + event
            last = tick
        if not track or track[-1][1][:2] != b"\xff\x2f":
            body += b"\x00" + END_OF_TRACK
        out.append(b"MTrk" + struct.pack(">I", len(body)) + bytes(body))
    return b"".join(out)
