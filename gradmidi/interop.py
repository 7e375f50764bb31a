"""Scores handed to and taken from mido and pretty_midi, the tools Python's MIDI users already have.

gradmidi reads and writes its own SMF bytes (fast, bounded: ``smf.py``); these conversions are for
analysis and editing elsewhere, and import mido or pretty_midi only when called.
"""

from __future__ import annotations

import io
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

from .errors import GradmidiError
from .instruments import DRUM_CHANNEL
from .smf import (
    HEADER_TAG,
    RANGE_TAG,
    encode_smf,
    meta_body,
    midi_text,
    parse_json_meta,
    read_smf,
    tempo_map,
    text_carrier,
    ticks_to_seconds,
)

if TYPE_CHECKING:
    import mido
    import pretty_midi

    from .scorefile import ScoreFile

CONDUCTOR_METAS = (b"\xff\x51", b"\xff\x58", b"\xff\x59")  # tempo, time signature, key signature


def import_mido() -> Any:
    try:
        import mido
    except ImportError:
        raise GradmidiError("this needs mido: pip install mido") from None
    return mido


def import_pretty_midi() -> Any:
    try:
        import pretty_midi
    except ImportError:
        raise GradmidiError("to_pretty_midi needs pretty_midi: pip install 'gradmidi[pretty_midi]'") from None
    return pretty_midi


def mido_file_bytes(midi: object) -> bytes:
    """The SMF bytes of an open ``mido.MidiFile`` (as ``MidiFile.save`` writes them)."""
    mido = import_mido()
    if not isinstance(midi, mido.MidiFile):
        raise GradmidiError(f"read_score takes a path, the file's bytes or a mido.MidiFile, not {midi!r:.80}")
    out = io.BytesIO()
    try:
        midi.save(file=out)
    except (ValueError, TypeError, KeyError) as exc:  # a message mido cannot encode (a user's edit)
        raise GradmidiError(f"mido cannot write this MidiFile: {exc}") from None
    return out.getvalue()


def to_mido(score: ScoreFile) -> mido.MidiFile:
    """The score's own bytes parsed by mido: every event and tick as it is in the file."""
    mido = import_mido()
    try:
        return mido.MidiFile(file=io.BytesIO(_data(score)))
    except (ValueError, EOFError, KeyError, IndexError, OSError) as exc:
        raise GradmidiError(f"{score.label}: mido cannot read this file ({exc})") from None


def to_pretty_midi(score: ScoreFile) -> pretty_midi.PrettyMIDI:
    """An Instrument per voice (by the header's names and programs), one per other melodic channel
    the file plays, the drums last; markers and text as text events, lyrics as lyrics. The header and
    range changes ride as text events (``smf.text_carrier``): pretty_midi drops sequencer-specific
    events, and a score it writes then still decodes."""
    pm_lib = import_pretty_midi()
    _, division, tracks = read_smf(_data(score))
    tempos = tempo_map(tracks)
    pm = _with_tempo_map(pm_lib, score.label, tracks, division)

    def seconds(ticks: list[int]) -> list[float]:
        return ticks_to_seconds(ticks, tempos, division).tolist() if ticks else []

    per_channel = _channel_parts(tracks)
    # Every voice in order, even one whose track was deleted, so pretty_midi's channel numbering
    # (the n-th instrument on the n-th melodic channel) keeps gradmidi's; then channels no voice has.
    voices = {score.voice_channels.get(v.index, v.channel): v for v in score.header.voices}
    channels = list(voices) + sorted(set(per_channel) - set(voices) - {DRUM_CHANNEL})
    if DRUM_CHANNEL in per_channel:
        channels.append(DRUM_CHANNEL)
    for channel in channels:
        part = per_channel.get(channel, _Part())
        voice = voices.get(channel)
        program = part.program if part.program is not None else voice.program if voice else 0
        name = "events" if channel == DRUM_CHANNEL else voice.name if voice else part.name
        instrument = pm_lib.Instrument(program=program, is_drum=channel == DRUM_CHANNEL, name=_latin1(name))
        starts, ends = seconds([n[0] for n in part.notes]), seconds([n[1] for n in part.notes])
        instrument.notes = [pm_lib.Note(velocity=vel, pitch=key, start=s, end=e)
                            for (_, _, key, vel), s, e in zip(part.notes, starts, ends, strict=True)]
        instrument.control_changes = [pm_lib.ControlChange(number=n, value=v, time=t)
                                      for (_, n, v), t in zip(part.controls, seconds([c[0] for c in part.controls]),
                                                              strict=True)]
        instrument.pitch_bends = [pm_lib.PitchBend(pitch=b, time=t)
                                  for (_, b), t in zip(part.bends, seconds([b[0] for b in part.bends]), strict=True)]
        pm.instruments.append(instrument)
    for tick, kind, text in _texts(tracks):
        (pm.lyrics if kind == "lyrics" else pm.text_events).append(
            (pm_lib.Lyric if kind == "lyrics" else pm_lib.Text)(text, float(seconds([tick])[0])))
    return pm


class _Part:
    """One channel's notes (start tick, end tick, key, velocity), controllers and bends, and its track."""

    def __init__(self) -> None:
        self.notes: list[tuple[int, int, int, int]] = []
        self.controls: list[tuple[int, int, int]] = []
        self.bends: list[tuple[int, int]] = []
        self.program: int | None = None
        self.name = ""


def _channel_parts(tracks: list[list[tuple[int, bytes]]]) -> dict[int, _Part]:
    parts: dict[int, _Part] = defaultdict(_Part)
    end = max((tick for track in tracks for tick, _ in track[-1:]), default=0)
    for track in tracks:
        name = next((_text(e) for _, e in track if e[:2] == b"\xff\x03"), "")
        sounding: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        for tick, e in track:
            kind, channel = e[0] & 0xF0, e[0] & 0x0F
            if e[0] >= 0xF0:
                continue
            part = parts[channel]
            part.name = part.name or name
            if kind == 0x90 and e[2] > 0:
                sounding[(channel, e[1])].append((tick, e[2]))
            elif kind in (0x80, 0x90) and sounding[(channel, e[1])]:
                start, velocity = sounding[(channel, e[1])].popleft()  # the earliest open note of that key
                part.notes.append((start, tick, e[1], velocity))
            elif kind == 0xB0:
                part.controls.append((tick, e[1], e[2]))
            elif kind == 0xE0:
                part.bends.append((tick, (e[1] | e[2] << 7) - 8192))
            elif kind == 0xC0 and part.program is None:
                part.program = e[1]
        for (channel, key), left in sounding.items():  # never ended in the file: they last to its end
            parts[channel].notes += [(start, max(end, start + 1), key, velocity) for start, velocity in left]
    for part in parts.values():
        part.notes.sort()
    return {channel: part for channel, part in parts.items() if part.notes or part.controls or part.bends}


def _texts(tracks: list[list[tuple[int, bytes]]]) -> list[tuple[int, str, str]]:
    """(tick, 'text' or 'lyrics', text): markers and text events, lyrics, and gradmidi's records as text."""
    out = []
    for track in tracks:
        for tick, e in track:
            if e[:2] in (b"\xff\x01", b"\xff\x06"):
                out.append((tick, "text", _text(e)))
            elif e[:2] == b"\xff\x05":
                out.append((tick, "lyrics", _text(e)))
            elif e[:2] == b"\xff\x7f":
                record = parse_json_meta(meta_body(e))
                if record and record[0] in (HEADER_TAG, RANGE_TAG):
                    out.append((tick, "text", text_carrier(*record)))
    return sorted(out, key=lambda item: item[0])


def _with_tempo_map(pm_lib: Any, label: str, tracks: list[list[tuple[int, bytes]]], division: int) -> Any:
    """An empty PrettyMIDI at the file's resolution, with its tempo, time and key signatures: loaded from
    those events alone through pretty_midi's public reader (it has no API to add tempo changes)."""
    conductor = sorted(((t, e) for track in tracks for t, e in track if e[:2] in CONDUCTOR_METAS),
                       key=lambda item: item[0]) or [(0, b"\xff\x51\x03\x07\xa1\x20")]  # 120 bpm
    try:
        return pm_lib.PrettyMIDI(io.BytesIO(encode_smf([conductor], division)))
    except Exception as exc:  # mido and pretty_midi raise their own types for damaged tempo or key events
        raise GradmidiError(f"{label}: pretty_midi cannot take this file's tempo map ({exc})") from None


def _latin1(name: str) -> str:
    """A name mido can write as a track name (latin-1): others are folded, as gradmidi's own tracks."""
    return midi_text(name).decode("latin-1")


def _data(score: ScoreFile) -> bytes:
    return score.midi_bytes()


def _text(event: bytes) -> str:
    return meta_body(event).decode("latin-1")
