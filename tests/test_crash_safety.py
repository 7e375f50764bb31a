"""A training process that dies leaves a valid score: SIGKILL keeps what was flushed, SIGINT closes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mido
import pytest

import gradmidi
from reliabilitykit import child_env, default_signals

TRAINER = textwrap.dedent(
    """
    import sys, time, torch, torch.nn as nn, gradmidi
    path, use_with = sys.argv[1], sys.argv[2] == "with"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train(son):
        step = 0
        while True:
            opt.zero_grad()
            loss = model(torch.randn(32, 8)).pow(2).mean()
            loss.backward()
            son.step(loss=loss)
            opt.step()
            step += 1
            print(f"{time.monotonic():.4f} {step}", flush=True)
            time.sleep(0.01)

    if use_with:
        with gradmidi.Sonifier(model, path) as son:
            train(son)
    else:
        son = gradmidi.Sonifier(model, path)  # closed by atexit
        train(son)
    """
)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    path = tmp_path / "run.mid"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=child_env(), preexec_fn=default_signals,  # the gradmidi under test; SIGINT as in a terminal
    )
    return proc, path


def _read_progress(proc: subprocess.Popen, seconds: float) -> list[tuple[float, int]]:
    """(monotonic time, steps done) lines printed by the trainer during ``seconds`` after its first
    step (start-up, importing torch, can take seconds on a loaded machine and is not counted)."""
    lines = []
    first = proc.stdout.readline()
    if first:
        t, step = first.split()
        lines.append((float(t), int(step)))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        t, step = line.split()
        lines.append((float(t), int(step)))
    return lines


def _assert_notes_closed(path: Path) -> None:
    midi = mido.MidiFile(path)
    for track in midi.tracks:
        sounding = set()
        for msg in track:
            if msg.type == "note_on" and msg.velocity > 0:
                assert (msg.channel, msg.note) not in sounding, "a note overlaps itself"
                sounding.add((msg.channel, msg.note))
            elif msg.type in ("note_off", "note_on"):
                sounding.discard((msg.channel, msg.note))
        assert not sounding, f"notes left sounding in track {track.name!r}: {sounding}"


def test_sigkill_mid_run_leaves_a_valid_file_with_the_flushed_steps(tmp_path):
    proc, path = _start(tmp_path, "with")
    try:
        progress = _read_progress(proc, 6.0)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert progress, proc.stderr.read()
    score = gradmidi.read_score(path)  # parses: the file on disk is always a complete version
    mido.MidiFile(path)
    _assert_notes_closed(path)
    # The default flush interval is 2 s: every step done 3 s before the kill must be in the file.
    flushed = max((step for t, step in progress if t <= killed_at - 3.0), default=0)
    assert flushed > 10, "the trainer ran too briefly to test flushing"
    assert score.summary()["steps"] >= flushed
    assert score.summary()["steps"] <= progress[-1][1]
    rows = score.decode()
    assert {step for step, _, _ in rows} >= set(range(flushed))


@pytest.mark.parametrize("mode", ["with", "atexit"])
def test_sigint_leaves_a_complete_file_with_every_note_closed(tmp_path, mode):
    proc, path = _start(tmp_path, mode)
    try:
        progress = _read_progress(proc, 1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err  # the usual Ctrl-C behaviour is kept
    later = [int(line.split()[1]) for line in out.splitlines() if line.strip()]
    done = max([progress[-1][1], *later])
    score = gradmidi.read_score(path)
    summary = score.summary()
    # Everything the trainer finished is in the file: nothing waits for a flush that never came.
    assert done - 1 <= summary["steps"] <= done + 1
    assert any(text == "interrupted" for _, text in summary["markers"])
    _assert_notes_closed(path)
