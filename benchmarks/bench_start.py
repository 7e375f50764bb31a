"""How fast the quick commands start: ``gradmidi --help``, ``programs`` and ``inspect`` of a one-minute
score, each a fresh process timed whole, against the interpreter starting and doing nothing and
against it importing numpy (what every command that reads a score needs). Rounds interleave them;
medians.

    python benchmarks/bench_start.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scores import synthetic_score  # noqa: E402


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    gradmidi = [sys.executable, "-m", "gradmidi"]
    with tempfile.TemporaryDirectory() as tmp:
        score = synthetic_score(Path(tmp) / "minute.mid", 480)
        runs = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
            "gradmidi --help": [*gradmidi, "--help"],
            "gradmidi programs": [*gradmidi, "programs"],
            "gradmidi inspect (1 min)": [*gradmidi, "inspect", str(score)],
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, cmd in runs.items():
                times[name].append(timed(cmd))
    print(f"# fresh processes, {args.rounds} interleaved rounds, medians; goal: the gradmidi commands well under 0.5 s")
    print(f"{'':28} {'wall s':>7}")
    for name, values in times.items():
        print(f"{name:28} {statistics.median(values):7.3f}")


if __name__ == "__main__":
    main()
