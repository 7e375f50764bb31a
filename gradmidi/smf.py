"""Standard MIDI File bytes, written incrementally.

mido's ``MidiFile.save`` re-encodes the whole file from message objects, which is no
streaming writer. A score is append-only, so each track is kept as encoded bytes in a
spool file (unlinked at creation, so even ``kill -9`` leaves no litter); writing the
.mid is a header plus the spools copied in order. Absolute ticks are turned into deltas
once, here, so no rounding drifts.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import unicodedata

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

    def _spill(self) -> None:
        if self._pending:
            self._file.write(self._pending)
            self.size += len(self._pending)
            self._pending.clear()

    def write_chunk(self, out, end_tick: int = 0) -> None:
        """The track chunk; its End of Track sits at ``end_tick`` (the score's length) or later."""
        self._spill()
        self._file.flush()
        tail = vlq(max(0, end_tick - self._last_tick)) + END_OF_TRACK
        out.write(b"MTrk" + struct.pack(">I", self.size + len(tail)))
        self._file.seek(0)
        shutil.copyfileobj(self._file, out, 1 << 20)
        self._file.seek(0, 2)
        out.write(tail)

    def close(self) -> None:
        self._file.close()


def write_file(out, tracks: list[TrackSpool], ticks_per_beat: int, end_tick: int = 0) -> None:
    out.write(b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), ticks_per_beat))
    for track in tracks:
        track.write_chunk(out, end_tick)
