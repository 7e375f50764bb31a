"""One score, every output: the file, a live output and a served listener play the same notes.

The outputs are real: the .mid writer, the live scheduler on an in-memory output (it records
what the scheduler sends, with its times, as mido's EchoPort would), and ``gradmidi listen``'s
Listener connected over loopback TCP, saving what it hears.
"""

from __future__ import annotations

import bisect
import inspect
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import gradmidi
from gradmidi.cli import cli
from gradmidi.clock import Clock
from gradmidi.events import SpikeSettings
from gradmidi.instruments import DRUM_CHANNEL
from gradmidi.listen import Listener
from gradmidi.mapping import Mapping, norms_to_pitches
from gradmidi.outputs import BaseOutput, MemoryOutput, Output, PortOutput, SynthOutput
from gradmidi.pipeline import ScoreBuilder, merge_slots
from gradmidi.score import ScoreHeader, Slot, StepRecord
from gradmidi.scorefile import load_tracks
from gradmidi.sinks.base import Sink
from gradmidi.sinks.live import LiveSink
from gradmidi.voices import plan_voices
from jackkit import wait_for
from scorekit import Recorder


def model_and_data():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    return model, torch.randn(64, 6), torch.randn(64, 2)


def train(son, model, steps: int, *, spike_at: int | None = None, nan_at: int | None = None, markers=None) -> None:
    _, x, y = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        if step and step % 10 == 0:
            son.epoch()
        if markers and step in markers:
            son.marker(markers[step])
        opt.zero_grad()
        batch = slice((step * 8) % 64, (step * 8) % 64 + 8)
        loss = (model(x[batch]) - y[batch]).pow(2).mean()
        if step == spike_at:
            loss = loss * 1e4  # every gradient 10,000 times larger: a spike
        if step == nan_at:
            loss = loss * float("nan")  # NaN from here on: the weights take it in
        loss.backward()
        son.step(loss=loss)
        if step != spike_at:
            opt.step()


def file_notes(path: Path) -> dict[tuple[int, int, int, int], int]:
    """(slot, channel, key, velocity) -> onset in ticks from the slot's start, for every note-on."""
    tracks, _ = load_tracks(path)
    slot_ticks = gradmidi.read_score(path).clock.slot_ticks
    return {(tick // slot_ticks, e[0] & 0x0F, e[1], e[2]): tick % slot_ticks for track in tracks for tick, e in track
            if e[0] & 0xF0 == 0x90 and e[2]}


def live_notes(live: LiveSink, output: MemoryOutput) -> dict[tuple[int, int, int, int], int]:
    """The same, from what the live output was sent: each note-on placed in the slot being played
    when it was sent (by the scheduler's own due times), its onset measured from that slot's start."""
    clock = live.clock
    tick_seconds = clock.slot_seconds / clock.slot_ticks
    due = [d for d, _ in live.timing]
    notes = {}
    for at, message in output.messages:
        if message[0] & 0xF0 == 0x90 and message[2]:
            played = bisect.bisect_right(due, at + 0.002) - 1
            key = (live.played_slots[played][0], message[0] & 0x0F, message[1], message[2])
            assert key not in notes, f"{key} sent twice"
            notes[key] = round((at - due[played]) / tick_seconds)
    return notes


def test_the_file_a_live_output_and_a_listeners_save_carry_the_same_notes_and_drum_hits(tmp_path):
    model, _, _ = model_and_data()
    output = MemoryOutput()
    # A backlog of up to a minute is allowed, so nothing is merged: the live output plays every slot.
    live = LiveSink(output, max_latency=60, record_timing=True)
    son = gradmidi.Sonifier(model, tmp_path / "run.mid", live=[live], serve="127.0.0.1:0", epoch_downbeat=True,
                            arpeggio=True, bpm=150, max_voices=3)
    listener = Listener(f"127.0.0.1:{son.server.port}", save=tmp_path / "heard.mid")
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    wait_for(lambda: son.server.joined == 1, 30, "the listener")
    with son:
        train(son, model, 40, spike_at=18, nan_at=30, markers={5: "lr warm-up done"})
    thread.join(30)
    assert not thread.is_alive() and listener.saved == [tmp_path / "heard.mid"]

    ours = file_notes(tmp_path / "run.mid")
    kinds = set(son.event_counts)
    assert {"spike", "nan"} <= kinds, kinds
    drums = [key for _, channel, key, _ in ours if channel == DRUM_CHANNEL]
    assert {37, 49, 56} <= set(drums)  # downbeat, crash (NaN), cowbell (spike)
    assert len({channel for _, channel, _, _ in ours}) == 4  # three voices and the drums
    assert file_notes(tmp_path / "heard.mid") == ours  # the listener saved exactly the run's notes, at their onsets
    heard_live = live_notes(live, output)
    # Slot, channel, key and velocity exactly; onsets (arpeggio positions in the slot) within the scheduler's jitter.
    assert live.merged == 0 and sorted(heard_live) == sorted(ours)
    assert max(abs(heard_live[note] - ours[note]) for note in ours) <= 12  # ticks of 480 a beat: 10 ms at 150 bpm
    markers = [text for _, text in gradmidi.read_score(tmp_path / "heard.mid").markers]
    assert markers == [text for _, text in gradmidi.read_score(tmp_path / "run.mid").markers]
    assert "lr warm-up done" in markers and "epoch 3" in markers


@pytest.mark.parametrize("how", ["max", "rms", "last"])
def test_merged_slots_equal_the_aggregation_of_all_their_steps(how):
    """merge_slots over every=1 slots gives exactly the slots an every=4 builder makes of the same steps,
    with absent voices, a NaN and an Inf among them."""
    voices, assignment = plan_voices([("a", "Linear"), ("b", "Conv2d"), ("c", "LayerNorm")])
    rng = np.random.default_rng(0)
    norms = 10 ** rng.uniform(-3, 1, size=(24, 3))
    present = rng.random((24, 3)) > 0.2
    norms[5, 1], norms[13, 2] = np.nan, np.inf
    fine = ScoreBuilder(ScoreHeader(voices, Mapping(), Clock(every=1), "t"), assignment, aggregate=how)
    coarse = ScoreBuilder(ScoreHeader(voices, Mapping(), Clock(every=4), "t"), assignment, aggregate=how)
    fine_slots, coarse_slots = [], []
    for step in range(24):
        fine_slots += fine.add_step(StepRecord(step, norms[step], present[step]))
        coarse_slots += coarse.add_step(StepRecord(step, norms[step], present[step]))
    assert len(fine_slots) == 24 and len(coarse_slots) == 6
    for i, expected in enumerate(coarse_slots):
        merged = merge_slots(fine_slots[4 * i:4 * i + 4], how, Mapping())
        np.testing.assert_allclose(merged.norms, expected.norms, rtol=1e-12)
        np.testing.assert_array_equal(merged.pitches, expected.pitches)
        np.testing.assert_array_equal(merged.present, expected.present)
        assert merged.steps == 4 and merged.events == expected.events


def test_a_live_output_catching_up_plays_the_pipelines_aggregation_of_the_merged_slots():
    model, _, _ = model_and_data()
    output, recorder = MemoryOutput(), Recorder()
    # 25 ms slots and a tenth of a second of backlog: training runs far ahead, so slots are merged.
    live = LiveSink(output, max_latency=0.1, record_timing=True)
    with gradmidi.Sonifier(model, None, live=[live], sinks=[recorder], bpm=600, aggregate="rms") as son:
        train(son, model, 300)
    assert live.merged > 0
    mapping = son.header.mapping
    by_index = {slot.index: slot for slot in recorder.slots}
    due = [d for d, _ in live.timing]
    sent: dict[int, list[tuple[int, int]]] = {}
    for at, message in output.messages:
        if message[0] & 0xF0 == 0x90 and message[2] and message[0] & 0x0F != DRUM_CHANNEL:
            sent.setdefault(bisect.bisect_right(due, at + 0.002) - 1, []).append((message[0] & 0x0F, message[1]))
    checked = 0
    for played, (index, steps) in enumerate(live.played_slots):
        if steps < 2:
            continue
        members = [by_index[i] for i in range(index, index + steps)]
        rows = np.vstack([m.norms for m in members])
        expected = norms_to_pitches(np.sqrt(np.mean(rows**2, axis=0)), members[-1].log_range, mapping)
        channels = [v.channel for v in son.voices]
        assert sorted(sent[played]) == sorted((channels[v], int(p)) for v, p in enumerate(expected) if p >= 0)
        checked += 1
    assert checked >= 3


def test_sonify_of_a_runs_decoded_csv_with_the_runs_options_gives_the_runs_notes(tmp_path):
    model, _, _ = model_and_data()
    run = tmp_path / "run.mid"
    with gradmidi.Sonifier(model, run, every=4, aggregate="rms", spikes=SpikeSettings(z=3, warmup=4),
                           scale="dorian", key="D") as son:
        train(son, model, 48)
    runner = CliRunner()
    assert runner.invoke(cli, ["decode", str(run), "-o", str(tmp_path / "run.csv")]).exit_code == 0
    ours = _notes_by_voice(run)
    for options in (["--every", "4", "--aggregate", "rms", "--spikes", "z=3,warmup=4", "--scale", "dorian",
                     "--key", "D"], ["--like", str(run)]):
        again = tmp_path / "again.mid"
        result = runner.invoke(cli, ["sonify", str(tmp_path / "run.csv"), "-o", str(again), *options])
        assert result.exit_code == 0, result.output
        header = gradmidi.read_score(again).header
        assert header.clock.every == 4 and header.info["aggregate"] == "rms"
        assert _notes_by_voice(again) == ours


def _notes_by_voice(path: Path) -> dict[str, list[tuple[int, int, int]]]:
    score = gradmidi.read_score(path)
    return {v.name: score.notes.get(v.index, []) for v in score.header.voices}


def test_sonify_refuses_unknown_spike_settings_in_one_line(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("step,name,value\n0,a,1.0\n1,a,2.0\n")
    for spikes, words in (("zz=3", "NAME one of"), ("z=high", "z must be a number"), ("z=-1", "SpikeSettings.z")):
        result = CliRunner().invoke(cli, ["sonify", str(csv), "-o", str(tmp_path / "x.mid"), "--spikes", spikes])
        assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_every_sonifier_option_is_in_its_signature_and_its_help():
    signature = inspect.signature(gradmidi.Sonifier)
    assert not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    documented = gradmidi.Sonifier.__doc__
    for name, parameter in signature.parameters.items():
        assert name in documented, f"{name} is not documented"
        assert parameter.annotation is not inspect.Parameter.empty, f"{name} has no type"
    # The mapping and clock defaults are the dataclasses' own, not copies that could drift.
    assert signature.parameters["scale"].default == Mapping().scale
    # bpm defaults to None, so that one given beside duration= is seen (and refused); unset, it is the Clock's.
    assert signature.parameters["bpm"].default is None
    with gradmidi.Sonifier(torch.nn.Linear(2, 2), None) as son:
        assert son.header.clock.bpm == Clock().bpm
    assert (Path(gradmidi.__file__).parent / "py.typed").exists()


def test_reprs_say_what_a_sonifier_and_a_score_are(tmp_path):
    model = nn.Linear(2, 2)
    with gradmidi.Sonifier(model, tmp_path / "r.mid", title="tiny") as son:
        assert repr(son).startswith("<Sonifier 'tiny': 1 voice, 120 bpm, step 0, to midi file")
        model(torch.ones(1, 2)).sum().backward()
        son.step()
    assert repr(son).startswith("<Sonifier 'tiny': 1 voice, 120 bpm, closed, to")
    score = gradmidi.read_score(tmp_path / "r.mid")
    assert "tiny" in repr(score) and "1 voice" in repr(score) and len(repr(score)) < 200


def test_every_output_speaks_one_protocol_and_panic_silences_what_it_left_sounding():
    for kind in (MemoryOutput, PortOutput, SynthOutput):
        assert issubclass(kind, BaseOutput)
    output = MemoryOutput()
    assert isinstance(output, Output)
    output.send(bytes([0xC1, 5]))
    output.send(bytes([0x90, 60, 90]))
    output.send(bytes([0x91, 64, 90]))
    output.send(bytes([0x80, 60, 0]))
    assert output.sounding == {(1, 64)}
    output.close()
    tail = [m for _, m in output.messages[4:]]
    assert tail == [bytes([0x81, 64, 0]), bytes([0xB0, 123, 0]), bytes([0xB0, 120, 0]), bytes([0xB1, 123, 0]),
                    bytes([0xB1, 120, 0])]
    assert not output.alive()
    output.close()  # twice is fine
    assert len(output.messages) == 9


def test_the_readmes_own_sink_example_runs_and_prints_what_it_promises(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Your own sink", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "own_sink.py"
    script.write_text(code)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(("step ", "event: ")) for line in lines)
    assert sum(line.startswith("step ") for line in lines) == 3  # slots 0, 10 and 20 of 30


@pytest.mark.parametrize("module", ["lightning", "transformers"])
def test_a_callback_refuses_an_unknown_sonifier_option_when_it_is_made(module):
    import importlib

    callback = importlib.import_module(f"gradmidi.integrations.{module}").SonifyCallback
    with pytest.raises(gradmidi.GradmidiError, match="unknown Sonifier option 'scael' \\(did you mean scale\\?\\)"):
        callback(scael="dorian")
    assert callback(scale="dorian", bpm=90).options == {"scale": "dorian", "bpm": 90}


def test_the_readmes_own_event_kind_example_reaches_the_score(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Events: the drum channel", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "own_kind.py"
    script.write_text(code + f'''
import torch
model = torch.nn.Linear(3, 1)
with gradmidi.Sonifier(model, {str(tmp_path / "kind.mid")!r}) as son:
    for step in range(12):
        model.zero_grad()
        loss = model(torch.randn(4, 3)).pow(2).mean() * 0.01 + (5.0 if step == 7 else 0.0)
        loss.backward()
        son.step(loss=loss)
''')
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    score = gradmidi.read_score(tmp_path / "kind.mid")  # read in this process, where the kind is not registered
    assert score.header.drums["loss_high"] == 75
    assert (7, "loss_high") in [(score.step_of(slot), kind) for slot, kind in score.drums]
    assert score.summary()["events"]["loss_high"] == 1


def test_a_sink_that_cannot_wait_is_handed_each_slot_within_its_max_delay(monkeypatch):
    import gradmidi.session

    monkeypatch.setattr(gradmidi.session, "BATCH_SECONDS", 30.0)  # batches far apart: only max_delay brings slots sooner

    class Impatient(Recorder):
        max_delay = 0.05

    model = nn.Linear(2, 2)
    sink = Impatient()
    with gradmidi.Sonifier(model, None, sinks=[sink]) as son:
        for step in range(3):  # the first comes at once; the next two only if the worker's pause is cut short
            for p in model.parameters():
                p.grad = torch.full_like(p, step + 1.0)
            son.step()
            wait_for(lambda step=step: len(sink.slots) > step, 10, f"slot {step}")
    assert [slot.first_step for slot in sink.slots] == [0, 1, 2]
