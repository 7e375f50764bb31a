"""gradmidi with mido and pretty_midi: scores handed over and taken back (also after editing), plain
MIDI from elsewhere, and a port opened with mido as a live output. Real files, real FluidSynth, a
real JACK server (dummy backend)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import soundfile
import torch
import torch.nn as nn

import gradmidi
from gradmidi.render import TAIL_SECONDS
from gradmidi.report import build_report
from gradmidi.smf import SEQUENCER_ID
from jackkit import JACK_RACE, FluidSynthListener, JackServer, MidiRecorder, jack, recorder  # noqa: F401
from reliabilitykit import child_env
from scorekit import make_score

STEPS = 24
SLOT = 0.125  # a sixteenth at 120 bpm


def norms(step: int):
    """fc1 rises, fc2 is NaN at step 7 (a crash cymbal), 层1 (a name latin-1 cannot hold) rests every third step."""
    values = [10.0 ** (-3 + step / 10), np.nan if step == 7 else 0.5, 1.0 + step / 10]
    return np.array(values), np.array([True, True, step % 3 > 0])


@pytest.fixture(scope="module")
def score_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("interop") / "run.mid"
    return make_score(path, [("fc1", "Linear"), ("fc2", "Linear"), ("层1", "Conv2d")], norms, STEPS)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradmidi", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, env=child_env())


def one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], \
        result.stderr


# ------------------------------------------------------------------ scores out, and back
def test_read_score_takes_a_path_its_bytes_or_an_open_mido_file(score_path):
    by_path = gradmidi.read_score(score_path)
    by_bytes = gradmidi.read_score(score_path.read_bytes())
    by_mido = gradmidi.read_score(mido.MidiFile(score_path))
    assert by_path.decode() and by_bytes.decode() == by_path.decode() == by_mido.decode()
    assert by_bytes.drums == by_mido.drums == by_path.drums and by_path.markers == by_mido.markers
    assert by_mido.summary()["file"] == str(score_path)  # mido remembers the file it read
    assert by_bytes.summary()["file"] == "<bytes>"
    with pytest.raises(gradmidi.GradmidiError, match="a path, the file's bytes or a mido.MidiFile"):
        gradmidi.read_score(42)


def test_to_mido_holds_every_event_at_its_tick(score_path):
    midi = gradmidi.read_score(score_path).to_mido()
    ours = mido.MidiFile(score_path)
    assert isinstance(midi, mido.MidiFile) and midi.ticks_per_beat == ours.ticks_per_beat
    assert [[(m.time, m.bytes() if not m.is_meta else (m.type, getattr(m, "text", None))) for m in track]
            for track in midi.tracks] == \
           [[(m.time, m.bytes() if not m.is_meta else (m.type, getattr(m, "text", None))) for m in track]
            for track in ours.tracks]
    assert sum(m.type == "note_on" and m.velocity > 0 for m in midi) == 24 + 23 + 16 + 13


def test_to_pretty_midi_has_an_instrument_per_voice_drums_and_markers_in_seconds(score_path):
    score = gradmidi.read_score(score_path)
    pm = score.to_pretty_midi()
    assert isinstance(pm, pretty_midi.PrettyMIDI)
    voices = score.header.voices
    assert [(i.name, i.program, i.is_drum) for i in pm.instruments] == \
           [("fc1", voices[0].program, False), ("fc2", voices[1].program, False), ("1", voices[2].program, False),
            ("events", 0, True)]  # a name latin-1 cannot hold is folded, as in gradmidi's own track names
    fc1 = pm.instruments[0]
    assert len(fc1.notes) == STEPS
    assert [n.start for n in fc1.notes] == pytest.approx([step * SLOT for step in range(STEPS)])
    assert [n.pitch for n in fc1.notes] == [p for _, p, _ in score.notes[0]]
    assert len(pm.instruments[2].notes) == 16 and len(pm.instruments[3].notes) == len(score.drums)
    texts = {(round(t.time, 6), t.text) for t in pm.text_events}
    for slot, marker in score.markers:
        assert (round(slot * SLOT, 6), marker) in texts
    assert any(t.text.startswith("gradmidi {") for t in pm.text_events)  # the header, as text pretty_midi keeps


def test_a_score_written_by_pretty_midi_reads_back_whole(score_path, tmp_path):
    score = gradmidi.read_score(score_path)
    out = tmp_path / "through-pretty-midi.mid"
    score.to_pretty_midi().write(str(out))
    assert SEQUENCER_ID + b"gradmidi" not in out.read_bytes()  # pretty_midi dropped the sequencer event ...
    back = gradmidi.read_score(out)  # ... and the header still came back, from its text event
    assert back.changes == [] and back.decodable
    assert back.decode() == score.decode()
    assert back.drums == score.drums and back.markers == score.markers
    assert [(v.name, v.program) for v in back.header.voices] == [(v.name, v.program) for v in score.header.voices]


def test_pretty_midi_lacking_is_a_one_line_error_naming_what_to_install(score_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pretty_midi"] = None  # stand-in for an install without the extra: the import fails
        import gradmidi
        try:
            gradmidi.read_score({str(score_path)!r}).to_pretty_midi()
        except gradmidi.GradmidiError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert result.stdout.strip() == "to_pretty_midi needs pretty_midi: pip install 'gradmidi[pretty_midi]'"


# ------------------------------------------------------------------ scores edited elsewhere
@pytest.fixture(scope="module")
def edited(score_path, tmp_path_factory) -> Path:
    """The score edited with mido as a user would: fc2's track deleted, fc1 transposed up a whole tone,
    the tempo changed to 90 bpm, a marker added; saved to a new file."""
    midi = gradmidi.read_score(score_path).to_mido()
    del midi.tracks[[t.name for t in midi.tracks].index("fc2")]
    fc1 = midi.tracks[[t.name for t in midi.tracks].index("fc1")]
    for message in fc1:
        if message.type in ("note_on", "note_off"):
            message.note += 2
    for message in midi.tracks[0]:
        if message.type == "set_tempo":
            message.tempo = mido.bpm2tempo(90)
    midi.tracks[0].insert(1, mido.MetaMessage("marker", text="lr lowered here", time=0))
    path = tmp_path_factory.mktemp("edited") / "edited.mid"
    midi.save(path)
    return path


def test_an_edited_score_inspects_and_says_what_changed(edited):
    result = cli("inspect", str(edited), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    changes = "\n".join(summary["changes"])
    assert "voice 'fc2' (channel 2): its track is gone" in changes
    assert "voice 'fc1': " in changes and "off the score's scale" in changes and "none of its norms" in changes
    assert "tempo changed: plays at 90 bpm (gradmidi wrote 120 bpm)" in changes
    assert summary["bpm"] == 90 and summary["seconds"] == pytest.approx(STEPS * SLOT * 120 / 90, abs=1e-3)
    voices = {v["name"]: v for v in summary["voices"]}
    assert voices["fc1"]["notes"] == 0 and voices["fc1"]["undecoded"] == STEPS  # said, not guessed
    assert voices["fc2"]["notes"] == 0 and voices["层1"]["notes"] == 16  # untouched: it decodes
    assert [0, "lr lowered here"] in summary["markers"]
    assert summary["events"]["nan"] == 1  # the drum track survived the edit
    table = cli("inspect", str(edited))
    assert table.returncode == 0 and "changed: tempo changed" in table.stdout
    rows = gradmidi.read_score(edited).decode()
    assert {name for _, name, _ in rows} == {"层1"} and len(rows) == 16


def test_an_edited_score_renders_at_its_new_tempo_and_says_what_changed(edited, tmp_path):
    out = tmp_path / "edited.wav"
    result = cli("render", str(edited), "-o", str(out), "--jobs", "1")
    assert result.returncode == 0, result.stderr
    assert "changed: tempo changed: plays at 90 bpm" in result.stdout and "its track is gone" in result.stdout
    audio, rate = soundfile.read(out)
    assert len(audio) / rate == pytest.approx(STEPS * SLOT * 120 / 90 + TAIL_SECONDS, abs=0.01)
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_a_score_whose_header_was_dropped_reads_from_track_names_and_programs(score_path, tmp_path):
    """What a DAW that drops sequencer-specific events saves: the voices come from the tracks; norms
    and events are not decoded (said), and it still renders and goes into a report."""
    midi = mido.MidiFile(score_path)
    midi.tracks[0][:] = [m for m in midi.tracks[0] if m.type != "sequencer_specific"]
    path = tmp_path / "daw.mid"
    midi.save(path)
    score = gradmidi.read_score(path)
    original = gradmidi.read_score(score_path).header.voices
    assert [(v.name, v.program, v.channel) for v in score.header.voices] == \
           [("fc1", original[0].program, 0), ("fc2", original[1].program, 1), ("1", original[2].program, 2)]
    assert [v.kind for v in score.header.voices] == ["linear", "linear", "convolution"]  # the tracks' instrument names
    assert not score.decodable and "no gradmidi header" in score.changes[0]
    assert "13 drum hit(s): not read as events" in score.changes[1] and score.drums == []
    assert [len(score.notes[i]) for i in range(3)] == [24, 23, 16]
    with pytest.raises(gradmidi.GradmidiError, match="no norms can be decoded"):
        score.decode()
    one_line_error(cli("decode", str(path)), "no norms can be decoded")
    index = build_report([path], tmp_path / "report")
    page = index.read_text()
    assert "no gradmidi header" in page and '<audio controls' in page
    assert (tmp_path / "report" / "daw.ogg").stat().st_size > 1000


# ------------------------------------------------------------------ live, over JACK
@JACK_RACE
def test_an_edited_score_plays_to_a_jack_port_at_its_new_tempo(jack, recorder, edited, score_path):
    result = cli("play", str(edited), "--port", recorder.name, "--api", "UNIX_JACK")
    assert result.returncode == 0, result.stderr
    assert "changed: tempo changed: plays at 90 bpm" in result.stdout
    ons = [(t, m) for t, m in recorder.messages if m[0] & 0xF0 == 0x90 and m[2]]
    expected = [(m[0], m[1]) for _, m in played_messages(edited) if m[0] & 0xF0 == 0x90 and m[2]]
    assert [(m[0], m[1]) for _, m in ons] == expected, [(round(t, 4), m.hex()) for t, m in recorder.messages]
    assert len(ons) == 24 + 16 + 13  # fc2's track is gone
    fc1 = np.array([t for t, m in ons if m[0] & 0x0F == 0])
    # the recorder stamps notes by JACK period (128 frames, 2.9 ms): two stamps differ by up to two periods
    assert np.allclose(np.diff(fc1), SLOT * 120 / 90, atol=0.008)
    written = [p for _, p, _ in gradmidi.read_score(score_path).notes[0]]
    assert [m[1] for _, m in ons if m[0] & 0x0F == 0] == [p + 2 for p in written]  # as transposed


def played_messages(path):
    """The channel messages ``play`` sends, in order (the score's own, then silence)."""
    from gradmidi.render import read_timeline

    timeline = read_timeline(path)
    return sorted(((t, e) for track in timeline.tracks for t, e in track if e[0] < 0xF0), key=lambda x: x[0])


MIDO_TRAINER = textwrap.dedent(
    """
    import sys, time, mido, mido.ports, torch, torch.nn as nn, gradmidi
    out, synth, recorder = sys.argv[1:4]
    names = mido.get_output_names()
    ports = [mido.open_output(next(n for n in names if n.startswith(p)), virtual=False) for p in (synth, recorder)]
    port = mido.ports.MultiPort(ports)  # one mido output, two JACK destinations
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with gradmidi.Sonifier(model, out, live=port, programs={"*": "Pad 2 (warm)"}, gate=1.0) as son:
        for _ in range(24):
            model.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            son.step()
            time.sleep(0.1)
    print("left open:", not port.closed, flush=True)
    time.sleep(1.5)  # what FluidSynth plays after the run closed: silence, if every note ended
    port.close()
    """
)


@JACK_RACE
def test_a_run_plays_live_through_a_mido_port_into_fluidsynth_and_every_note_ends(jack, recorder, tmp_path):
    synth = FluidSynthListener(tmp_path / "heard.wav")
    script = tmp_path / "trainer.py"
    script.write_text(MIDO_TRAINER)
    try:
        result = subprocess.run([sys.executable, str(script), str(tmp_path / "run.mid"), synth.name, recorder.name],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                                env=child_env(MIDO_BACKEND="mido.backends.rtmidi/UNIX_JACK"))
    finally:
        synth.stop()
    assert result.returncode == 0, result.stderr
    assert "left open: True" in result.stdout  # the port is the user's: gradmidi does not close it
    messages = [m for _, m in recorder.messages]
    sounding: set[tuple[int, int]] = set()
    for m in messages:
        if m[0] & 0xF0 == 0x90 and m[2]:
            sounding.add((m[0] & 0x0F, m[1]))
        elif m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and not m[2]):
            sounding.discard((m[0] & 0x0F, m[1]))
    assert sum(1 for m in messages if m[0] & 0xF0 == 0x90 and m[2]) >= 2 * 20
    assert not sounding, f"left sounding: {sounding}"
    for channel in (0, 1):
        assert bytes([0xB0 | channel, 123, 0]) in messages[-4:] and bytes([0xB0 | channel, 120, 0]) in messages[-4:]
    audio, rate = soundfile.read(tmp_path / "heard.wav")
    level = np.sqrt(np.convolve(audio.mean(axis=1) ** 2, np.ones(rate // 10) / (rate // 10), mode="valid"))
    assert level.max() > 1e-2  # FluidSynth played the run ...
    assert level[-rate // 2:].max() < level.max() / 100  # ... and the pads stopped when the run closed
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["steps"] == 24


class ListPort(mido.ports.BaseOutput):
    """A user's own mido port (a mido backend in miniature): it keeps what it is sent."""

    def _open(self, **kwargs) -> None:
        self.sent: list[mido.Message] = []

    def _send(self, message: mido.Message) -> None:
        self.sent.append(message.copy())


def test_a_users_own_mido_port_is_a_live_output_silenced_on_close_and_left_open(tmp_path):
    port = ListPort("mine")
    model = nn.Linear(4, 2)
    with gradmidi.Sonifier(model, None, live=port, gate=1.0, bpm=300) as son:
        for _ in range(6):
            model.zero_grad()
            model(torch.randn(3, 4)).pow(2).mean().backward()
            son.step()
    sent = port.sent
    assert sum(m.type == "note_on" and m.velocity > 0 for m in sent) == 6
    assert [m.program for m in sent if m.type == "program_change"] and not port.closed
    assert {(m.channel, m.control) for m in sent[-2:]} == {(0, 123), (0, 120)}
    port.close()
    with pytest.raises(gradmidi.GradmidiError, match="the mido port 'mine' is closed"):
        gradmidi.Sonifier(model, None, live=port)
