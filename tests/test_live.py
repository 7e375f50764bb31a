"""Live playback, end to end over a real JACK server (dummy backend) with real FluidSynth."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import warnings
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn as nn

import gradmidi
from gradmidi.outputs import PortOutput, SynthOutput
from gradmidi.sinks.base import Sink
from gradmidi.sinks.live import LiveSink
from jackkit import JACK_RACE, FluidSynthListener, JackServer, MidiRecorder, jack, recorder  # noqa: F401
from reliabilitykit import child_env, default_signals, record, train_steps

ONSET_TOLERANCE = 0.010  # seconds: the JACK dummy period (128 frames, 2.9 ms) plus FluidSynth's block



def train(son, steps: int, pause: float = 0.0, model=None) -> None:
    train_steps(son, model or son._test_model, steps, pause)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def onsets(audio: np.ndarray, rate: int) -> np.ndarray:
    """Seconds where the energy (1 ms frames) jumps by 12 dB over its floor of the last 20 ms, to within
    15 dB of the loudest moment (a quiet bump in a reverb tail is no onset)."""
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    frame = rate // 1000
    db = 10 * np.log10(np.add.reduceat(mono**2, np.arange(0, len(mono), frame)) + 1e-12)
    found = []
    for i in range(20, len(db)):
        if db[i] > db.max() - 15 and db[i] - db[i - 20 : i - 2].min() > 12 and (not found or i - found[-1] > 60):
            found.append(i)
    return np.array(found) / 1000.0


@JACK_RACE
def test_a_training_run_is_heard_through_jack_in_fluidsynth_on_time(jack, tmp_path):
    synth = FluidSynthListener(tmp_path / "heard.wav")
    try:
        model = nn.Linear(8, 2)
        live = LiveSink(PortOutput(synth.name, api="UNIX_JACK"), record_timing=True)
        # One percussive voice at 60 bpm: every note is a clear onset 0.25 s after the last.
        with gradmidi.Sonifier(model, tmp_path / "run.mid", live=[live], bpm=60, programs={"*": "Woodblock"},
                               gate=0.5) as son:
            for _ in range(16):
                model.zero_grad()
                model(torch.randn(4, 8)).pow(2).mean().backward()
                son.step()
                time.sleep(0.2)  # faster than the tempo: the scheduler keeps the 0.25 s grid
        time.sleep(0.5)
    finally:
        synth.stop()
    assert live.failed is None
    audio, rate = soundfile.read(tmp_path / "heard.wav")
    assert np.sqrt(np.mean(audio**2)) > 1e-3  # not silent
    heard = onsets(audio, rate)
    sent = np.array([t for _, t in live.timing])
    assert len(heard) == len(sent) == live.played >= 12
    # The audio file's clock starts when FluidSynth does: align on the median offset, then every
    # onset must sit within the tolerance of the moment its note was sent.
    offset = np.median(heard - sent)
    assert np.max(np.abs(heard - sent - offset)) <= ONSET_TOLERANCE
    # ... and the notes kept the score's grid: one slot (0.25 s) apart while training kept up.
    # (5 ms: a garbage collection or a file flush holds the interpreter a few ms now and then on 2 shared cores)
    assert np.allclose(np.diff(sent), 0.25, atol=0.005)
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["steps"] == 16


def test_port_lost_mid_run_stops_the_live_sink_and_training_and_file_go_on(jack, tmp_path):
    synth = FluidSynthListener(tmp_path / "lost.wav")
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradmidi.Sonifier(model, tmp_path / "run.mid", live=synth.name, midi_api="UNIX_JACK") as son:
            son._test_model = model
            train(son, 10, pause=0.05)
            synth.kill()  # the synth dies mid-run
            train(son, 40, pause=0.05)
    gone = [str(w.message) for w in caught if "is gone" in str(w.message)]
    assert len(gone) == 1 and "training and the other sinks go on" in gone[0]  # one warning
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["steps"] == 50
    record("live synth killed mid-run (FluidSynth on JACK)", 1,
           "one warning, live output stopped, training and the file went on (all 50 steps in the score)")


def test_no_midi_system_is_a_clear_error(monkeypatch):
    if Path("/dev/snd/seq").exists():
        pytest.skip("this machine has an ALSA sequencer")
    monkeypatch.delenv("MIDO_BACKEND", raising=False)
    with pytest.raises(gradmidi.GradmidiError) as caught:
        gradmidi.Sonifier(nn.Linear(2, 2), None, live="any synth")
    message = str(caught.value)
    assert "no ALSA sequencer" in message and "JACK" in message and "live='synth'" in message
    result = subprocess.run([sys.executable, "-m", "gradmidi", "ports"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"} | _python_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: cannot open the default MIDI system")


def _python_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("MIDO_BACKEND",)}


@JACK_RACE
def test_steps_faster_than_the_tempo_are_merged_not_queued(jack, recorder, tmp_path):
    model = tiny_model()
    live = LiveSink(PortOutput(recorder.name, api="UNIX_JACK"), max_latency=0.5, record_timing=True)
    with gradmidi.Sonifier(model, tmp_path / "fast.mid", live=[live]) as son:
        son._test_model = model
        started = time.monotonic()
        train(son, 300)  # a few ms a step: far faster than 0.125 s slots
        trained = time.monotonic()
    assert live.merged > 0 and live.played < 300
    # The backlog is held to the latency bound (0.5 s, plus the slot playing and its note-off):
    # the music ends soon after training does instead of trailing 300 slots (37 s) behind.
    last_slot_sent = live.timing[-1][1]
    assert last_slot_sent - trained <= 0.5 + 0.125 + 0.05
    assert started < trained
    due, sent = np.array(live.timing).T
    assert np.allclose(np.diff(due), 0.125)  # merged slots keep the grid: one slot every 0.125 s
    late = sent - due
    # On the grid: sends are not pushed later and later (a queue would drift by a slot each
    # time); a loaded 2-core machine may wake a send a few ms late, which is jitter, not drift.
    assert np.median(late) < 0.003 and late.max() < 0.05
    assert abs(np.polyfit(np.arange(len(sent)), sent, 1)[0] - 0.125) < 0.001
    ons = [m for _, m in recorder.messages if m[0] & 0xF0 == 0x90 and m[2] and m[0] & 0x0F != 9]
    assert len(ons) == 2 * live.played  # two voices per played slot (drum events aside), none lost


class StalledSink(Sink):
    """A sink that hangs in emit until released (a stuck network share, a frozen DAW ...)."""

    name = "stalled sink"

    def __init__(self) -> None:
        self.release = threading.Event()

    def emit(self, slot) -> None:
        self.release.wait()


def test_the_training_thread_never_blocks_on_a_stalled_sink(tmp_path):
    model = tiny_model()
    stalled = StalledSink()
    step_times = []
    with pytest.warns(RuntimeWarning, match="falling behind"):
        son = gradmidi.Sonifier(model, tmp_path / "run.mid", sinks=[stalled], queue_size=32)
        son._test_model = model
        for _ in range(200):
            model.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            t0 = time.perf_counter()
            son.step()
            step_times.append(time.perf_counter() - t0)
    assert son.dropped > 0  # steps beyond the bounded queue are dropped, never waited for
    assert max(step_times) < 0.05 and np.median(step_times) < 0.002
    stalled.release.set()
    son.close()


TRAINER = textwrap.dedent(
    """
    import sys, time, torch, torch.nn as nn, gradmidi
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with gradmidi.Sonifier(model, sys.argv[1], live=sys.argv[2], midi_api="UNIX_JACK", gate=1.0) as son:
        while True:
            model.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            son.step()
            print("step", flush=True)
            time.sleep(0.03)
    """
)




@JACK_RACE
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_end_every_note_and_send_all_notes_off(jack, recorder, tmp_path, sig):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run.mid"), recorder.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env=child_env(), preexec_fn=default_signals)
    try:
        for _ in range(30):
            proc.stdout.readline()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err if sig == signal.SIGINT else proc.returncode == 143
    time.sleep(0.2)
    messages = [m for _, m in recorder.messages]
    sounding = set()
    for m in messages:
        if m[0] & 0xF0 == 0x90 and m[2]:
            sounding.add((m[0] & 0x0F, m[1]))
        elif m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and not m[2]):
            sounding.discard((m[0] & 0x0F, m[1]))
    assert any(m[0] & 0xF0 == 0x90 for m in messages)
    assert not sounding, f"left sounding: {sounding}"
    used = {m[0] & 0x0F for m in messages if m[0] & 0xF0 in (0x80, 0x90, 0xC0)}
    assert {0, 1} <= used
    tail = messages[-2 * len(used):]
    for channel in used:
        assert bytes([0xB0 | channel, 123, 0]) in tail and bytes([0xB0 | channel, 120, 0]) in tail
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["markers"][-1][1] == "interrupted"
    record(f"{signal.Signals(sig).name} with a live port (JACK)", 1,
           "every sounding note ended, All Notes Off and All Sound Off on every channel used")


def test_in_process_synth_plays_through_a_real_audio_driver(tmp_path):
    out = tmp_path / "synth.wav"
    live = LiveSink(SynthOutput(driver="file", **{"audio.file.name": str(out)}))
    model = tiny_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid", live=[live]) as son:
        son._test_model = model
        train(son, 12, pause=0.1)
    audio, _ = soundfile.read(out)
    assert np.sqrt(np.mean(audio**2)) > 1e-3


def test_an_audio_driver_that_does_not_start_is_refused():
    if Path("/dev/snd").exists():
        pytest.skip("this machine has a sound card")
    with pytest.raises(gradmidi.GradmidiError, match="audio driver 'alsa' did not start"):
        SynthOutput(driver="alsa")  # pyfluidsynth's start() would report success here


@JACK_RACE
def test_play_sends_a_saved_score_on_time_then_silences(jack, recorder, tmp_path):
    model = tiny_model()
    with gradmidi.Sonifier(model, tmp_path / "run.mid") as son:
        son._test_model = model
        train(son, 16)
    result = subprocess.run([sys.executable, "-m", "gradmidi", "play", str(tmp_path / "run.mid"), "--port",
                             recorder.name, "--api", "UNIX_JACK"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    ons = [(t, m) for t, m in recorder.messages if m[0] & 0xF0 == 0x90 and m[2]]
    assert len(ons) == 32
    first_voice = np.array([t for t, m in ons if m[0] & 0x0F == 0])
    assert np.allclose(np.diff(first_voice), 0.125, atol=0.005)
    last_on = max(i for i, (_, m) in enumerate(recorder.messages) if m[0] & 0xF0 == 0x90)
    after = {m for _, m in recorder.messages[last_on:]}
    for channel in (0, 1):
        assert bytes([0xB0 | channel, 123, 0]) in after and bytes([0xB0 | channel, 120, 0]) in after


def test_virtual_port_chosen_by_mido_backend_reaches_a_listener(jack, tmp_path, monkeypatch):
    import rtmidi

    monkeypatch.setenv("MIDO_BACKEND", "mido.backends.rtmidi/UNIX_JACK")  # mido's own variable picks the API
    model = tiny_model()
    received = []
    with gradmidi.Sonifier(model, tmp_path / "run.mid", live="virtual:gmvirtual") as son:
        listener = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="gmlistener")
        ports = listener.get_ports()
        listener.open_port(next(i for i, p in enumerate(ports) if "gmvirtual" in p))  # a DAW connecting to us
        listener.set_callback(lambda event, _: received.append(bytes(event[0])))
        son._test_model = model
        train(son, 8, pause=0.13)
    listener.close_port()
    listener.delete()
    assert sum(1 for m in received if m[0] & 0xF0 == 0x90 and m[2]) >= 2 * 6
    assert bytes([0xB0, 123, 0]) in received


def test_ports_lists_the_jack_outputs(jack, recorder):
    result = subprocess.run([sys.executable, "-m", "gradmidi", "ports", "--api", "UNIX_JACK"], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0 and recorder.port in result.stdout.split("\n")
