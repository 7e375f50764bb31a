"""Reading scores back: gradmidi's commands on long scores, against symusic and mido parsing the same files.

Each score is made by the real writer (``MidiFileSink`` fed ``Slot`` records: norms wandering in log
space, a spike event and its marker every 997 steps), then read by:

- ``read_score``: gradmidi's reader in process (the time to a ``ScoreFile``), and the commands
  ``gradmidi inspect --json``, ``decode -o CSV``, ``plot`` and ``report --no-audio``, each a fresh
  process timed whole (interpreter start and imports included);
- symusic (C++, the fastest MIDI parser we know) and mido: ``Score(path)`` / ``MidiFile(path)`` in
  process, and symusic also as a whole process, so the commands have a like-for-like anchor.

Every run is its own process; peak memory is that process's peak resident set (``wait4``).

    python benchmarks/bench_read.py [--sizes 100000x16 1000000x32] [--anchors-up-to 100000] [--only-decode-over 100000]

symusic is a benchmark-only dependency: ``pip install 'gradmidi[bench]'``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPIKE_EVERY = 997


def make_score(path: Path, steps: int, n_layers: int, seed: int = 0) -> int:
    """A score of ``steps`` slots of ``n_layers`` layers (planned into voices as a Sonifier plans them,
    so 32 layers are 15 voices: a score has 15 melodic channels), written by the real writer."""
    from gradmidi.clock import Clock
    from gradmidi.mapping import Mapping, norms_to_pitches, pitches_to_velocities
    from gradmidi.score import Event, ScoreHeader, Slot
    from gradmidi.sinks.midifile import MidiFileSink
    from gradmidi.voices import plan_voices

    voices, _ = plan_voices([(f"layers.{i}", "Linear") for i in range(n_layers)])
    n = len(voices)
    mapping = Mapping()
    header = ScoreHeader(voices, mapping, Clock(), "bench", {"first_step": 0})
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3, 0, n)
    log_range = (-4.0, 2.0)  # the default mapping's: no range change is written
    sink = MidiFileSink(path, flush_interval=1e9)
    sink.open(header)
    present = np.ones(n, dtype=np.int64)
    for first in range(0, steps, 4096):
        norms = 10 ** (base + 0.1 * rng.normal(size=(min(4096, steps - first), n)))
        pitches = norms_to_pitches(norms, log_range, mapping)
        velocities = pitches_to_velocities(pitches, mapping)
        for i in range(len(norms)):
            step = first + i
            events = [Event(step, "spike", (voices[0].name,), float(norms[i, 0]))] if step % SPIKE_EVERY == 500 else []
            sink.emit(Slot(step, step, 1, norms[i], pitches[i], velocities[i], present, log_range, events))
    sink.close()
    return n


def run(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak MB, stdout) of one fresh process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(argv)} failed: {err.read().strip()[-500:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


IN_PROCESS = {  # prints the seconds one parse takes, after the imports
    "gradmidi read_score": "import gradmidi, time, sys; t = time.perf_counter(); gradmidi.read_score(sys.argv[1]); "
                           "print(time.perf_counter() - t)",
    "symusic Score": "import symusic, time, sys; t = time.perf_counter(); symusic.Score(sys.argv[1]); "
                     "print(time.perf_counter() - t)",
    "mido MidiFile": "import mido, time, sys; t = time.perf_counter(); mido.MidiFile(sys.argv[1]); "
                     "print(time.perf_counter() - t)",
}


def bench(steps: int, layers: int, folder: Path, anchors: bool, commands: bool) -> None:
    score = folder / f"score-{steps}x{layers}.mid"
    t0 = time.perf_counter()
    voices = make_score(score, steps, layers)
    notes = steps * voices
    print(f"\n{steps:,} steps x {layers} layers ({voices} voices): {notes:,} notes, "
          f"{score.stat().st_size / 1e6:.1f} MB (written in {time.perf_counter() - t0:.0f} s)")
    print(f"  {'what':<34} {'parse s':>8} {'process s':>10} {'peak MB':>8}")
    py = sys.executable
    parses = ["gradmidi read_score", "symusic Score"] + (["mido MidiFile"] if anchors else [])
    for name in parses:
        wall, peak, out = run([py, "-c", IN_PROCESS[name], str(score)], folder)
        print(f"  {name:<34} {float(out):>8.3f} {wall:>10.2f} {peak:>8.0f}")
    runs = {
        "gradmidi inspect --json": ["inspect", "--json", str(score)],
        "gradmidi decode -o CSV": ["decode", str(score), "-o", str(folder / "norms.csv")],
        "gradmidi plot": ["plot", str(score), "-o", str(folder / "plot.png")],
        "gradmidi report --no-audio": ["report", str(score), "--no-audio", "-o", str(folder / "report")],
    }
    for name, args in runs.items():
        if not commands and name != "gradmidi decode -o CSV":
            continue
        wall, peak, _ = run([py, "-m", "gradmidi", *args], folder)
        print(f"  {name:<34} {'':>8} {wall:>10.2f} {peak:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["100000x16", "1000000x32"], help="STEPSxLAYERS")
    parser.add_argument("--anchors-up-to", type=int, default=100_000, help="mido parses scores up to this many steps")
    parser.add_argument("--only-decode-over", type=int, default=100_000,
                        help="above this many steps, run only the parses and decode (the memory bound)")
    args = parser.parse_args()
    try:
        import symusic  # noqa: F401
    except ImportError:
        raise SystemExit("bench_read needs symusic: pip install 'gradmidi[bench]'") from None
    print("Reading scores: in-process parse time, and whole processes (start and imports included) "
          "with their peak memory")
    with tempfile.TemporaryDirectory(prefix="gradmidi-bench-read-") as folder:
        for size in args.sizes:
            steps, layers = (int(x) for x in size.lower().split("x"))
            bench(steps, layers, Path(folder), steps <= args.anchors_up_to, steps <= args.only_decode_over)


if __name__ == "__main__":
    main()
