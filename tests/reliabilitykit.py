"""Shared by the reliability tests: how many trials to run, and where their figures go.

CI runs a bounded matrix inside the normal suite. ``reliability/run.py`` runs the same tests
with ``GRADMIDI_RELIABILITY=full`` (20 kill trials, the 1,000,000-step soak, more fuzz cases)
and ``GRADMIDI_RELIABILITY_LOG`` naming a JSON-lines file that every test appends its figures
to; it then writes RELIABILITY.md from them. ``GRADMIDI_FUZZ_EXAMPLES`` sets the fuzz size alone.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

FULL = os.environ.get("GRADMIDI_RELIABILITY") == "full"


def scale(ci: int, full: int) -> int:
    return full if FULL else ci


def fuzz_examples(ci: int = 30, full: int = 1000) -> int:
    return int(os.environ.get("GRADMIDI_FUZZ_EXAMPLES", scale(ci, full)))


def record(fault: str, trials: int, outcome: str, **figures) -> None:
    """One row of RELIABILITY.md (only when the harness asks for them)."""
    log = os.environ.get("GRADMIDI_RELIABILITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"fault": fault, "trials": trials, "outcome": outcome, "figures": figures}) + "\n")


# A small training loop run as its own process: argv = score path, "with" | "atexit",
# flush interval, live spec ("-" for none), steps (0: forever), pause between steps.
TRAINER = textwrap.dedent(
    """
    import sys, time, warnings, torch, torch.nn as nn, gradmidi
    path, mode, flush, live, steps, pause = sys.argv[1:7]
    flush, steps, pause = float(flush), int(steps), float(pause)
    warnings.simplefilter("always")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    options = dict(flush_interval=flush)
    if live != "-":
        options.update(live=live, midi_api="UNIX_JACK", gate=1.0)

    def train(son):
        step = 0
        while not steps or step < steps:
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).mean().backward()
            son.step()
            opt.step()
            step += 1
            print(f"{time.monotonic():.4f} {step}", flush=True)
            if pause:
                time.sleep(pause)

    if mode == "with":
        with gradmidi.Sonifier(model, path, **options) as son:
            train(son)
    else:
        son = gradmidi.Sonifier(model, path, **options)  # closed by atexit
        train(son)
    print("finished", flush=True)
    """
)


def trainer_command(script, path, mode="with", flush=2.0, live="-", steps=0, pause=0.01) -> list[str]:
    return [sys.executable, str(script), str(path), mode, str(flush), live, str(steps), str(pause)]


def default_signals() -> None:
    """preexec_fn for a child trainer: SIGINT as in a terminal, even where this process was started
    in the background (where shells ignore SIGINT, and a child would inherit that, so that Ctrl-C
    and the tests' SIGINT would do nothing: gradmidi leaves an ignored signal ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def child_env(**extra) -> dict:
    """The environment for a child Python: the gradmidi under test first on its path."""
    from pathlib import Path

    import gradmidi

    root = str(Path(gradmidi.__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def train_steps(son, model, steps: int, pause: float = 0.0) -> None:
    """A tiny model's training steps in this process (inputs of width 8), each sounded."""
    import time

    import torch

    for _ in range(steps):
        model.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        son.step()
        if pause:
            time.sleep(pause)
