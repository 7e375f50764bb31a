"""Serving a run (``serve=``) to 0, 1, 8 and 32 listeners on loopback, side by side in one run.

The training loop is the small fast model of ``bench_step.py`` (16 x Linear(16) + Tanh, batch 8,
one torch thread), sonified with ``serve="127.0.0.1:0"`` and no file. The listeners live in another
process that connects them, says hello as ``gradmidi listen`` does, and only counts the bytes it
receives until the run hangs up, so its own work does not land in this process's figures.
Configurations are interleaved in rounds. Per configuration: the median step time and what it adds
to a plain step, gradmidi's CPU per step off the training thread (the worker and the server
thread: process CPU time less the training thread's), and what each listener received: bytes per
second of training and per slot, and whether any listener was dropped.

    python benchmarks/bench_serve.py [--steps 2000] [--rounds 3] [--listeners 0 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

import gradmidi
from gradmidi.wire import PROTOCOL

# Connects N listeners, says hello on each, counts what arrives until every one is hung up on.
LISTENERS = r"""
import json, selectors, socket, sys, time
port, n, hello = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
sel = selectors.DefaultSelector()
got = {}
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(hello)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    got[s] = 0
print("connected", flush=True)
open_ = n
while open_:
    for key, _ in sel.select(30):
        data = key.fileobj.recv(1 << 16)
        if data:
            got[key.fileobj] += len(data)
        else:
            sel.unregister(key.fileobj)
            open_ -= 1
print(json.dumps(sorted(got.values())), flush=True)
"""


def model_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(16) for m in (nn.Linear(16, 16), nn.Tanh())])
    return model, torch.randn(8, 16)


def run(listeners: int | None, steps: int) -> dict:
    """One configuration: None is the plain loop; 0.. listeners serve."""
    model, x = model_and_input()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    son = gradmidi.Sonifier(model, None, serve="127.0.0.1:0") if listeners is not None else None
    proc = None
    if son is not None and listeners:
        hello = _hello()
        proc = subprocess.Popen([sys.executable, "-c", LISTENERS, str(son.server.port), str(listeners), hello.hex()],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        deadline = time.monotonic() + 30
        while son.server.listeners < listeners and time.monotonic() < deadline:
            time.sleep(0.01)
    times = []
    off_thread = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        c0 = time.process_time() - time.thread_time()
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        if son is not None:
            son.step(loss=loss)
        opt.step()
        times.append(time.perf_counter() - t0)
        off_thread += time.process_time() - time.thread_time() - c0
    wall = time.perf_counter() - start
    result = {"step": statistics.median(times), "off_thread": off_thread / steps}
    if son is not None:
        dropped = son.server.dropped_listeners
        son.close()
        result["dropped"] = dropped
    if proc is not None:
        out, _ = proc.communicate(timeout=60)
        received = json.loads(out.strip().splitlines()[-1])
        result["bytes_per_s"] = statistics.median(received) / wall
        result["bytes_per_slot"] = statistics.median(received) / steps
    return result


def _hello() -> bytes:
    from gradmidi.wire import encode

    return encode({"type": "hello", "protocol": PROTOCOL})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fair against machine noise)")
    parser.add_argument("--listeners", type=int, nargs="+", default=[0, 1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs: list[int | None] = [None, *args.listeners]
    results: dict[int | None, list[dict]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            results[config].append(run(config, args.steps))

    def med(config, key):
        values = [r[key] for r in results[config] if key in r]
        return statistics.median(values) if values else float("nan")

    bare = med(None, "step")
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread; "
          f"16 x Linear(16) + Tanh, batch 8; {args.steps} steps per configuration, {args.rounds} interleaved rounds; "
          "medians; one slot per step")
    print(f"{'listeners':>10} {'step us':>9} {'added us':>9} {'gradmidi CPU us/step':>21} {'bytes/s each':>13} "
          f"{'bytes/slot':>11} {'dropped':>8}")
    print(f"{'no serve':>10} {bare * 1e6:9.0f} {'':>9} {med(None, 'off_thread') * 1e6:21.0f}")
    for config in args.listeners:
        step = med(config, "step")
        cpu = med(config, "off_thread") - med(None, "off_thread")
        rate = med(config, "bytes_per_s")
        per_slot = med(config, "bytes_per_slot")
        dropped = sum(r.get("dropped", 0) for r in results[config])
        rate_text = f"{rate:13.0f}" if config else f"{'-':>13}"
        slot_text = f"{per_slot:11.0f}" if config else f"{'-':>11}"
        print(f"{config:>10} {step * 1e6:9.0f} {(step - bare) * 1e6:9.0f} {cpu * 1e6:21.0f} {rate_text} {slot_text} "
              f"{dropped:8d}")


if __name__ == "__main__":
    main()
