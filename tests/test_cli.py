"""The gradmidi command, run as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import mido
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.events import drum_table


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradmidi", *args], capture_output=True, text=True, cwd=cwd,
        stdin=subprocess.DEVNULL, timeout=300,
    )


@pytest.fixture(scope="module")
def score(tmp_path_factory) -> tuple[Path, list[tuple[int, str, float]]]:
    """A real score of 40 steps and the norms measured while writing it."""
    path = tmp_path_factory.mktemp("score") / "run.mid"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    measured = []
    with gradmidi.Sonifier(model, path) as son:
        for step in range(40):
            model.zero_grad()
            model(torch.randn(16, 6)).pow(2).mean().backward()
            son.step()
            for name in ("0", "2"):
                layer = model.get_submodule(name)
                grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
                measured.append((step, name, torch.linalg.vector_norm(grads).item()))
    return path, measured


def test_inspect_json_lists_voices_programs_steps_and_events(score):
    path, _ = score
    result = run("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 40
    assert [v["name"] for v in summary["voices"]] == ["0", "2"]
    assert all(v["notes"] == 40 and v["instrument"] for v in summary["voices"])
    assert set(summary["events"]) == {"nan", "inf", "spike", "loss_spike", "skipped"}


def test_inspect_prints_a_readable_table(score):
    result = run("inspect", str(score[0]))
    assert result.returncode == 0, result.stderr
    assert "Acoustic Grand Piano" in result.stdout and "40 steps" in result.stdout


def test_decode_recovers_every_norm_within_half_a_scale_step(score, tmp_path):
    path, measured = score
    out = tmp_path / "norms.csv"
    result = run("decode", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(measured)
    decoded = {(int(r["step"]), r["voice"]): float(r["norm"]) for r in rows}
    header = gradmidi.read_score(path).header
    # minor pentatonic: the widest gap is 3 semitones; 60 semitones span 6 decades.
    tolerance = 1.5 * (math.log10(1e2) - math.log10(1e-4)) / (header.mapping.high_note - header.mapping.low_note)
    for step, name, norm in measured:
        assert abs(math.log10(decoded[(step, name)]) - math.log10(norm)) <= tolerance + 1e-9


def test_demo_diverges_at_lr_1_batch_256_and_not_at_lr_0_01(tmp_path):
    result = run("demo", "-o", str(tmp_path), "--setting", "sgd-lr0.01-bs10", "--setting", "sgd-lr1.0-bs256",
                 "--json")
    assert result.returncode == 0, result.stderr
    by_name = {r["setting"]: r for r in json.loads(result.stdout)}
    calm, wild = by_name["sgd-lr0.01-bs10"], by_name["sgd-lr1.0-bs256"]
    assert calm["steps"] == wild["steps"] == 200
    assert calm["events"]["nan"] == calm["events"]["inf"] == 0
    assert wild["events"]["nan"] + wild["events"]["inf"] > 0
    assert wild["first_divergence_step"] is not None
    for name in by_name:
        midi = mido.MidiFile(tmp_path / f"{name}.mid")
        names = [t.name for t in midi.tracks]
        assert names[1:5] == ["conv1", "conv2", "fc1", "fc2"] and names[-1] == "events"
    drums = [m for m in mido.MidiFile(tmp_path / "sgd-lr1.0-bs256.mid").tracks[-1] if m.type == "note_on"]
    assert {m.note for m in drums} >= {drum_table()["nan"]} and all(m.channel == 9 for m in drums)


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or (lines and lines[-1].startswith("Error:")), result.stderr
    message = lines[-1].lower()
    for word in words:
        assert word.lower() in message, result.stderr


def test_missing_file_is_a_one_line_error(tmp_path):
    _one_line_error(run("inspect", str(tmp_path / "nope.mid")), "no such file")


def test_text_file_is_not_a_midi_file(tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_text("these are my notes, not MIDI")
    _one_line_error(run("inspect", str(bad)), "not a readable MIDI file")
    assert bad.read_text() == "these are my notes, not MIDI"  # nothing the user wrote is lost


def test_truncated_score_is_a_one_line_error(score, tmp_path):
    cut = tmp_path / "cut.mid"
    cut.write_bytes(score[0].read_bytes()[:300])
    _one_line_error(run("decode", str(cut)), "cut.mid")


def test_midi_file_from_elsewhere_inspects_as_plain_midi_but_does_not_decode(tmp_path):
    other = tmp_path / "song.mid"
    midi = mido.MidiFile()
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("track_name", name="piano"),
                                       mido.Message("program_change", program=40),
                                       mido.Message("note_on", note=60, time=0),
                                       mido.Message("note_off", note=60, time=480)]))
    midi.save(other)
    result = run("inspect", str(other), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(v["name"], v["program"], v["notes"]) for v in summary["voices"]] == [("piano", 40, 1)]
    assert not summary["decodable"] and "no gradmidi header" in summary["changes"][0]
    _one_line_error(run("decode", str(other)), "no gradmidi header, so no norms can be decoded")


def test_decode_refuses_to_overwrite_the_score(score):
    path = score[0]
    before = path.read_bytes()
    _one_line_error(run("decode", str(path), "-o", str(path)), "refusing")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["demo", "--scale", "lydian-augmented"], ["unknown scale"]),
        (["demo", "--key", "H"], ["unknown key"]),
        (["demo", "--steps", "0"], ["steps"]),
        (["demo", "--setting", "sgd-lr5"], ["unknown demo setting"]),
        (["demo", "--mnist", "."], ["no mnist files"]),
        (["frobnicate"], ["no such command"]),
    ],
)
def test_bad_options_are_one_line_errors(args, words, tmp_path):
    _one_line_error(run(*args, "-o", str(tmp_path / "out")) if args[0] == "demo" else run(*args), *words)


def test_bad_api_options_raise_gradmidi_error_naming_the_problem():
    model = nn.Linear(2, 2)
    with pytest.raises(gradmidi.GradmidiError, match="unknown General MIDI program"):
        gradmidi.Sonifier(model, None, programs={"*": "Kazoo Orchestra"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'tempo'"):  # every option is in the signature
        gradmidi.Sonifier(model, None, tempo=90)
    with pytest.raises(gradmidi.GradmidiError, match="tempo"):
        gradmidi.Sonifier(model, None, bpm=5)


def test_sonifier_refuses_to_overwrite_a_file_that_is_not_a_score(tmp_path):
    song = tmp_path / "song.mid"
    song.write_bytes(b"MThd my own song")
    with pytest.raises(gradmidi.GradmidiError, match="refusing to overwrite"):
        gradmidi.Sonifier(nn.Linear(2, 2), song)
    assert song.read_bytes() == b"MThd my own song"


def test_sonifier_overwrites_its_own_earlier_score(score, tmp_path):
    path = tmp_path / "again.mid"
    path.write_bytes(score[0].read_bytes())
    model = nn.Linear(2, 2)
    with gradmidi.Sonifier(model, path) as son:
        model(torch.randn(3, 2)).sum().backward()
        son.step()
    assert gradmidi.read_score(path).summary()["steps"] == 1
