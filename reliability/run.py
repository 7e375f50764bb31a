"""Runs the full fault matrix and fuzzing, then rewrites RELIABILITY.md from what the tests measured.

    .venv/bin/python reliability/run.py                 # the full matrix (about 10 minutes on 2 cores)
    .venv/bin/python reliability/run.py --fuzz 200      # fewer fuzz cases
    .venv/bin/python reliability/run.py --ci            # the bounded CI sizes (a quick look)

It runs the same tests as CI (tests/test_faults.py, test_hostile_inputs.py, test_soak.py and the
live fault tests of test_live.py) with GRADMIDI_RELIABILITY=full: 20 SIGKILL trials, 5 of each
signal, the 1,000,000-step soak, 1,000 hypothesis examples per property. Each test appends its
figures to a log; a failing test fails the run and RELIABILITY.md is not rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_faults.py", "tests/test_hostile_inputs.py", "tests/test_soak.py",
         "tests/test_live.py::test_port_lost_mid_run_stops_the_live_sink_and_training_and_file_go_on",
         "tests/test_live.py::test_sigint_and_sigterm_end_every_note_and_send_all_notes_off"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=None, help="hypothesis examples per property (default 1000)")
    parser.add_argument("--ci", action="store_true", help="the bounded CI sizes instead of the full matrix")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "RELIABILITY.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradmidi-reliability-") as folder:
        log = Path(folder) / "figures.jsonl"
        env = {**os.environ, "GRADMIDI_RELIABILITY_LOG": str(log), "PYTHONPATH": str(ROOT)}
        if not args.ci:
            env["GRADMIDI_RELIABILITY"] = "full"
        if args.fuzz is not None:
            env["GRADMIDI_FUZZ_EXAMPLES"] = str(args.fuzz)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                 "-o", "timeout=7200", *TESTS], cwd=ROOT, env=env)
        seconds = time.monotonic() - started
        if result.returncode:
            print("reliability: a test failed; RELIABILITY.md left as it was", file=sys.stderr)
            return result.returncode
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    args.out.write_text(render(rows, seconds, full=not args.ci, fuzz=env.get("GRADMIDI_FUZZ_EXAMPLES")))
    print(f"wrote {args.out} ({len(rows)} rows, {seconds / 60:.1f} min)")
    return 0


def render(rows: list[dict], seconds: float, full: bool, fuzz: str | None) -> str:
    import torch

    import gradmidi

    lines = [
        "# Reliability",
        "",
        "A monitoring tool must never be what kills a long run or loses its record. Every row below is an",
        "automated test (tests/test_faults.py, test_hostile_inputs.py, test_soak.py, test_live.py), run",
        "here at full size by `.venv/bin/python reliability/run.py`, which rewrites this file. CI runs the",
        "same tests bounded (one SIGKILL trial, a 5,000-step soak, 30 examples per property);",
        "`GRADMIDI_FUZZ_EXAMPLES=N` sets the fuzz size of any run.",
        "",
        f"Run {date.today().isoformat()}: {'full matrix' if full else 'CI sizes'}"
        f"{f', {fuzz} fuzz examples' if fuzz else ''}; {seconds / 60:.1f} min; gradmidi {gradmidi.__version__}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores. Every test passed.",
        "",
        "| fault or input class | trials | outcome | figures |",
        "|---|---:|---|---|",
    ]
    for row in rows:
        figures = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["figures"].items()) or ""
        lines.append(f"| {row['fault']} | {row['trials']:,} | {row['outcome']} | {figures} |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """## How each fault is made

- **SIGKILL**: a real training process (6 linear layers, 100 steps/s) killed at a random moment 0.2-6 s
  after its first step. The default flush interval is 2 s; a step is counted lost when it is missing
  from the file, and "oldest step lost" is its age at the kill (allowed: the flush interval plus 1 s
  for the worker's batching on a loaded machine).
- **SIGINT / SIGTERM**: sent to a real training process, with a `with` block and with atexit alone.
  SIGTERM is hooked like SIGINT: the score is marked interrupted, `SystemExit(143)` unwinds, and the
  score is closed; a SIGTERM handler set before gradmidi's is called instead, an ignored SIGTERM stays
  ignored, and a SIGTERM that arrives during a close lets the close finish first.
- **Live faults** run over a real JACK server (dummy backend) with a real FluidSynth, killed mid-run.
- **Folder deleted**: the output folder removed while training runs (in process).
- **Disk full**: a real 32 KiB tmpfs, mounted in a private user and mount namespace (`unshare`, no
  root needed), that the score outgrows mid-run: a real ENOSPC. Where user namespaces are not
  allowed the test is skipped with the reason.
- **Read-only**: a tmpfs mounted read-only the same way: the Sonifier and `gradmidi sonify` refuse it
  with one line before any training or reading.
- **Soak**: synthetic norms for 32 layers (grouped into 15 voices) through the same pipeline and
  writer as a live run, flushed as a run is; resident memory is sampled every tenth of the run.
- **Hostile files**: every reader (`inspect`, `decode`, `plot`, `render`, `play`) run in process
  through the CLI on each case (and some as real processes under a 2 GiB address-space limit);
  `play` reads the score before it opens a port, so a bad file is refused first. Outcome: a one-line
  `Error:` and exit status 1, or success on a file that is still valid; a case may take at most 30 s.
- **Hostile logs**: `gradmidi sonify` on generated CSV and JSONL (bad numbers, NaN, Inf, 1e30 steps,
  empty names, missing columns) and a damaged TensorBoard file; what it writes is read back.

## Limits found and kept

- A render is held in memory whole: renders longer than 4 GiB of float32 stereo (3.4 h at 44.1 kHz)
  are refused with one line, and fewer processes are used so that all buffers together stay under it.
- `play` plays in real time: a score whose notes lie years apart would play silence for years
  (Ctrl-C stops it and silences every note).
- `decode`, `inspect` and `plot` hold a score's notes in memory: about 0.4 kB per note (see the
  soak's reading-process figure).
"""


if __name__ == "__main__":
    sys.exit(main())
