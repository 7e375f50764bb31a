"""The fast path of reading a score: a file exactly as gradmidi wrote it, decoded in numpy blocks.

The writer encodes every voice track as a steady run of note-on/note-off pairs (``smf.encode_block``:
a VLQ delta, then three bytes with the status byte always present), so a reader can decode it the
same way: find the status bytes, decode the deltas, check the notes sit where gradmidi puts them.
The file is read a track at a time (never whole) and each voice's notes become a grid of one byte a
slot (``VoiceNotes.on_grid``). Anything that is not exactly what gradmidi writes - a track an editor
touched, running status, another resolution - returns None, and the general reader
(``scorefile._EditedScoreReader``) reads the file, saying what changed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO

import numpy as np

from .mapping import pitches_to_velocities
from .score import ScoreHeader, Voice
from .smf import END_OF_TRACK, SMFError, _read_track, text_meta
from .voicenotes import SILENT, VoiceNotes


def track_chunks(f: IO[bytes]) -> tuple[int, list[tuple[int, int]]] | None:
    """(ticks per beat, [(offset, size)] of every track chunk), from the chunk headers alone."""
    head = f.read(14)
    if len(head) < 14 or head[:4] != b"MThd":
        return None
    length, _, ntracks, division = struct.unpack(">IHHH", head[4:14])
    if division & 0x8000 or division == 0:
        return None
    f.seek(0, 2)
    end = f.tell()
    pos = 8 + length
    chunks = []
    for _ in range(ntracks):
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8 or chunk[:4] != b"MTrk":
            return None
        (size,) = struct.unpack(">I", chunk[4:])
        if pos + 8 + size > end:
            return None
        chunks.append((pos + 8, size))
        pos += 8 + size
    return division, chunks


def read_written(path: Path) -> tuple[list[list[tuple[int, bytes]]], int, dict[int, VoiceNotes]] | None:
    """(skeleton tracks, ticks per beat, voice -> notes) of a score exactly as gradmidi wrote it, or None.

    The skeleton is the file with every voice track's notes left out: the conductor, each voice
    track's name, instrument and program, and the drum track, parsed as usual (they are small), so the
    general reader makes of them the header, markers, events and checks it always does.
    """
    try:
        with open(path, "rb") as f:
            return _read(f)
    except (SMFError, IndexError, KeyError, ValueError):  # damaged: the general reader says how
        return None


def _read(f: IO[bytes]) -> tuple[list[list[tuple[int, bytes]]], int, dict[int, VoiceNotes]] | None:
    table = track_chunks(f)
    if table is None:
        return None
    division, chunks = table
    if not chunks:
        return None
    conductor = _parse(f, *chunks[0])
    header = _header_of(conductor)
    if header is None or len(chunks) != len(header.voices) + 2 or division != header.clock.ticks_per_beat:
        return None
    tracks = [conductor]
    notes: dict[int, VoiceNotes] = {}
    decoder = _VoiceDecoder(header)
    for voice, (offset, size) in zip(header.voices, chunks[1:-1], strict=True):
        f.seek(offset)
        decoded = decoder.decode(voice, f.read(size))
        if decoded is None:
            return None
        preamble, voice_notes, end_tick = decoded
        tracks.append([*preamble, (end_tick, END_OF_TRACK)])
        if len(voice_notes):
            notes[voice.index] = voice_notes
    tracks.append(_parse(f, *chunks[-1]))
    return tracks, division, notes


def _parse(f: IO[bytes], offset: int, size: int) -> list[tuple[int, bytes]]:
    f.seek(offset)
    data = f.read(size)
    return _read_track(data, 0, len(data))


def _header_of(conductor: list[tuple[int, bytes]]) -> ScoreHeader | None:
    from .scorefile import _embedded_records

    try:
        record, _ = _embedded_records("", [conductor])
        return ScoreHeader.from_dict(record) if record is not None else None
    except Exception:  # a damaged header: the general reader says what is wrong with it
        return None


class _VoiceDecoder:
    """Decodes voice tracks as ``MidiFileSink`` writes them: a fixed preamble, then on/off pairs."""

    def __init__(self, header: ScoreHeader) -> None:
        clock, mapping = header.clock, header.mapping
        self.header = header
        self.slot_ticks = clock.slot_ticks
        self.spans = [clock.note_span(v.index, len(header.voices)) for v in header.voices]
        scale = mapping.notes
        self.on_scale = np.zeros(128, dtype=bool)
        self.on_scale[scale] = True
        self.velocity_of = np.full(128, -1, dtype=np.int64)  # with velocity="norm", a pitch has one velocity
        if mapping.velocity == "norm":
            self.velocity_of[scale] = pitches_to_velocities(scale, mapping)

    def decode(self, voice: Voice, track: bytes) -> tuple[list[tuple[int, bytes]], VoiceNotes, int] | None:
        """(preamble events, notes, End of Track tick), or None where the track is not gradmidi's own."""
        program = bytes([0xC0 | voice.channel, voice.program])
        preamble = [(0, text_meta(0x03, voice.name)), (0, text_meta(0x04, voice.kind)), (0, program)]
        expected = b"".join(b"\x00" + event for _, event in preamble)
        if not track.startswith(expected) or not track.endswith(END_OF_TRACK):
            return None
        body = np.frombuffer(track, dtype=np.uint8)[len(expected):]
        records = _records(body)
        if records is None:
            return None
        ticks, status, key, velocity = records
        if status[-1] != 0xFF or key[-1] != 0x2F:  # the last record is the End of Track
            return None
        end_tick = int(ticks[-1])
        notes = self._notes(voice, ticks[:-1], status[:-1], key[:-1], velocity[:-1])
        return None if notes is None else (preamble, notes, end_tick)

    def _notes(self, voice: Voice, ticks: np.ndarray, status: np.ndarray, key: np.ndarray,
               velocity: np.ndarray) -> VoiceNotes | None:
        offset, length = self.spans[voice.index]
        if len(ticks) % 2:
            return None
        on, off = slice(0, None, 2), slice(1, None, 2)
        on_ticks = ticks[on]
        slots, place = np.divmod(on_ticks, self.slot_ticks)
        keys, velocities = key[on], velocity[on]
        expected_velocity = self.velocity_of[keys]
        if not (np.all(status[on] == 0x90 | voice.channel) and np.all(status[off] == 0x80 | voice.channel)
                and np.array_equal(key[off], keys) and not velocity[off].any() and velocities.all()
                and np.all(place == offset) and np.all(ticks[off] - on_ticks == length)
                and self.on_scale[keys].all()
                and np.all((expected_velocity < 0) | (expected_velocity == velocities))):
            return None
        size = int(slots[-1]) + 1 if len(slots) else 0
        grid = np.full(size, SILENT, dtype=np.int8)
        grid_velocity = np.zeros(size, dtype=np.uint8)
        grid[slots] = keys.view(np.int8)
        grid_velocity[slots] = velocities
        return VoiceNotes.on_grid(grid, grid_velocity)


def _records(body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(absolute ticks, status, first and second data byte) of a run of [VLQ delta][3-byte event]
    records, without running status; None where the bytes are not such a run.

    A status byte is high and followed by two low data bytes; a VLQ is high bytes closed by one low
    byte, and is followed by a status byte. So "high, low, low" marks the status bytes and nothing
    else. Each record then holds three low bytes where it must (its VLQ's last byte and its two data
    bytes); when the run holds no other low byte, every stretch between two events is one VLQ.
    """
    n = len(body)
    if n < 4:
        return None
    high = body >= 0x80
    low = ~high
    status_at = np.flatnonzero(high[:-2] & low[1:-1] & low[2:])
    if not len(status_at) or status_at[-1] != n - 3 or status_at[0] == 0:
        return None
    if high[status_at - 1].any() or np.count_nonzero(low) != 3 * len(status_at):
        return None
    width = np.diff(status_at, prepend=-3) - 3  # the bytes of each record's delta
    widest = int(width.max())
    if width.min() < 1 or widest > 4:
        return None
    deltas = (body[status_at - 1] & 0x7F).astype(np.int64)
    for j in range(2, widest + 1):  # byte j from the end of each delta: 7 more bits
        longer = np.flatnonzero(width >= j)
        deltas[longer] |= (body[status_at[longer] - j].astype(np.int64) & 0x7F) << (7 * (j - 1))
    return np.cumsum(deltas), body[status_at], body[status_at + 1], body[status_at + 2]
