"""The fault matrix: killed, interrupted and terminated trainers; a dying synth; the output folder
deleted, the disk full, the output read-only. Training always finishes (or stops as the signal
says) and the score on disk is always a valid one. Figures go to RELIABILITY.md (reliabilitykit).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mido
import pytest
import torch.nn as nn

import gradmidi
from reliabilitykit import FULL, TRAINER, child_env, default_signals, record, scale, trainer_command, train_steps

FLUSH = 2.0  # the default flush interval
SLACK = 1.0  # the worker's batching and a loaded machine, on top of the flush interval


def _notes_closed(path: Path) -> bool:
    for track in mido.MidiFile(path).tracks:
        sounding = set()
        for msg in track:
            if msg.type == "note_on" and msg.velocity > 0:
                if (msg.channel, msg.note) in sounding:
                    return False
                sounding.add((msg.channel, msg.note))
            elif msg.type in ("note_off", "note_on"):
                sounding.discard((msg.channel, msg.note))
        if sounding:
            return False
    return True


def _start(tmp_path: Path, **options) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    path = tmp_path / "run.mid"
    proc = subprocess.Popen(trainer_command(script, path, **options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, env=child_env(), preexec_fn=default_signals)
    return proc, path


def _progress_for(proc: subprocess.Popen, seconds: float) -> list[tuple[float, int]]:
    """(time, steps done) lines during ``seconds`` after the trainer's first step."""
    lines = []
    first = proc.stdout.readline()
    assert first, proc.stderr.read()
    lines.append((float(first.split()[0]), int(first.split()[1])))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append((float(line.split()[0]), int(line.split()[1])))
    return lines


def test_sigkill_at_random_moments_keeps_every_step_older_than_the_flush_interval(tmp_path):
    trials = scale(1, 20)
    rng = random.Random(int(os.environ.get("GRADMIDI_RELIABILITY_SEED", "9")))
    moments, worst_age, kept = [], 0.0, []
    for trial in range(trials):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        proc, path = _start(folder)
        moment = rng.uniform(0.2, 3 * FLUSH)
        try:
            progress = _progress_for(proc, moment)
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait(timeout=10)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
        score = gradmidi.read_score(path)  # every version on disk parses
        assert _notes_closed(path)
        steps = score.summary()["steps"]
        assert steps <= progress[-1][1]
        decoded = {step for step, _, _ in score.decode()}
        assert decoded == set(range(steps))  # no hole: every slot written decodes
        # The first step not in the file: it must be younger than the flush interval (plus slack).
        missing = [t for t, step in progress if step > steps]
        age = killed_at - missing[0] if missing else 0.0
        assert age <= FLUSH + SLACK, f"trial {trial}: a step {age:.2f} s old was lost (killed at {moment:.2f} s)"
        moments.append(moment)
        worst_age = max(worst_age, age)
        kept.append(steps)
    record("SIGKILL at a random moment (0.2-6 s into training)", trials,
           "every file parsed, every note closed, every step older than the 2 s flush interval kept",
           oldest_step_lost_s=round(worst_age, 2), steps_kept=f"{min(kept)}-{max(kept)}",
           kill_moments_s=f"{min(moments):.2f}-{max(moments):.2f}")


# SIGINT in CI is test_crash_safety's; the full matrix (reliability/run.py) repeats it here.
@pytest.mark.parametrize("sig", [
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.skipif(not FULL, reason="full matrix only")),
    pytest.param(signal.SIGTERM, id="SIGTERM"),
])
@pytest.mark.parametrize("mode", ["with", "atexit"])
def test_sigint_and_sigterm_leave_a_complete_file_with_every_note_closed(tmp_path, sig, mode):
    trials = scale(1, 5)
    for trial in range(trials):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        proc, path = _start(folder, mode=mode)
        try:
            progress = _progress_for(proc, 0.5 + trial * 0.3)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in err and proc.returncode == -signal.SIGINT  # as Python does it
        else:
            assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err  # as a shell reports it
        assert "finished" not in out
        done = max([progress[-1][1], *(int(line.split()[1]) for line in out.splitlines() if line.strip())])
        summary = gradmidi.read_score(path).summary()
        assert done - 1 <= summary["steps"] <= done + 1  # nothing waits for a flush that never came
        assert summary["markers"][-1][1] == "interrupted"
        assert _notes_closed(path)
    record(f"{signal.Signals(sig).name} ({'with block' if mode == 'with' else 'closed by atexit'})", trials,
           "complete file, every note closed, 'interrupted' marker" + (
               ", exit status 143" if sig == signal.SIGTERM else ", KeyboardInterrupt as usual"))


def test_sigterm_handler_set_before_gradmidi_is_kept(tmp_path):
    """A framework's own SIGTERM handler (checkpoint and exit) still runs; gradmidi only marks the score."""
    script = tmp_path / "own.py"
    script.write_text(
        "import signal, sys, time, torch.nn as nn, gradmidi\n"
        "signal.signal(signal.SIGTERM, lambda s, f: (print('own handler', flush=True), sys.exit(7)))\n"
        "model = nn.Linear(2, 2)\n"
        "with gradmidi.Sonifier(model, sys.argv[1]) as son:\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.01)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run.mid")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=child_env(),
                            preexec_fn=default_signals)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 7 and "own handler" in out, err
    assert gradmidi.read_score(tmp_path / "run.mid").summary()["markers"][-1][1] == "interrupted"


def test_output_folder_deleted_mid_run_gives_one_warning_and_training_goes_on(tmp_path):
    trials = scale(1, 5)
    for trial in range(trials):
        folder = tmp_path / f"out{trial}"
        folder.mkdir()
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gradmidi.Sonifier(model, folder / "run.mid", flush_interval=0.05) as son:
                train_steps(son, model, 20, pause=0.01)
                shutil.rmtree(folder)
                train_steps(son, model, 40, pause=0.01)
        assert son.steps == 60 and son.dropped == 0  # every step went through; only the file stopped
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "midi file stopped" in messages[0], messages
        assert not folder.exists()  # nothing recreated it behind the user's back
    record("output folder deleted mid-run", trials, "training finished, one warning, the other sinks went on")


def _unshare_available() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare command"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode:
        return f"cannot make a user and mount namespace here ({probe.stderr.decode().strip()})"
    return None


needs_mounts = pytest.mark.skipif(bool(_unshare_available()), reason=str(_unshare_available()))


def _in_mount(tmp_path: Path, options: str, command: list[str], copy_out: Path | None = None):
    """Runs ``command`` in a private mount namespace with a tmpfs (``options``) on tmp_path/mnt:
    a real, small or read-only file system, no root needed (a user namespace)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shell = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 3; "$@"; rc=$?; '
    shell += '[ -n "$COPY_OUT" ] && cp -r "$MNT"/. "$COPY_OUT"/; exit $rc'
    env = child_env(MNT=str(mnt), COPY_OUT=str(copy_out or ""))
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell, "sh", options,
                             str(mnt), "--", *command], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=120, env=env)
    assert result.returncode != 99, f"mount failed: {result.stderr}"
    return mnt, result


@needs_mounts
def test_disk_full_mid_run_gives_one_warning_keeps_the_last_good_file_and_training_finishes(tmp_path):
    """A real full disk: a 32 KiB tmpfs that the growing score outgrows mid-run."""
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    kept = tmp_path / "kept"
    kept.mkdir()
    steps = 800
    mnt, result = _in_mount(tmp_path, "size=32k", trainer_command(script, tmp_path / "mnt" / "run.mid", flush=0.05,
                                                                  steps=steps, pause=0.0), copy_out=kept)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "finished" and f" {steps}\n" in result.stdout
    warned = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1 and "midi file stopped" in warned[0] and "No space left" in warned[0], result.stderr
    score = gradmidi.read_score(kept / "run.mid")  # the last complete version, before the disk filled
    assert 0 < score.summary()["steps"] < steps
    assert _notes_closed(kept / "run.mid")
    assert [p.name for p in kept.iterdir()] == ["run.mid"]  # no temporary file left behind
    record("disk full mid-run (a 32 KiB tmpfs, a real ENOSPC)", 1,
           "training finished, one warning, the last complete score kept, no litter",
           steps_in_file=f"{score.summary()['steps']} of {steps}")


@needs_mounts
def test_read_only_output_is_a_clear_error_before_training_begins(tmp_path):
    code = (
        "import sys, torch.nn as nn, gradmidi\n"
        "try:\n"
        "    gradmidi.Sonifier(nn.Linear(2, 2), sys.argv[1])\n"
        "except gradmidi.GradmidiError as exc:\n"
        "    print('refused:', exc)\n"
    )
    _, result = _in_mount(tmp_path, "ro", [sys.executable, "-c", code, str(tmp_path / "mnt" / "run.mid")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"refused: cannot write {tmp_path / 'mnt' / 'run.mid'}: Read-only file system"
    log = tmp_path / "log.csv"
    log.write_text("step,name,value\n0,a,1.0\n1,a,2.0\n")
    (tmp_path / "cli").mkdir()
    _, cli = _in_mount(tmp_path / "cli", "ro", [sys.executable, "-m", "gradmidi", "sonify", str(log), "-o",
                                                str(tmp_path / "cli" / "mnt" / "x.mid")])
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1 and "Read-only file system" in cli.stderr, cli.stderr
    record("output path read-only from the start", 2,
           "one-line error before training begins (Sonifier and gradmidi sonify)")
