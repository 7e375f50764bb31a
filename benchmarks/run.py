"""The whole benchmark suite in one run, recorded into BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py [--quick] [--only capture write ...] [--no-record]

Runs each benchmark as its own process, one after another (never two at once: they would
disturb each other's timings), prints their tables, and rewrites the "Latest full run"
section of BENCHMARKS.md with the machine, the versions, every command line and its output.
Benchmarks whose tools are missing (jackd, fluidsynth) are skipped, and the record says so.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECORD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- full run: begin -->", "<!-- full run: end -->"

# name: (arguments, quick arguments, what it needs on the PATH)
SUITE = {
    "capture": (["bench_capture.py"], ["bench_capture.py", "--reps", "60", "--rounds", "3"], None),
    "step": (["bench_step.py"], ["bench_step.py", "--steps", "60", "--rounds", "3"], None),
    "write": (["bench_write.py"], ["bench_write.py", "--sizes", "10000", "1000000", "--anchors-up-to", "10000"], None),
    "read": (["bench_read.py"], ["bench_read.py", "--sizes", "10000x16", "100000x16", "--anchors-up-to", "10000"],
             None),
    "render": (["bench_render.py"], ["bench_render.py", "--steps", "480", "1000", "--rounds", "1"], "fluidsynth"),
    "live": (["bench_live.py", "--minutes", "3"], ["bench_live.py", "--minutes", "0.5"], "jackd"),
    "start": (["bench_start.py"], ["bench_start.py", "--rounds", "3"], None),
    "serve": (["bench_serve.py"], ["bench_serve.py", "--steps", "300", "--rounds", "1"], None),
    "deepspeed": (["bench_deepspeed.py"], ["bench_deepspeed.py", "--reps", "10", "--rounds", "2"], None),
    "distributed": (["bench_distributed.py"], ["bench_distributed.py", "--steps", "40", "--rounds", "2"], None),
}


def versions() -> str:
    import numpy
    import torch

    cpus = os.cpu_count()
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    fluidsynth = shutil.which("fluidsynth")
    fs_version = ""
    if fluidsynth:
        out = subprocess.run([fluidsynth, "--version"], capture_output=True, text=True).stdout
        fs_version = out.splitlines()[0] if out else ""
    return (f"{platform.system()} {platform.machine()}, {model or 'cpu'}, {cpus} cores; Python "
            f"{platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}"
            + (f"; {fs_version}" if fs_version else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the suite (minutes)")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), help="run only these benchmarks")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    names = args.only or list(SUITE)
    # Start-up is measured as an installed package has it: pip compiles the bytecode at install,
    # while an editable checkout under PYTHONDONTWRITEBYTECODE would compile every module each start.
    compileall.compile_dir(ROOT / "gradmidi", quiet=1)
    started = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"Recorded {started:%Y-%m-%d %H:%M} UTC by `{' '.join(['benchmarks/run.py', *sys.argv[1:]])}`.",
             f"Machine: {versions()}.", ""]
    failed = False
    for name in names:
        full, quick, needs = SUITE[name]
        argv = quick if args.quick else full
        script = HERE / argv[0]
        command = f"python benchmarks/{' '.join(argv)}"
        if not script.exists():
            lines += [f"### {name}", f"not run: benchmarks/{argv[0]} is not in this checkout", ""]
            continue
        if needs and not shutil.which(needs):
            lines += [f"### {name}", f"not run: `{needs}` is not installed", ""]
            continue
        print(f"==> {command}", flush=True)
        result = subprocess.run([sys.executable, str(script), *argv[1:]], cwd=ROOT, capture_output=True, text=True)
        print(result.stdout, end="", flush=True)
        if result.returncode:
            failed = True
            print(result.stderr, file=sys.stderr)
        lines += [f"### {name}", f"`{command}`" + (f" (exit {result.returncode})" if result.returncode else ""),
                  "", "```", result.stdout.rstrip(), "```", ""]
    if not args.no_record:
        record(lines)
        print(f"recorded in {RECORD.name}")
    sys.exit(1 if failed else 0)


def record(lines: list[str]) -> None:
    text = RECORD.read_text() if RECORD.exists() else "# Benchmarks\n"
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Latest full run\n\n" + block + "\n"
    RECORD.write_text(text)


if __name__ == "__main__":
    main()
