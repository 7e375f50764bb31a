"""Scores rendered to audio through real FluidSynth with gradmidi's own SoundFont."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pyloudnorm
import pytest
import soundfile

import gradmidi
from gradmidi.fonts import bundled_soundfont
from gradmidi.render import TAIL_SECONDS, read_timeline, render, render_parallel, render_timeline
from scorekit import make_score

RATE = 44100
SLOT = 0.125  # a sixteenth at 120 bpm


def steady(n_layers: int, value: float = 0.1):
    return lambda step: (np.full(n_layers, value * (1 + 0.3 * (step % 3))), np.ones(n_layers, bool))


@pytest.fixture(scope="module")
def melody(tmp_path_factory) -> Path:
    """Four voices of two kinds, 64 steps: 8 s of music."""
    path = tmp_path_factory.mktemp("melody") / "melody.mid"
    layers = [("conv1", "Conv2d"), ("conv2", "Conv2d"), ("fc1", "Linear"), ("fc2", "Linear")]
    return make_score(path, layers, steady(4), 64)


def test_render_is_audible_at_the_target_loudness_and_as_long_as_the_score(melody, tmp_path):
    out = tmp_path / "melody.wav"
    result = render(melody, out)
    audio, rate = soundfile.read(out)
    assert rate == RATE and audio.ndim == 2
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
    assert len(audio) / rate == pytest.approx(64 * SLOT + TAIL_SECONDS, abs=1 / rate)
    assert result.seconds == pytest.approx(len(audio) / rate)
    loudness = pyloudnorm.Meter(rate).integrated_loudness(audio)
    assert loudness == pytest.approx(-16.0, abs=0.5) or np.max(np.abs(audio)) >= 10 ** (-1.05 / 20)
    assert np.max(np.abs(audio)) <= 10 ** (-1 / 20) + 1e-4


def test_drum_events_sound_at_their_score_times(tmp_path):
    """Only events sound here (every voice is NaN/Inf or absent), so each onset is a drum hit."""
    nan_steps, inf_steps = {8, 40}, {24}

    def norms(step):
        if step in nan_steps:
            return np.array([np.nan]), np.array([True])
        if step in inf_steps:
            return np.array([np.inf]), np.array([True])
        return np.array([np.nan]), np.array([False])

    score = make_score(tmp_path / "drums.mid", [("fc", "Linear")], norms, 56)
    assert {kind for _, kind in gradmidi.read_score(score).drums} == {"nan", "inf"}
    audio = render_timeline(read_timeline(score), bundled_soundfont()).mean(axis=1)
    frame = int(0.001 * RATE)
    energy = np.add.reduceat(audio**2, np.arange(0, len(audio), frame))
    loud = energy > energy.max() * 1e-3
    onsets, last = [], -1000
    for i in np.flatnonzero(loud):  # a loud frame after at least 30 ms of quiet starts a hit
        if i - last > 30:
            onsets.append(i)
        last = i
    onset_seconds = np.array(onsets) * frame / RATE
    expected = sorted(step * SLOT for step in nan_steps | inf_steps)
    assert len(onset_seconds) == len(expected), onset_seconds
    assert np.allclose(onset_seconds, expected, atol=0.004)


def _band_profile(audio: np.ndarray) -> np.ndarray:
    mono = audio.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono))
    freqs = np.fft.rfftfreq(len(mono), 1 / RATE)
    edges = 100 * 2 ** np.arange(0, 7.4, 1 / 3)
    bands = np.array([spectrum[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    return bands / bands.sum()


@pytest.mark.parametrize("other", ["Linear", "LayerNorm", "Embedding", "MultiheadAttention", "LSTM"])
def test_voices_of_different_layer_kinds_differ_in_spectrum(tmp_path, other):
    """The same norms on a convolution voice and on another kind: third-octave spectra differ."""
    profiles = {}
    for cls in ("Conv2d", other):
        score = make_score(tmp_path / f"{cls}.mid", [("x", cls)], steady(1), 32)
        profiles[cls] = _band_profile(render_timeline(read_timeline(score), bundled_soundfont()))
    assert np.abs(profiles["Conv2d"] - profiles[other]).sum() > 0.3


def test_parallel_render_equals_the_single_render(melody):
    timeline = read_timeline(melody)
    single = render_timeline(timeline, bundled_soundfont())
    reported: list[float] = []
    mixed = render_parallel(timeline, bundled_soundfont(), RATE, TAIL_SECONDS, jobs=2, progress=reported.append)
    assert mixed.shape == single.shape
    # Stated tolerance: the mix of channel groups equals the single render within 1e-5 of full scale.
    assert np.max(np.abs(mixed - single)) <= 1e-5
    # Progress is the slowest thread's: it never goes back, and ends at the render's length.
    assert reported == sorted(reported) and reported[-1] == pytest.approx(len(single) / RATE)


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_flac_and_ogg_by_suffix(melody, tmp_path, suffix):
    out = tmp_path / f"melody{suffix}"
    render(melody, out)
    info = soundfile.info(out)
    assert info.format == suffix[1:].upper() and info.duration == pytest.approx(64 * SLOT + TAIL_SECONDS, abs=0.05)


def test_sonifier_renders_audio_when_the_run_closes(tmp_path):
    import torch
    import torch.nn as nn

    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 2))
    with gradmidi.Sonifier(model, tmp_path / "run.mid", audio=tmp_path / "run.wav") as son:
        for _ in range(16):
            model.zero_grad()
            model(torch.randn(4, 1, 8)).pow(2).mean().backward()
            son.step()
    audio, _ = soundfile.read(tmp_path / "run.wav")
    assert len(audio) == pytest.approx((16 * SLOT + TAIL_SECONDS) * RATE, abs=1)


def test_cli_render_writes_audio_and_reports_it(melody, tmp_path):
    out = tmp_path / "cli.wav"
    result = subprocess.run([sys.executable, "-m", "gradmidi", "render", str(melody), "-o", str(out), "--json"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"loudness_lufs": -16.0' in result.stdout and out.exists()


# ---------------------------------------------------------------- errors
def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.suffix in (".tmp", ".wav", ".flac", ".ogg")]


def test_font_that_fluidsynth_cannot_load_is_named(melody, tmp_path):
    broken = tmp_path / "broken.sf2"
    broken.write_bytes(bundled_soundfont().read_bytes()[:400_000])  # the preset data is cut off
    with pytest.raises(gradmidi.GradmidiError, match="broken.sf2: FluidSynth could not load this SoundFont"):
        render(melody, tmp_path / "out.wav", broken)
    assert _leftovers(tmp_path) == []


def test_missing_font_and_unknown_format_and_missing_folder(melody, tmp_path):
    with pytest.raises(gradmidi.GradmidiError, match="no such SoundFont file"):
        render(melody, tmp_path / "a.wav", tmp_path / "nope.sf2")
    with pytest.raises(gradmidi.GradmidiError, match="unknown audio format .mp3"):
        render(melody, tmp_path / "a.mp3")
    with pytest.raises(gradmidi.GradmidiError, match="no such folder"):
        render(melody, tmp_path / "missing" / "a.wav")
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(gradmidi.GradmidiError, match="no such folder"):
        render(melody, tmp_path / "file.txt" / "a.wav")
    assert _leftovers(tmp_path) == []


def test_an_empty_score_is_refused(tmp_path):
    import torch.nn as nn

    empty = tmp_path / "empty.mid"
    gradmidi.Sonifier(nn.Linear(2, 2), empty).close()
    with pytest.raises(gradmidi.GradmidiError, match="no notes to render"):
        render(empty, tmp_path / "empty.wav")
    assert _leftovers(tmp_path) == []


def test_a_midi_file_gradmidi_did_not_write_renders_at_its_own_tempo(tmp_path):
    """Plain MIDI from elsewhere (mido, 60 bpm, 960 ticks per beat, no gradmidi header): one A4 from
    1 s to 2 s. The render is silent before the note, sounds during it, and is as long as the file."""
    song = tmp_path / "song.mid"
    midi = mido.MidiFile(ticks_per_beat=960)
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=1_000_000)]))
    midi.tracks.append(mido.MidiTrack([
        mido.MetaMessage("track_name", name="flute"), mido.Message("program_change", program=73, channel=2),
        mido.Message("note_on", note=69, velocity=100, channel=2, time=960),
        mido.Message("note_off", note=69, channel=2, time=960)]))
    midi.save(song)
    result = render(song, tmp_path / "song.wav", loudness=None)
    audio, rate = soundfile.read(tmp_path / "song.wav")
    mono = np.abs(audio).mean(axis=1)
    assert len(audio) / rate == pytest.approx(2.0 + TAIL_SECONDS, abs=1 / rate)
    assert mono[: int(0.95 * rate)].max() < 1e-4  # nothing before the note's beat at 60 bpm
    assert np.sqrt(np.mean(mono[int(1.1 * rate): int(1.9 * rate)] ** 2)) > 1e-3  # the note sounds
    spectrum = np.abs(np.fft.rfft(audio[int(1.1 * rate): int(1.9 * rate)].mean(axis=1)))
    assert abs(np.fft.rfftfreq(int(1.9 * rate) - int(1.1 * rate), 1 / rate)[spectrum.argmax()] - 440) < 10
    assert result.changes and "no gradmidi header" in result.changes[0]


MISSING_LIBRARY = """
import sys, warnings
sys.modules["fluidsynth"] = None  # stand-in for a machine without libfluidsynth: the import fails
import torch, torch.nn as nn, gradmidi
from gradmidi.render import render
try:
    render(sys.argv[1], sys.argv[2] + "/x.wav")
except gradmidi.GradmidiError as exc:
    print("ERROR", exc)
model = nn.Linear(2, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with gradmidi.Sonifier(model, sys.argv[2] + "/run.mid", audio=sys.argv[2] + "/run.wav") as son:
        model(torch.randn(1, 2)).sum().backward()
        son.step()
print("WARNING", [str(w.message) for w in caught])
"""


def test_missing_libfluidsynth_names_the_packages_and_the_score_is_still_written(melody, tmp_path):
    # A stand-in: libfluidsynth is installed here, so the subprocess blocks the module import,
    # which is exactly how pyfluidsynth fails without the library (ImportError at import).
    result = subprocess.run([sys.executable, "-c", MISSING_LIBRARY, str(melody), str(tmp_path)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("apt-get install libfluidsynth3", "dnf install fluidsynth-libs", "pacman -S fluidsynth",
                 "brew install fluid-synth"):
        assert name in result.stdout
    assert "run.wav will not be rendered" in result.stdout
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["steps"] == 1
    assert not (tmp_path / "run.wav").exists()
