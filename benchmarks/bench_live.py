"""Live path: training-thread cost, hand-over-to-port latency, and timing drift.

Runs against a real JACK server (dummy backend) with a JACK MIDI input recording what
arrives, like the tests. Three measurements, side by side in one run:

1. training-thread cost: ``son.step()`` with a file only vs with a file and a live port
   (interleaved rounds, medians; the difference is what the live path costs the trainer);
2. hand-over latency: from ``son.step()`` returning to the note leaving for the port, with
   training slower than the tempo so every step plays as it arrives (p50/p99), the training
   thread sleeping between steps and then computing; with gradmidi's one-step path and without,
   and beside the floors of the same conditions: a bare thread and a bare spawned process woken
   with nothing to do;
3. drift: a long run with training a little faster than the tempo, so the scheduler keeps
   its grid; drift is the trend of (sent - due) over the run, jitter its spread.

    python benchmarks/bench_live.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from jackkit import JackServer, MidiRecorder  # noqa: E402

import gradmidi  # noqa: E402
from gradmidi.outputs import PortOutput  # noqa: E402
from gradmidi.sinks.live import LiveSink  # noqa: E402


def model_and_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(8, 32)

    def backward():
        model.zero_grad()
        model(x).pow(2).mean().backward()

    return model, backward


def step_cost(recorder: MidiRecorder, tmp: Path, rounds: int = 10, steps: int = 200) -> tuple[float, float]:
    """Median son.step() time (s) with a file only, and with a file plus a live port."""
    model, backward = model_and_step()
    times = {"file": [], "live": []}
    for r in range(rounds):
        for kind in times:
            live = [LiveSink(PortOutput(recorder.name, api="UNIX_JACK"))] if kind == "live" else None
            with gradmidi.Sonifier(model, tmp / f"{kind}{r}.mid", live=live) as son:
                for _ in range(steps):
                    backward()
                    t0 = time.perf_counter()
                    son.step()
                    times[kind].append(time.perf_counter() - t0)
                    time.sleep(0.002)
    return statistics.median(times["file"]), statistics.median(times["live"])


def wake_cost(rounds: int = 10, steps: int = 200) -> tuple[float, float]:
    """The floor under the live path's cost: a bare ``queue.put`` that wakes a thread waiting in
    ``get`` (as the live worker waits), against one whose thread polls every 50 ms (as the file-only
    worker batches); median seconds per put, 2 ms apart, interleaved rounds."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for waiting in times:
            handoff: queue.Queue = queue.Queue()

            def consume(handoff=handoff, waiting=waiting) -> None:
                while True:
                    if not waiting:
                        time.sleep(0.05)
                    items = [handoff.get()]
                    while not handoff.empty():
                        items.append(handoff.get())
                    if None in items:
                        return

            thread = threading.Thread(target=consume)
            thread.start()
            for step in range(steps):
                t0 = time.perf_counter()
                handoff.put_nowait(step)
                times[waiting].append(time.perf_counter() - t0)
                time.sleep(0.002)
            handoff.put(None)
            thread.join()
    return statistics.median(times[False]), statistics.median(times[True])


class Trainer:
    """The training thread between steps, slower than the tempo so each step plays as it arrives:
    sleeping, or computing (torch matmuls on one intra-op thread, the interpreter lock let go in each,
    as a CPU step does). An idle machine is the harder case: a core that slept runs the worker's
    first code slower."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy
        self.work = torch.randn(160, 160)

    def between_steps(self) -> None:
        until = time.monotonic() + 0.09
        if self.busy:
            while time.monotonic() < until:
                torch.mm(self.work, self.work)
        else:
            time.sleep(0.09)


def gradmidi_handover(recorder: MidiRecorder, tmp: Path, busy: bool, one_step_path: bool,
                      steps: int) -> tuple[np.ndarray, float]:
    """From ``son.step()`` returning to the notes leaving for the port, and the CPU time per step of
    gradmidi's two threads (the worker and the live scheduler; the JACK client's own is left out)."""
    model, backward = model_and_step()
    trainer = Trainer(busy)
    live = LiveSink(PortOutput(recorder.name, api="UNIX_JACK"), record_timing=True)
    handed = []
    with gradmidi.Sonifier(model, tmp / "latency.mid", live=[live], bpm=240) as son:  # 62.5 ms slots
        son._session._builder._quick = one_step_path  # off: every step through the block machinery
        clocks = [time.pthread_getcpuclockid(t.ident) for t in (son._session._worker, live._thread)]
        cpu = sum(map(time.clock_gettime, clocks))
        for _ in range(steps):
            backward()
            son.step()
            handed.append(time.monotonic())
            trainer.between_steps()
        used = sum(map(time.clock_gettime, clocks)) - cpu
        taken = son._session._builder.quick_slots
    sent = np.array([s for _, s in live.timing])
    assert live.merged == 0 and len(sent) == steps, (live.merged, len(sent))
    assert (taken > 0.9 * steps) == one_step_path, taken
    return sent - np.array(handed), used / steps


def thread_handover(busy: bool, steps: int) -> np.ndarray:
    """The floor: a bare Python thread woken through a queue, doing nothing but read the clock."""
    trainer = Trainer(busy)
    handoff: queue.Queue = queue.Queue()
    woken: list[float] = []

    def wait() -> None:
        while handoff.get() is not None:
            woken.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    handed = []
    for _ in range(steps):
        handed.append(time.monotonic())
        handoff.put(handed[-1])
        trainer.between_steps()
    handoff.put(None)
    thread.join()
    return np.array(woken) - np.array(handed)


def _process_side(conn) -> None:
    conn.send_bytes(b"ready")
    woken = []
    while conn.recv_bytes():
        woken.append(time.monotonic())
    conn.send(woken)


def process_handover(busy: bool, steps: int) -> np.ndarray:
    """A worker out of the interpreter: a spawned process woken through a pipe (what a worker fed
    through shared memory would still need to be told), doing nothing but read the clock."""
    import multiprocessing

    trainer = Trainer(busy)
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_process_side, args=(theirs,))
    process.start()
    ours.recv_bytes()  # started (spawning imports this module, torch and all)
    handed = []
    for _ in range(steps):
        handed.append(time.monotonic())
        ours.send_bytes(b"step")
        trainer.between_steps()
    ours.send_bytes(b"")
    woken = ours.recv()
    process.join()
    return np.array(woken) - np.array(handed)


def handover(recorder: MidiRecorder, tmp: Path, rounds: int = 2, steps: int = 125) -> dict:
    """Every way of handing a step over, sleeping and computing between steps, interleaved in rounds:
    the bare floors (a thread, a process) and gradmidi with and without its one-step path."""
    kinds = ("thread", "process", "gradmidi", "gradmidi, one-step path off")
    found: dict = {}
    for _ in range(rounds):
        for busy in (False, True):
            for kind in kinds:
                if kind == "thread":
                    delays, cpu = thread_handover(busy, steps), None
                elif kind == "process":
                    delays, cpu = process_handover(busy, steps), None
                else:
                    delays, cpu = gradmidi_handover(recorder, tmp, busy, kind == "gradmidi", steps)
                entry = found.setdefault((kind, busy), ([], []))
                entry[0].append(delays)
                if cpu is not None:
                    entry[1].append(cpu)
    return {key: (np.concatenate(delays), np.median(cpu) if cpu else None) for key, (delays, cpu) in found.items()}


def drift(recorder: MidiRecorder, tmp: Path, minutes: float) -> tuple[np.ndarray, np.ndarray]:
    model, backward = model_and_step()
    live = LiveSink(PortOutput(recorder.name, api="UNIX_JACK"), record_timing=True)
    end = time.monotonic() + minutes * 60
    with gradmidi.Sonifier(model, tmp / "drift.mid", live=[live]) as son:  # 125 ms slots
        while time.monotonic() < end:
            backward()
            son.step()
            time.sleep(0.11)  # a little faster than the tempo: the grid is kept, with merges now and then
    due = np.array([d for d, _ in live.timing])
    sent = np.array([s for _, s in live.timing])
    return due - due[0], sent - due


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the drift run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one intra-op thread, as bench_step: the other core is the worker's
    server = JackServer()
    recorder = MidiRecorder()
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            file_only, with_live = step_cost(recorder, tmp)
            put_alone, put_waking = wake_cost()
            latency = handover(recorder, tmp)
            when, error = drift(recorder, tmp, args.minutes)
    finally:
        recorder.close()
        server.stop()
    slope = np.polyfit(when, error, 1)[0] if len(when) > 2 else float("nan")
    print(f"# JACK dummy backend, torch {torch.__version__}; drift run {args.minutes:g} min, {len(when)} slots")
    print(f"training-thread son.step(): file only {file_only * 1e6:.1f} us, file + live {with_live * 1e6:.1f} us, "
          f"live path costs {(with_live - file_only) * 1e6:+.1f} us (goal < 20 us)")
    print(f"  the floor under it: a bare queue.put {put_alone * 1e6:.1f} us, {put_waking * 1e6:.1f} us when it wakes a "
          f"waiting thread ({(put_waking - put_alone) * 1e6:+.1f} us)")
    print("hand-over, from the training thread to the port (gradmidi) or to a bare waiter, in ms; 250 steps each,"
          " interleaved; CPU: gradmidi's worker and scheduler threads, per step (goal: gradmidi p99 <= 0.5 ms)")
    for busy, name in ((False, "sleeping"), (True, "computing")):
        print(f"  training thread {name} between steps")
        for (kind, was_busy), (delays, cpu) in latency.items():
            if was_busy == busy:
                ms = delays * 1e3
                used = f"  CPU {cpu * 1e6:5.0f} us/step" if cpu is not None else ""
                print(f"    {kind:29s} p50 {np.percentile(ms, 50):6.3f}  p99 {np.percentile(ms, 99):6.3f}  "
                      f"max {ms.max():6.3f}{used}")
    print(f"drift over the run: {slope * when[-1] * 1e3:+.3f} ms (trend of sent - due); "
          f"lateness p50 {np.percentile(error, 50) * 1e3:.3f} ms, p99 {np.percentile(error, 99) * 1e3:.3f} ms, "
          f"max {error.max() * 1e3:.3f} ms (goal drift < 2 ms)")


if __name__ == "__main__":
    main()
