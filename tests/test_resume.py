"""A run resumed from a checkpoint continues its score: the steps lost with the crash are dropped."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi
from scorekit import Recorder


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def train(son, model, opt, steps, seed, checkpoint_at=None):
    data = torch.Generator().manual_seed(seed)
    saved = None
    for step in steps:
        if step == checkpoint_at:
            saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
        x = torch.randn(8, 6, generator=data)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        son.step(loss=loss)
        opt.step()
    return saved


def heard(slots, lo, hi):
    """voice -> [(slot, pitch)] of the recorded slots with first_step in [lo, hi)."""
    out: dict[int, list[tuple[int, int]]] = {}
    for slot in slots:
        if lo <= slot.first_step < hi:
            for voice, pitch in enumerate(slot.pitches):
                if pitch >= 0:
                    out.setdefault(voice, []).append((slot.index, int(pitch)))
    return out


@pytest.mark.parametrize("every", [1, 4])
def test_a_resumed_run_keeps_the_steps_before_its_checkpoint_and_replaces_those_after(tmp_path, every):
    path = tmp_path / "run.mid"
    model, opt = make()
    first = Recorder()
    with gradmidi.Sonifier(model, path, sinks=[first], every=every) as son:
        checkpoint = train(son, model, opt, range(0, 80), seed=1, checkpoint_at=48)
    # The crash lost steps 48-79; training goes on from the checkpoint with other batches.
    model.load_state_dict(checkpoint[0])
    opt.load_state_dict(checkpoint[1])
    second = Recorder()
    with gradmidi.Sonifier(model, path, sinks=[second], every=every, resume=True, start_step=48) as son:
        assert son.steps == 48
        train(son, model, opt, range(48, 120), seed=2)
    score = gradmidi.read_score(path)
    expected = heard(first.slots, 0, 48)
    for voice, notes in heard(second.slots, 48, 120).items():
        expected.setdefault(voice, []).extend(notes)
    assert {v: [(s, p) for s, p, _ in score.notes.get(v, [])] for v in expected} == expected
    assert score.summary()["steps"] == 120
    resumes = [(score.step_of(slot), text) for slot, text in score.markers if text.startswith("resumed")]
    assert resumes == [(48, "resumed at step 48")]


def test_resume_without_a_start_step_continues_after_the_last_step_and_twice_in_a_row(tmp_path):
    path = tmp_path / "run.mid"
    model, opt = make()
    for n, seed in enumerate((1, 2, 3)):
        with gradmidi.Sonifier(model, path, resume=True) as son:
            assert son.steps == 30 * n
            train(son, model, opt, range(30 * n, 30 * n + 30), seed=seed)
    score = gradmidi.read_score(path)
    assert score.summary()["steps"] == 90
    resumes = [(score.step_of(slot), text) for slot, text in score.markers if text.startswith("resumed")]
    assert resumes == [(30, "resumed at step 30"), (60, "resumed at step 60")]
    assert all(len(score.notes[v.index]) == 90 for v in score.header.voices)


def test_resuming_a_score_of_other_voices_or_mapping_is_one_line_naming_what_differs(tmp_path):
    path = tmp_path / "run.mid"
    model, opt = make()
    with gradmidi.Sonifier(model, path) as son:
        train(son, model, opt, range(10), seed=1)
    with pytest.raises(gradmidi.GradmidiError, match="other mapping .*scale: 'dorian' here, 'minor_pentatonic'"):
        gradmidi.Sonifier(model, path, resume=True, scale="dorian")
    with pytest.raises(gradmidi.GradmidiError, match="other voices"):
        gradmidi.Sonifier(nn.Sequential(nn.Linear(6, 3)), path, resume=True)
    assert gradmidi.read_score(path).summary()["steps"] == 10  # nothing the user wrote is lost


def test_resume_with_no_score_yet_starts_one_at_the_start_step(tmp_path):
    model, opt = make()
    with gradmidi.Sonifier(model, tmp_path / "new.mid", resume=True, start_step=200) as son:
        train(son, model, opt, range(200, 210), seed=1)
    score = gradmidi.read_score(tmp_path / "new.mid")
    rows = score.decode()
    assert rows[0][0] == 200 and rows[-1][0] == 209 and not score.markers
    assert np.isfinite([norm for _, _, norm in rows]).all()


TRAINER = '''
import json, sys, time, torch, torch.nn as nn, gradmidi
path, log, attempt, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
if start:
    state = torch.load(f"{path}.{start}.pt")
    model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])

class Truth(gradmidi.Sink):
    """What this attempt sounded, step by step: the test's truth where the attempts overlap."""
    def __init__(self):
        self.file = open(log, "a")
    def emit(self, slot):
        self.file.write(json.dumps({"step": slot.first_step, "pitches": slot.pitches.tolist()}) + "\\n")
        self.file.flush()

son = gradmidi.Sonifier(model, path, resume=True, start_step=start, flush_interval=0.05, sinks=[Truth()])
for step in range(start, 300):
    if step % 50 == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{path}.{step}.pt")
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step * 10 + attempt))  # each attempt its own data
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    son.step(loss=loss)
    opt.step()
    print(step, flush=True)
    time.sleep(0.004)
son.close()
'''


def test_sigkill_resume_sigkill_resume_gives_one_score_of_the_training_that_is_now_the_truth(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    from reliabilitykit import child_env, default_signals

    script, path, log = tmp_path / "trainer.py", tmp_path / "run.mid", tmp_path / "truth.jsonl"
    script.write_text(TRAINER)
    for attempt, start, kill_at in ((0, 0, 190), (1, 150, 240), (2, 200, None)):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(log), str(attempt), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                env=child_env(), preexec_fn=default_signals)
        try:
            if kill_at is None:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
                continue
            for line in proc.stdout:
                if int(line) >= kill_at:
                    time.sleep(0.3)  # a few flushes: steps well before the kill are on disk
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
    truth: dict[int, list[int]] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        truth[record["step"]] = record["pitches"]  # a later attempt's step replaces an earlier one's
    score = gradmidi.read_score(path)
    assert sorted(truth) == list(range(300)) and score.summary()["steps"] == 300
    for voice in score.header.voices:
        heard = {slot: pitch for slot, pitch, _ in score.notes[voice.index]}
        assert len(score.notes[voice.index]) == len(heard) == 300  # one note a step: none kept twice
        assert heard == {step: pitches[voice.index] for step, pitches in truth.items()}, voice.name
    resumes = [(score.step_of(slot), text) for slot, text in score.markers if text.startswith("resumed")]
    assert resumes == [(150, "resumed at step 150"), (200, "resumed at step 200")]
