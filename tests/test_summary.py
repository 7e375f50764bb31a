"""Summaries: a long run heard in the time asked, with every event sounding (real FluidSynth audio)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

import gradmidi
from gradmidi.cli import cli
from gradmidi.clock import Clock
from gradmidi.instruments import DRUM_CHANNEL
from gradmidi.render import fluidsynth_available, read_timeline, render_timeline
from gradmidi.smf import read_smf
from gradmidi.summary import summarise, write_summary
from scorekit import make_score

needs_fluidsynth = pytest.mark.skipif(fluidsynth_available() is not None, reason="FluidSynth is not installed")

STEPS = 100_000
VOICES = 16
# NaN and Inf, alternating, 4,000 steps (about 2.3 s of the summary) apart: each hit rings out alone.
ALARMS = {2_000 + 4_000 * i: ("nan" if i % 2 == 0 else "inf") for i in range(24)}


def _long_run(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth norms (no spikes) drifting over two decades, one layer NaN or Inf at the alarm steps."""
    norms = 10.0 ** (-2.0 + 2.0 * step / STEPS + 0.3 * np.sin(np.arange(VOICES) + step / 5_000))
    alarm = ALARMS.get(step)
    if alarm:
        norms[step % VOICES] = np.nan if alarm == "nan" else np.inf
    return norms, np.ones(VOICES, bool)


@pytest.fixture(scope="module")
def long_score(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "run.mid"
    layers = [(f"block{i}", "Linear") for i in range(VOICES)]
    return make_score(path, layers, _long_run, STEPS, clock=Clock(bpm=120))


def _drum_hits(path, keys: set[int]) -> list[int]:
    _, _, tracks = read_smf(path.read_bytes())
    return sorted(tick for track in tracks for tick, e in track
                  if e[0] == 0x90 | DRUM_CHANNEL and e[2] and e[1] in keys)


def _onsets(audio: np.ndarray, rate: int) -> int:
    """Hits in a drums-only render: frames whose energy jumps tenfold over the 50 ms before them,
    at least 0.5 s after the last hit found (a hit rings out longer than that, its onset does not)."""
    frame = rate // 100
    energy = np.square(audio.mean(axis=1)[: len(audio) // frame * frame]).reshape(-1, frame).mean(axis=1) + 1e-12
    before = np.convolve(energy, np.ones(5) / 5)[: len(energy)]
    jumps = np.flatnonzero(energy[5:] > 10 * before[4:-1]) + 5
    found, last = 0, -(10**9)
    for j in jumps.tolist():
        if j - last >= 50:
            found, last = found + 1, j
    return found


@needs_fluidsynth
def test_render_duration_gives_that_long_a_summary_in_which_every_nan_and_inf_sounds(long_score, tmp_path):
    run = gradmidi.read_score(long_score)
    alarms = [(run.step_of(slot), kind) for slot, kind in run.drums if kind in ("nan", "inf")]
    assert sorted(alarms) == sorted(ALARMS.items())  # the run's own events: what must be heard
    assert run.summary()["seconds"] > 3000  # 100k steps at 120 bpm: 3.5 hours whole

    out = tmp_path / "summary.wav"
    result = CliRunner().invoke(cli, ["render", str(long_score), "-o", str(out), "--duration", "60", "--json"])
    assert result.exit_code == 0, result.output
    said = json.loads(result.output)
    assert "summary" in said["summary"] and "max of their norms" in said["summary"]
    assert abs(soundfile.info(str(out)).duration - 60) <= 1

    summary = summarise(run, 58)
    written = write_summary(summary, tmp_path / "summary.mid")
    drums = run.header.drums
    hits = _drum_hits(written, {drums["nan"], drums["inf"]})
    assert len(hits) == len(ALARMS)  # one hit per event, none merged away
    timeline = read_timeline(written).only({DRUM_CHANNEL})
    audio = render_timeline(timeline, gradmidi.fonts.resolve_soundfont(None), 22050, 2.0)
    assert _onsets(audio, 22050) == len(ALARMS)  # and each is heard: a separate onset in real audio


def test_a_summary_merges_slots_with_the_runs_aggregation_and_keeps_every_marker(long_score, tmp_path):
    run = gradmidi.read_score(long_score)
    summary = summarise(run, 30)
    factor = summary.factor
    assert len(summary.slots) * summary.header.clock.slot_seconds == pytest.approx(30, abs=0.2)
    # the summary's loudest note per voice is the run's loudest in the merged slots (max aggregation)
    for group in (0, len(summary.slots) // 2, len(summary.slots) - 1):
        slot = summary.slots[group]
        for voice in (0, 7, len(run.header.voices) - 1):
            notes = run.notes[voice]
            slots, pitches = notes.window(group * factor, (group + 1) * factor)
            top = run.norms_of(slots, pitches).max()
            assert slot.norms[voice] == pytest.approx(top)
    # read back, the summary is a score of its own: its steps are the run's, its events where they were
    written = gradmidi.read_score(write_summary(summary, tmp_path / "s.mid"))
    assert written.header.info["summary"]["slots_merged"] == factor
    assert not written.changes
    assert written.clock.every == factor * run.clock.every
    assert sorted(slot for slot, kind in written.drums if kind == "nan") == \
        sorted(step // written.clock.every for step, kind in ALARMS.items() if kind == "nan")
    assert [text for _, text in written.markers] == [text for _, text in run.markers]


def test_rms_runs_merge_by_rms_and_a_score_that_fits_is_not_summarised(tmp_path):
    path = make_score(tmp_path / "rms.mid", [("a", "Linear")], lambda s: (np.array([10.0 ** (s % 3 - 1)]),
                                                                          np.ones(1, bool)), 3_000)
    score = gradmidi.read_score(path)
    score.header.info["aggregate"] = "rms"
    summary = summarise(score, 10)
    assert summary.header.info["summary"]["aggregate"] == "rms"
    first = score.norms_of(*score.notes[0].window(0, summary.factor))
    assert summary.slots[0].norms[0] == pytest.approx(np.sqrt(np.mean(np.square(first))))
    assert summarise(score, score.summary()["seconds"] + 1) is None


@pytest.mark.parametrize("args, said", [
    (["--duration", "2"], "leaves no time for music"),
    (["--duration", "2.5"], "too short"),
    (["--duration", "0"], "not in the range x>0"),
])
def test_a_bad_duration_is_one_line(long_score, tmp_path, args, said):
    result = CliRunner().invoke(cli, ["render", str(long_score), "-o", str(tmp_path / "x.wav"), *args])
    assert result.exit_code != 0
    assert said in result.output
    assert "Traceback" not in result.output


def test_plain_midi_cannot_be_summarised(tmp_path):
    import mido

    midi = mido.MidiFile()
    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=90, time=0),
                            mido.Message("note_off", note=60, time=480 * 400)])
    midi.tracks.append(track)
    midi.save(tmp_path / "plain.mid")
    with pytest.raises(gradmidi.GradmidiError, match="not a gradmidi score"):
        summarise(gradmidi.read_score(tmp_path / "plain.mid"), 30)


@needs_fluidsynth
def test_plain_midi_that_fits_renders_whole_and_one_that_does_not_is_refused(tmp_path):
    import mido

    for beats, name in ((8, "short"), (400, "long")):
        midi = mido.MidiFile()
        midi.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, velocity=90, time=0),
                                           mido.Message("note_off", note=60, time=480 * beats)]))
        midi.save(tmp_path / f"{name}.mid")
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "short.mid"), "--duration", "30", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["summary"] is None
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "long.mid"), "--duration", "30"])
    assert result.exit_code == 1 and "not a gradmidi score" in result.output


@needs_fluidsynth
def test_a_reports_audio_of_a_long_run_is_a_summary_and_its_card_says_so(long_score, tmp_path):
    from gradmidi.report import build_report

    index = build_report([long_score], tmp_path / "report", duration=20)
    page = index.read_text()
    assert "The audio is a 0:20 summary of 3:28:20" in page
    assert 19 <= soundfile.info(str(tmp_path / "report" / "run.ogg")).duration <= 20


@needs_fluidsynth
def test_sonifier_audio_duration_renders_a_summary_of_the_run(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    with gradmidi.Sonifier(model, tmp_path / "run.mid", audio=tmp_path / "run.wav", audio_duration=6) as son:
        for _ in range(300):  # 37.5 s whole at 120 bpm
            model.zero_grad()
            model(torch.randn(8, 4)).square().mean().backward()
            son.step()
    assert 5 <= soundfile.info(str(tmp_path / "run.wav")).duration <= 6
    with pytest.raises(gradmidi.GradmidiError, match="audio_duration"):
        gradmidi.Sonifier(model, tmp_path / "b.mid", audio=tmp_path / "b.wav", audio_duration=1)
