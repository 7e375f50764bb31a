"""The fast score reader: a file exactly as gradmidi wrote it is decoded in numpy blocks, and reads
the same as the general (edited-score) reader; anything else falls back to that reader."""

from __future__ import annotations

import csv
import io
import struct

import mido
import numpy as np

import gradmidi
from gradmidi.fastread import read_written
from gradmidi.smf import read_smf, vlq
from scorekit import make_score

LAYERS = [("conv1", "Conv2d"), ("conv,2", "Conv2d"), ("fc1", "Linear"), ("fc2", "Linear")]


def _eventful(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Norms that wander, spike, go NaN and Inf, with a layer silent some steps."""
    norms = np.array([0.01, 0.1, 1.0, 3.0]) * (1 + 0.3 * np.sin(step / 7 + np.arange(4)))
    if step % 97 == 40:
        norms[1] *= 1e4
    if step in (300, 301):
        norms[2] = np.nan
    if step == 350:
        norms[0] = np.inf
    present = np.ones(4, bool)
    present[3] = step % 5 != 0
    return norms, present


def _written(tmp_path, steps=600):
    return make_score(tmp_path / "run.mid", LAYERS, _eventful, steps)


def test_a_score_gradmidi_wrote_reads_by_the_fast_path_as_the_general_reader_reads_it(tmp_path):
    path = _written(tmp_path)
    assert read_written(path) is not None  # recognised as exactly what gradmidi writes
    fast, general = gradmidi.read_score(path), gradmidi.read_score(path.read_bytes())
    assert fast.notes == general.notes and len(fast.notes) == 4
    assert fast.drums == general.drums and {k for _, k in fast.drums} >= {"nan", "inf", "spike"}
    assert fast.markers == general.markers and fast.ranges == general.ranges
    assert fast.last_slot == general.last_slot == 599
    assert fast.changes == general.changes == []
    assert {**fast.summary(), "file": ""} == {**general.summary(), "file": ""}
    assert fast.decode() == general.decode()


def test_a_voice_track_an_editor_touched_is_read_by_the_general_reader_which_says_so(tmp_path):
    path = _written(tmp_path)
    midi = mido.MidiFile(path)
    track = midi.tracks[2]
    first_on = next(i for i, m in enumerate(track) if m.type == "note_on")
    track[first_on] = track[first_on].copy(time=track[first_on].time + 7)  # one note moved off the grid
    track[first_on + 1] = track[first_on + 1].copy(time=max(0, track[first_on + 1].time - 7))
    edited = tmp_path / "edited.mid"
    midi.save(edited)
    assert read_written(edited) is None
    score = gradmidi.read_score(edited)
    assert any("moved off its place" in change for change in score.changes)
    assert score.undecoded == {1: 1}


def test_running_status_and_note_on_offs_are_read_by_the_general_reader_as_the_same_notes(tmp_path):
    path = _written(tmp_path, 50)
    _, division, tracks = read_smf(path.read_bytes())
    (tmp_path / "compact.mid").write_bytes(_running_status_smf(tracks, division))  # as many tools write notes
    assert read_written(tmp_path / "compact.mid") is None
    compact = gradmidi.read_score(tmp_path / "compact.mid")
    assert compact.notes == gradmidi.read_score(path).notes and compact.changes == []


def _running_status_smf(tracks, division: int) -> bytes:
    """Note-offs as note-ons of velocity 0, and each status byte written only when it changes."""
    out = [b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), division)]
    for track in tracks:
        body, last, status = bytearray(), 0, None
        for tick, event in track:
            if event[0] & 0xF0 == 0x80:
                event = bytes([0x90 | event[0] & 0x0F, event[1], 0])
            body += vlq(tick - last)
            last = tick
            if event[0] < 0xF0 and event[0] == status:
                body += event[1:]
            else:
                body += event
                status = event[0] if event[0] < 0xF0 else None
        out.append(b"MTrk" + struct.pack(">I", len(body)) + bytes(body))
    return b"".join(out)


def test_csv_is_what_the_csv_module_writes_of_the_decoded_rows(tmp_path):
    score = gradmidi.read_score(_written(tmp_path))
    ours = io.StringIO()
    rows = score.write_csv(ours)
    expected = io.StringIO()
    writer = csv.writer(expected)
    writer.writerow(["step", "voice", "norm"])
    for step, name, norm in score.decode():
        writer.writerow([step, name, f"{norm:.6g}"])
    assert rows == len(score.decode()) and ours.getvalue() == expected.getvalue()
    assert '"conv,2"' in ours.getvalue()  # a name holding a comma is quoted


def test_decoding_goes_a_bounded_block_of_slots_at_a_time(tmp_path):
    score = gradmidi.read_score(_written(tmp_path))
    blocks = list(score.decoded_blocks(block_slots=64))
    assert len(blocks) == 10  # 600 slots in blocks of 64
    assert all(len(steps) <= 64 * 4 for steps, _, _ in blocks)
    steps = np.concatenate([s for s, _, _ in blocks])
    assert np.all(np.diff(steps) >= 0)
