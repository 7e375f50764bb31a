"""Rendering speed against FluidSynth's own command-line fast render, side by side.

For a long synthetic score (default 8,000 steps of 8 voices: about 17 minutes of music) and
the same font, each round times, as whole commands from a cold start:

- ``fluidsynth -ni -F out.wav -r 44100 FONT score.mid`` pinned to one core (taskset),
- ``gradmidi render score.mid -o out.wav --jobs 1`` pinned to the same core,
- ``gradmidi render score.mid -o out.wav`` on every core,

and prints medians and ratios. gradmidi's time includes what the CLI does not do: loudness
normalisation (BS.1770) and the atomic write.

    python benchmarks/bench_render.py [--steps 8000] [--rounds 3] [--soundfont FONT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradmidi.fonts import resolve_soundfont
from gradmidi.render import render

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scores import synthetic_score  # noqa: E402


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soundfont", default=None)
    args = parser.parse_args()
    if not shutil.which("fluidsynth"):
        sys.exit("the fluidsynth command is needed for the comparison (apt-get install fluidsynth)")
    font = resolve_soundfont(args.soundfont)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    gradmidi = [sys.executable, "-m", "gradmidi", "render"]
    with tempfile.TemporaryDirectory() as tmp:
        score = Path(tmp) / "long.mid"
        synthetic_score(score, args.steps)
        runs = {
            "fluidsynth -F, 1 core": pin + ["fluidsynth", "-ni", "-F", f"{tmp}/cli.wav", "-r", "44100", str(font),
                                           str(score)],
            "gradmidi, 1 core": pin + gradmidi + [str(score), "-o", f"{tmp}/one.wav", "--jobs", "1", "-q",
                                                  "--soundfont", str(font)],
            f"gradmidi, {os.cpu_count()} cores": gradmidi + [str(score), "-o", f"{tmp}/all.wav", "-q",
                                                             "--soundfont", str(font)],
        }
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, cmd in runs.items():
                times[name].append(timed(cmd))
        seconds = render(score, f"{tmp}/check.wav", font, jobs=1).seconds
    base = statistics.median(times["fluidsynth -F, 1 core"])
    print(f"# {args.steps} steps ({seconds:.0f} s of audio), font {font.name}, {args.rounds} rounds, medians")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:24} {med:7.2f} s  {med / base:5.2f}x the CLI  ({seconds / med:5.0f}x real time)")


if __name__ == "__main__":
    main()
