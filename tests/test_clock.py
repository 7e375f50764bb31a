"""Time: steps -> slots -> ticks and seconds, duration fitting, arpeggios."""

from __future__ import annotations

import math

import mido
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.clock import MAX_BPM, Clock


@pytest.mark.parametrize("seconds, steps", [(60, 200), (30, 5_000), (120, 1_000_000), (10, 7)])
def test_duration_fits_a_run_into_about_that_many_seconds(seconds, steps):
    clock = Clock.for_duration(seconds, steps)
    played = clock.seconds_of(math.ceil(steps / clock.every))
    assert clock.bpm <= MAX_BPM
    assert played == pytest.approx(seconds, rel=0.05) or clock.bpm == 20.0


def test_default_slot_is_a_sixteenth_at_120_bpm():
    clock = Clock()
    assert clock.slot_ticks == 120 and clock.slot_seconds == pytest.approx(0.125)
    assert clock.tempo_us == 500_000


def test_arpeggio_spreads_voices_inside_their_slot_and_decodes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    path = tmp_path / "arp.mid"
    with gradmidi.Sonifier(model, path, arpeggio=True) as son:
        for _ in range(8):
            model.zero_grad()
            model(torch.randn(2, 4)).sum().backward()
            son.step()
    midi = mido.MidiFile(path)
    onsets = {}
    for track in midi.tracks[1:4]:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on":
                onsets.setdefault(track.name, []).append(tick)
    assert onsets["0"][:2] == [0, 120] and onsets["1"][:2] == [40, 160] and onsets["2"][:2] == [80, 200]
    rows = gradmidi.read_score(path).decode()
    assert sorted({step for step, _, _ in rows}) == list(range(8))


def test_duration_option_on_the_sonifier_sets_the_tempo(tmp_path):
    model = nn.Linear(2, 2)
    path = tmp_path / "fit.mid"
    with gradmidi.Sonifier(model, path, duration=10.0, total_steps=400) as son:
        for _ in range(400):
            model.zero_grad()
            model(torch.randn(1, 2)).sum().backward()
            son.step()
    summary = gradmidi.read_score(path).summary()
    assert summary["seconds"] == pytest.approx(10.0, rel=0.05)
    assert mido.MidiFile(path).length == pytest.approx(10.0, rel=0.05)


def test_duration_without_total_steps_is_refused():
    with pytest.raises(gradmidi.GradmidiError, match="total_steps"):
        gradmidi.Sonifier(nn.Linear(2, 2), None, duration=30)
