"""Rendering speed against FluidSynth's own command-line fast render, side by side.

For synthetic scores of 8 voices (default 480 steps, one minute of music, where start-up
counts, and 8,000 steps, about 17 minutes) and the same font, each round times, as whole
commands from a cold start:

- ``fluidsynth -ni -F out.wav -r 44100 FONT score.mid`` pinned to one core (taskset),
- ``gradmidi render score.mid -o out.wav --jobs 1`` pinned to the same core,
- the same with ``--raw`` (no loudness normalisation: like for like with the CLI),
- ``gradmidi render score.mid -o out.wav`` on every core,

and prints medians and ratios. gradmidi's default run also does what the CLI does not:
loudness measurement and normalisation (BS.1770).

    python benchmarks/bench_render.py [--steps 480 8000] [--rounds 3] [--soundfont FONT]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child): CPU time is steadier on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[480, 8000], help="score sizes, in steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soundfont", default=None)
    args = parser.parse_args()
    if not shutil.which("fluidsynth"):
        sys.exit("the fluidsynth command is needed for the comparison (apt-get install fluidsynth)")
    font = resolve_soundfont(args.soundfont)
    for steps in args.steps:
        compare(steps, args.rounds, font)


def compare(steps: int, rounds: int, font: Path) -> None:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    gradmidi = [sys.executable, "-m", "gradmidi", "render"]
    with tempfile.TemporaryDirectory() as tmp:
        score = Path(tmp) / "long.mid"
        synthetic_score(score, steps)
        runs = {
            "fluidsynth -F, 1 core": pin + ["fluidsynth", "-ni", "-F", f"{tmp}/cli.wav", "-r", "44100", str(font),
                                           str(score)],
            "gradmidi, 1 core": pin + gradmidi + [str(score), "-o", f"{tmp}/one.wav", "--jobs", "1", "-q",
                                                  "--soundfont", str(font)],
            "gradmidi --raw, 1 core": pin + gradmidi + [str(score), "-o", f"{tmp}/raw.wav", "--jobs", "1", "--raw",
                                                        "-q", "--soundfont", str(font)],
            f"gradmidi, {os.cpu_count()} cores": gradmidi + [str(score), "-o", f"{tmp}/all.wav", "-q",
                                                             "--soundfont", str(font)],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, cmd in runs.items():
                times[name].append(timed(cmd))
        seconds = render(score, f"{tmp}/check.wav", font, jobs=1).seconds
    cli = "fluidsynth -F, 1 core"
    wall_base = statistics.median(w for w, _ in times[cli])
    cpu_base = statistics.median(c for _, c in times[cli])
    print(f"# {steps} steps ({seconds:.0f} s of audio), font {font.name}, {rounds} rounds, medians")
    print(f"{'':26} {'wall s':>7} {'vs CLI':>7} {'CPU s':>7} {'vs CLI':>7} {'x real time':>12}")
    for name, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:26} {wall:7.2f} {wall / wall_base:6.2f}x {cpu:7.2f} {cpu / cpu_base:6.2f}x {seconds / wall:12.0f}")

if __name__ == "__main__":
    main()
