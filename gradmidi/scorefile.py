"""Reading a score back: voices, notes, events, markers and the decoded norms.

gradmidi's own reader (``smf.read_smf``) parses; mido and pretty_midi are only for handing scores
over (``interop.py``). A score edited elsewhere still reads: by its header where that survived,
saying what changed; plain MIDI (no header) reads as voices from its tracks, without norms.
"""

from __future__ import annotations

import bisect
import operator
import os
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

import numpy as np

from .checks import pair, real, whole
from .clock import MAX_BPM, MIN_BPM, Clock
from .errors import GradmidiError
from .fastread import read_written
from .instruments import DRUM_CHANNEL, GM_PROGRAMS
from .mapping import Mapping, pitches_to_norms, pitches_to_velocities
from .score import SUMMARY, ScoreHeader, Voice
from .smf import (
    HEADER_TAG,
    RANGE_TAG,
    SMFError,
    meta_body,
    midi_text,
    parse_json_meta,
    parse_text_carrier,
    read_smf,
    tempo_map,
    ticks_to_seconds,
)
from .voicenotes import VoiceNotes

if TYPE_CHECKING:
    import mido
    import pretty_midi


@dataclass
class ScoreFile:
    """A score read back: its voice table, notes, events and markers, and what an editor changed.

    ``notes`` holds the notes that decode (voice -> (slot, pitch, velocity)); ``undecoded`` counts
    per voice those an editor moved or transposed; ``changes`` says in words what differs from what
    gradmidi wrote. ``decodable`` is False for MIDI without a gradmidi header: its voices then come
    from track names and programs, and its norms cannot be known.
    """

    path: Path | None
    header: ScoreHeader
    notes: dict[int, VoiceNotes] = field(default_factory=dict)  # voice -> its (slot, pitch, velocity) columns
    drums: list[tuple[int, str]] = field(default_factory=list)  # (slot, kind)
    markers: list[tuple[int, str]] = field(default_factory=list)  # (slot, text)
    ranges: list[tuple[int, tuple[float, float]]] = field(default_factory=list)  # (from slot, log range)
    last_slot: int = -1
    changes: list[str] = field(default_factory=list)
    undecoded: dict[int, int] = field(default_factory=dict)  # voice -> notes moved or transposed
    voice_channels: dict[int, int] = field(default_factory=dict)  # voice -> the channel it plays on in the file
    decodable: bool = True
    seconds: float | None = None  # the length as the file now plays, when its tempo was changed
    bpm: float | None = None  # the tempo it starts at then
    label: str = ""  # the path, or what stood for it (<bytes>, <mido.MidiFile>), for messages
    data: bytes = field(default=b"", repr=False)  # the file's bytes (to_mido), when read whole; else read again

    def __repr__(self) -> str:
        voices = len(self.header.voices)
        events = Counter(kind for _, kind in self.drums)
        heard = ", ".join(f"{kind} {n}" for kind, n in events.items()) or "no events"
        name = self.path.name if self.path else self.label
        edited = f", {len(self.changes)} change(s)" if self.changes else ""
        return (f"<ScoreFile {name} {self.header.title!r}: {voices} voice{'s' if voices != 1 else ''}, "
                f"{self.last_slot + 1} slots, {heard}{edited}>")

    def _repr_html_(self) -> str:
        """Jupyter shows a score as its plot and an audio player (see ``gradmidi.show``)."""
        from .notebook import score_html

        return score_html(self)

    def to_mido(self) -> mido.MidiFile:
        """The file as a ``mido.MidiFile``, every event and tick as read (edit it, save it, read it again)."""
        from .interop import to_mido

        return to_mido(self)

    def to_pretty_midi(self) -> pretty_midi.PrettyMIDI:
        """The score as ``pretty_midi.PrettyMIDI``: an Instrument per voice (its GM program and name), the
        drums as a drum instrument, markers as text events, times in seconds by the file's tempo map.
        The header rides along as a text event, so what pretty_midi writes still decodes."""
        from .interop import to_pretty_midi

        return to_pretty_midi(self)

    @property
    def clock(self):
        return self.header.clock

    def step_of(self, slot: int) -> int:
        return int(self.header.info.get("first_step", 0)) + slot * self.clock.every

    def log_range_at(self, slot: int) -> tuple[float, float]:
        starts = [s for s, _ in self.ranges]
        i = bisect.bisect_right(starts, slot) - 1
        return self.ranges[i][1]

    def steps_of(self, slots: np.ndarray) -> np.ndarray:
        return int(self.header.info.get("first_step", 0)) + np.asarray(slots, dtype=np.int64) * self.clock.every

    def norms_of(self, slots: np.ndarray, pitches: np.ndarray) -> np.ndarray:
        """The decoded norms of notes (slot and pitch arrays, slots sorted), each by the range in force."""
        norms = np.empty(len(slots), dtype=np.float64)
        starts = [s for s, _ in self.ranges]
        bounds = np.searchsorted(slots, starts[1:])  # where each later range takes over
        for (lo, hi), log_range in zip(zip([0, *bounds], [*bounds, len(slots)], strict=True),
                                       (r for _, r in self.ranges), strict=True):
            norms[lo:hi] = pitches_to_norms(pitches[lo:hi], log_range, self.header.mapping)
        return norms

    def _require_decodable(self) -> None:
        if not self.decodable:
            raise GradmidiError(f"{self.label}: no gradmidi header, so no norms can be decoded (the mapping "
                                "from norms to notes travels in the header)")

    def decoded_blocks(self, block_slots: int = 1 << 13):
        """(steps, voice indices, norms) arrays for every sounded note, in step then voice order, a block
        of slots at a time: a score of any length is decoded with a bounded amount of memory."""
        self._require_decodable()
        voices = [v.index for v in self.header.voices if len(self.notes.get(v.index, ()))]
        for first in range(0, self.last_slot + 1, block_slots):
            parts = [(*self.notes[v].window(first, first + block_slots), v) for v in voices]
            slots = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            if not len(slots):
                continue
            pitches = np.concatenate([p[1] for p in parts])
            which = np.concatenate([np.full(len(p[0]), p[2], dtype=np.int64) for p in parts])
            order = np.lexsort((which, slots))
            slots, pitches, which = slots[order], pitches[order], which[order]
            yield self.steps_of(slots), which, self.norms_of(slots, pitches)

    def decode(self) -> list[tuple[int, str, float]]:
        """(step, voice name, norm) for every sounded note, in step then voice order (notes an editor
        moved or transposed are left out: see ``undecoded``)."""
        names = [v.name for v in self.header.voices]
        return [(step, names[voice], norm) for steps, which, norms in self.decoded_blocks()
                for step, voice, norm in zip(steps.tolist(), which.tolist(), norms.tolist(), strict=True)]

    def write_csv(self, out: str | os.PathLike | IO[str]) -> int:
        """step, voice, norm rows (norms to 6 significant digits) to a file or an open text stream."""
        self._require_decodable()  # before a file is opened: an existing one is not emptied for nothing
        if isinstance(out, (str, os.PathLike)):
            with open(out, "w", newline="") as f:
                return self.write_csv(f)
        names = [_csv_field(v.name) for v in self.header.voices]
        out.write("step,voice,norm\r\n")  # csv's own line ending, as before
        rows = 0
        for steps, which, norms in self.decoded_blocks():
            # A block holds few distinct (voice, norm) pairs (a norm is one of the scale's notes):
            # each pair's text is made once, and a row is its step and that text.
            values, value_of = np.unique(norms, return_inverse=True)
            pairs, pair_of = np.unique(which * len(values) + value_of.ravel(), return_inverse=True)
            tails = [f",{names[pair // len(values)]},{values[pair % len(values)]:.6g}\r\n"
                     for pair in pairs.tolist()]
            rows_text = map(operator.add, map(str, steps.tolist()), map(tails.__getitem__, pair_of.ravel().tolist()))
            out.write("".join(rows_text))
            rows += len(steps)
        return rows

    def midi_bytes(self) -> bytes:
        """The file's bytes as read: kept by the general reader; read again from the file after the fast
        path, which never holds the file whole."""
        if self.data:
            return self.data
        if self.path is not None:
            return _file_bytes(self.path)
        raise GradmidiError("this ScoreFile holds no file bytes: read it with gradmidi.read_score")

    def summary(self) -> dict:
        """What ``gradmidi inspect`` shows: voices, pitch ranges, steps, events."""
        voices = []
        for v in self.header.voices:
            notes = self.notes.get(v.index, _NO_NOTES)
            pitch_range = notes.pitch_range()
            voices.append({
                "name": v.name, "channel": v.channel + 1, "program": v.program,
                "instrument": GM_PROGRAMS[v.program], "kind": v.kind, "layers": len(v.layers),
                "notes": len(notes), "undecoded": self.undecoded.get(v.index, 0),
                "pitch_range": list(pitch_range) if pitch_range else None,
            })
        kinds = Counter(kind for _, kind in self.drums)
        first: dict[str, int] = {}
        for slot, kind in self.drums:
            first.setdefault(kind, self.step_of(slot))
        clock = self.clock
        return {
            "file": self.label or str(self.path),
            "title": self.header.title,
            "model": self.header.info.get("model"),
            "steps": self.step_of(self.last_slot) + clock.every if self.last_slot >= 0 else 0,
            "slots": self.last_slot + 1,
            "every": clock.every,
            "bpm": round(self.bpm if self.bpm is not None else clock.bpm, 3),
            "seconds": round(self.seconds if self.seconds is not None else clock.seconds_of(self.last_slot + 1), 3),
            "scale": f"{self.header.mapping.key} {self.header.mapping.scale}",
            "voices": voices,
            "events": {kind: kinds.get(kind, 0) for kind in self.header.drums},  # every kind of the file's table
            "first_event_step": first,
            "markers": [[self.step_of(slot), text] for slot, text in self.markers],
            # the adaptive range's moves: from this step on, these norms span the register
            "range_changes": [{"step": self.step_of(slot), "norms": [10.0 ** lo, 10.0 ** hi]}
                              for slot, (lo, hi) in self.ranges[1:]],
            "decodable": self.decodable,
            "changes": list(self.changes),
        }


_NO_NOTES = VoiceNotes.from_tuples([])


def _csv_field(text: str) -> str:
    """A CSV field as the csv module writes it: quoted when it holds a comma, a quote or a line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


ScoreSource = Union[str, os.PathLike, bytes, bytearray, "mido.MidiFile"]


def load_tracks(path: str | os.PathLike) -> tuple[list[list[tuple[int, bytes]]], int]:
    """(tracks, ticks per beat) of any MIDI file; one-line GradmidiError when it cannot be read."""
    return parse_tracks(str(path), _file_bytes(Path(path)))


def parse_tracks(label: str, data: bytes) -> tuple[list[list[tuple[int, bytes]]], int]:
    """(tracks, ticks per beat) of SMF bytes; one-line GradmidiError naming ``label`` when unreadable."""
    try:
        _, division, tracks = read_smf(data)
    except SMFError as exc:
        raise GradmidiError(f"{label}: not a readable MIDI file ({exc})") from None
    except (IndexError, KeyError, struct.error):  # the parser ran off the end of the bytes, or met garbage
        raise GradmidiError(f"{label}: not a readable MIDI file (damaged: an event is cut short)") from None
    return tracks, division


def read_score(source: ScoreSource) -> ScoreFile:
    """Reads a score from a path, its bytes, or an open ``mido.MidiFile``.

    A gradmidi score decodes by its embedded header, also after editing (what no longer decodes
    is listed in ``changes``, never guessed); any other MIDI file reads as plain MIDI: voices from
    its tracks' names and programs, and no norms. One-line GradmidiError for anything unreadable.
    """
    if isinstance(source, (str, os.PathLike)):
        _check_file(Path(source))
        written = read_written(Path(source))  # a file exactly as gradmidi wrote it: decoded in numpy blocks
        if written is not None:
            skeleton, division, notes = written
            score = score_from_tracks(source, skeleton, division, label=str(source))
            score.notes = notes
            score.last_slot = max([score.last_slot, *(int(n.slots[-1]) for n in notes.values())])
            return score
    label, path, data = _source_bytes(source)
    tracks, division = parse_tracks(label, data)
    return score_from_tracks(path, tracks, division, data, label=label)


def _source_bytes(source: ScoreSource) -> tuple[str, Path | None, bytes]:
    """(label for messages, path or None, SMF bytes) of whatever ``read_score`` was given."""
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>", None, bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return str(source), Path(source), _file_bytes(Path(source))
    from .interop import mido_file_bytes

    data = mido_file_bytes(source)  # a mido.MidiFile, or a one-line error for anything else
    filename = getattr(source, "filename", None)
    return (str(filename) if filename else "<mido.MidiFile>"), None, data


def _file_bytes(path: Path) -> bytes:
    _check_file(path)
    return path.read_bytes()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise GradmidiError(f"{path}: no such file")
    if path.is_dir():
        raise GradmidiError(f"{path}: is a folder, not a MIDI file")
    if not path.stat().st_size:
        raise GradmidiError(f"{path}: an empty file, not a MIDI file (a run that never wrote its score?)")


def score_from_tracks(path: str | os.PathLike | None, tracks: list[list[tuple[int, bytes]]], division: int,
                      data: bytes = b"", *, label: str | None = None) -> ScoreFile:
    """The score in parsed tracks (``division``: the file's ticks per beat; ``data``: its bytes, kept
    for ``to_mido``). A gradmidi header decodes it; without one it is read as plain MIDI."""
    label = label or str(path)
    header_record, ranges = _embedded_records(label, tracks)
    if header_record is None:
        score = _plain_midi(label, tracks, division)
    else:
        try:
            header = ScoreHeader.from_dict(header_record)
        except (KeyError, TypeError, ValueError) as exc:
            raise GradmidiError(f"{label}: damaged gradmidi header ({exc})") from None
        score = _EditedScoreReader(label, header, tracks, division).read(ranges)
    score.path = Path(path) if path is not None else None
    score.label = label
    score.data = data
    return score


def _embedded_records(label: str, tracks) -> tuple[dict | None, list[tuple[int, tuple[float, float]]]]:
    """The header and the adaptive range changes: sequencer-specific events as gradmidi writes them,
    or text events carrying the same JSON (what ``to_pretty_midi`` leaves, since pretty_midi keeps
    only text)."""
    header = None
    ranges: list[tuple[int, tuple[float, float]]] = []
    for track in tracks:
        for _, event in track:
            if event[:2] == b"\xff\x7f":
                parsed = parse_json_meta(meta_body(event))
            elif event[:2] == b"\xff\x01":
                parsed = parse_text_carrier(meta_body(event))
            else:
                continue
            if parsed and parsed[0] == HEADER_TAG:
                header = parsed[1]
            elif parsed and parsed[0] == RANGE_TAG:
                ranges.append(_range_change(label, parsed[1]))
    return header, ranges


def _is_marker(event: bytes) -> bool:
    """A marker, or a text event that is not a gradmidi record (DAWs and pretty_midi write text)."""
    return event[:2] == b"\xff\x06" or (event[:2] == b"\xff\x01" and parse_text_carrier(meta_body(event)) is None)


def _track_names(tracks) -> list[str]:
    return [next((meta_body(e).decode("latin-1") for _, e in track if e[:2] == b"\xff\x03"), "")
            for track in tracks]


class _EditedScoreReader:
    """Reads a gradmidi score by its header, saying what an editor changed since gradmidi wrote it.

    A note decodes to a norm only where gradmidi could have put it: on its voice's place in a
    slot, on the mapping's scale and register, once per slot (and, with ``velocity="norm"``, at
    its pitch's velocity). Anything else was moved or transposed: it is counted, not decoded.
    """

    def __init__(self, label: str, header: ScoreHeader, tracks, division: int) -> None:
        self.label, self.header, self.tracks, self.division = label, header, tracks, division
        self.changes: list[str] = []
        self.retimed = False  # the file plays at another tempo than the run's clock

    def read(self, ranges: list[tuple[int, tuple[float, float]]]) -> ScoreFile:
        header, clock, mapping = self.header, self.header.clock, self.header.mapping
        lo, hi = mapping.norm_range
        ranges = [(0, (float(np.log10(lo)), float(np.log10(hi))))] + sorted(ranges)
        voice_of_channel = self._voices_by_channel()
        kind_of_key = {key: kind for kind, key in header.drums.items()}  # the file's own table, not ours
        offsets = {v.index: clock.note_span(v.index, len(header.voices))[0] for v in header.voices}
        scale_notes = mapping.notes
        velocity_of = dict(zip(scale_notes.tolist(), pitches_to_velocities(scale_notes, mapping).tolist(), strict=True))
        fixed_velocity = mapping.velocity != "norm"  # with "norm", a pitch has one velocity: a moved key shows
        scale = (clock.ticks_per_beat, self.division)  # file ticks -> the clock's ticks
        markers, drums = [], []
        notes: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        moved: Counter[int] = Counter()
        off_scale: Counter[int] = Counter()
        moved_drums = 0
        last_slot = -1
        slot_ticks = clock.slot_ticks
        rescale = scale[0] != scale[1]
        spread_drums = SUMMARY in header.info  # a summary's hits sit at their steps' places in a slot
        programs: dict[int, int] = {}  # channel -> its first program change
        for track in self.tracks:
            for file_tick, event in track:
                status = event[0]
                if status == 0xFF:
                    if _is_marker(event):
                        markers.append((file_tick * scale[0] // scale[1] // slot_ticks,
                                        meta_body(event).decode("latin-1")))
                    elif event[1] == 0x2F and file_tick > 0:
                        last_slot = max(last_slot, file_tick * scale[0] // scale[1] // slot_ticks - 1)
                    continue
                if status & 0xF0 == 0xC0:
                    programs.setdefault(status & 0x0F, event[1])
                    continue
                if status & 0xF0 != 0x90 or not event[2]:
                    continue
                tick, exact = divmod(file_tick * scale[0], scale[1]) if rescale else (file_tick, 0)
                slot, place = divmod(tick, slot_ticks)
                if slot > last_slot:
                    last_slot = slot
                channel = status & 0x0F
                if channel == DRUM_CHANNEL:
                    if exact or (place and not spread_drums):
                        moved_drums += 1
                        continue
                    kind = kind_of_key.get(event[1])  # None: the epoch downbeat, or no event
                    if kind is not None:
                        drums.append((slot, kind))
                elif channel in voice_of_channel:
                    voice = voice_of_channel[channel]
                    if exact or place != offsets[voice]:
                        moved[voice] += 1
                    elif event[1] not in velocity_of or not (fixed_velocity or velocity_of[event[1]] == event[2]):
                        off_scale[voice] += 1
                    else:
                        notes[voice].append((slot, event[1], event[2]))
        suspect = Counter({voice: len(notes.pop(voice, [])) for voice in off_scale})  # transposed too, maybe
        for voice, entries in notes.items():
            entries.sort()
            slots = [slot for slot, _, _ in entries]
            if any(map(operator.eq, slots, slots[1:])):  # gradmidi sounds a voice once a slot: notes were added
                kept = _alone_in_their_slot(entries)
                moved[voice] += len(entries) - len(kept)
                notes[voice] = kept
        drums.sort()
        markers.sort(key=lambda m: m[0])
        present = self._say_voices(voice_of_channel, programs, set(moved) | set(off_scale) | set(suspect) | set(notes))
        self._say_moved(moved, off_scale, suspect, moved_drums)
        self._say_timing()
        undecoded = dict(moved + off_scale + suspect)
        columns = {voice: VoiceNotes.from_tuples(entries) for voice, entries in notes.items()}
        score = ScoreFile(None, header, columns, drums, markers, ranges, last_slot, changes=self.changes,
                          undecoded=undecoded, voice_channels=present)
        if self.retimed:
            score.seconds, score.bpm = self._played_length(last_slot)
        return score

    def _voices_by_channel(self) -> dict[int, int]:
        """channel -> voice. By the header's channels; a track named after a voice plays that voice
        wherever it went (pretty_midi renumbers channels when instruments are deleted)."""
        voices = self.header.voices
        by_channel = {v.channel: v.index for v in voices}
        by_name: dict[str, int] = {}
        for v in voices:
            name = midi_text(v.name).decode("latin-1")
            by_name[name] = -1 if name in by_name else v.index  # a name two voices share decides nothing
        for name, track in zip(_track_names(self.tracks), self.tracks, strict=True):
            voice = by_name.get(name, -1)
            channel = next((e[0] & 0x0F for _, e in track if 0x80 <= e[0] < 0xF0), None)  # the track's first
            if voice >= 0 and channel not in (None, DRUM_CHANNEL, voices[voice].channel):
                by_channel[channel] = voice
        return by_channel

    def _say_voices(self, by_channel: dict[int, int], programs: dict[int, int], sounded: set[int]) -> dict[int, int]:
        """Says which voices' tracks are gone and which play another program; returns voice -> channel
        of the voices still in the file (a voice track holds its program change, even when silent)."""
        present: dict[int, int] = {}
        for channel, index in by_channel.items():
            if channel in programs or index in sounded:
                present[index] = channel
        for v in self.header.voices:
            if v.index not in present:
                self.changes.append(f"voice {v.name!r} (channel {v.channel + 1}): its track is gone (deleted "
                                    "or muted), so are its norms")
            elif programs.get(present[v.index], v.program) != v.program:
                now = programs[present[v.index]]
                self.changes.append(f"voice {v.name!r}: plays program {now} {GM_PROGRAMS[now]} "
                                    f"(gradmidi wrote {v.program} {GM_PROGRAMS[v.program]})")
        return present

    def _say_moved(self, moved: Counter[int], off_scale: Counter[int], suspect: Counter[int],
                   moved_drums: int) -> None:
        for voice in self.header.voices:
            parts = []
            if moved[voice.index]:
                parts.append(f"{moved[voice.index]} note(s) moved off its place in the step grid")
            if off_scale[voice.index]:
                parts.append(f"{off_scale[voice.index]} note(s) off the score's scale or register (transposed?)")
            if off_scale[voice.index]:
                self.changes.append(f"voice {voice.name!r}: {' and '.join(parts)}: none of its norms are decoded "
                                    f"(its {suspect[voice.index]} note(s) on the scale may be transposed too)")
            elif parts:
                self.changes.append(f"voice {voice.name!r}: {' and '.join(parts)}: their norms are not decoded")
        if moved_drums:
            self.changes.append(f"{moved_drums} drum hit(s) moved off the step grid: not read as events")

    def _say_timing(self) -> None:
        clock = self.header.clock
        if self.division != clock.ticks_per_beat:
            self.changes.append(f"resolution changed: {self.division} ticks per beat "
                                f"(gradmidi wrote {clock.ticks_per_beat}); read on the run's grid")
        tempos = set(dict(tempo_map(self.tracks)).values())  # at one tick, the last change is the one in force
        if any(abs(tempo - clock.tempo_us) > 1 for tempo in tempos):  # tools round tempos by a microsecond
            bpms = sorted(round(60e6 / t, 2) for t in tempos)
            now = f"{bpms[0]:g} bpm" if len(bpms) == 1 else f"{len(bpms)} tempos, {bpms[0]:g}-{bpms[-1]:g} bpm"
            self.changes.append(f"tempo changed: plays at {now} (gradmidi wrote {clock.bpm:g} bpm); "
                                "steps and norms are read as before")
            self.retimed = True

    def _played_length(self, last_slot: int) -> tuple[float, float]:
        """(seconds, starting bpm) as the file now plays, after its tempo was changed."""
        tempos = tempo_map(self.tracks)
        end = (last_slot + 1) * self.header.clock.slot_ticks * self.division // self.header.clock.ticks_per_beat
        return float(ticks_to_seconds([end], tempos, self.division)[0]), 60e6 / dict(tempos)[0]


def _alone_in_their_slot(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The sorted (slot, pitch, velocity) entries whose slot holds no other note."""
    slots = [slot for slot, _, _ in entries]
    return [entry for i, entry in enumerate(entries)
            if (i == 0 or slots[i - 1] != entry[0]) and (i + 1 == len(slots) or slots[i + 1] != entry[0])]


def _plain_midi(label: str, tracks, division: int) -> ScoreFile:
    """A MIDI file with no gradmidi header (gradmidi never wrote it, or an editor dropped the header):
    a voice per melodic channel, named and programmed by its track; one step per sixteenth note."""
    names = _track_names(tracks)
    voices: dict[int, tuple[str, str, int]] = {}  # channel -> (name, kind, program)
    notes: dict[int, list[tuple[int, int, int]]] = {}
    drum_hits = 0
    tempos = tempo_map(tracks)
    bpm = min(max(60e6 / tempos[1][1] if len(tempos) > 1 and tempos[1][0] == 0 else 120.0, MIN_BPM), MAX_BPM * 4)
    ticks_per_beat = min(max(division, 24), 0x7FFF)
    clock = Clock(bpm=bpm, ticks_per_beat=ticks_per_beat)
    programs: dict[int, int] = {}
    markers = []
    last_slot = -1
    for name, track in zip(names, tracks, strict=True):
        kind = next((meta_body(e).decode("latin-1") for _, e in track if e[:2] == b"\xff\x04"), "") or "unknown"
        for tick, event in track:
            status = event[0]
            slot = tick * ticks_per_beat // division // clock.slot_ticks
            if status & 0xF0 == 0xC0:
                programs.setdefault(status & 0x0F, event[1])
            elif status & 0xF0 == 0x90 and event[2] > 0:
                channel = status & 0x0F
                last_slot = max(last_slot, slot)
                if channel == DRUM_CHANNEL:
                    drum_hits += 1
                    continue
                voices.setdefault(channel, (name or f"channel {channel + 1}", kind, 0))
                notes.setdefault(channel, []).append((slot, event[1], event[2]))
            elif _is_marker(event):
                markers.append((slot, meta_body(event).decode("latin-1")))
    if not voices and not drum_hits:
        raise GradmidiError(f"{label}: a MIDI file with no notes and no gradmidi header: nothing to read")
    table = tuple(Voice(i, name, (name,), kind, channel, programs.get(channel, 0))
                  for i, (channel, (name, kind, _)) in enumerate(sorted(voices.items())))
    header = ScoreHeader(table, Mapping(), clock, title=names[0] if names and names[0] else Path(label).stem,
                         info={}, drums={})
    changes = ["no gradmidi header (an editor dropped it, or gradmidi did not write this file): voices are "
               "read from track names and programs, one step per sixteenth note; norms and events cannot be "
               "decoded"]
    if drum_hits:
        changes.append(f"{drum_hits} drum hit(s): not read as events without the header")
    for entries in notes.values():
        entries.sort()
    markers.sort(key=lambda m: m[0])
    lo, hi = header.mapping.norm_range
    score = ScoreFile(None, header, {v.index: VoiceNotes.from_tuples(notes[v.channel]) for v in table}, [], markers,
                      [(0, (float(np.log10(lo)), float(np.log10(hi))))], last_slot, changes=changes, decodable=False,
                      voice_channels={v.index: v.channel for v in table})
    score.seconds = float(ticks_to_seconds([(last_slot + 1) * clock.slot_ticks * division // ticks_per_beat],
                                           tempos, division)[0])
    return score


def _range_change(label: str, record) -> tuple[int, tuple[float, float]]:
    """(slot, log range) of an adaptive range change; one-line error when damaged."""
    try:
        slot = whole("range slot", record["slot"], 0, 2**53)
        lo, hi = (real("log range", v, -300, 300) for v in pair("log range", record["log_range"]))
    except (KeyError, TypeError, GradmidiError) as exc:
        raise GradmidiError(f"{label}: damaged range change in the score ({exc})") from None
    if not lo < hi:
        raise GradmidiError(f"{label}: damaged range change in the score (log range {lo} >= {hi})")
    return slot, (lo, hi)

