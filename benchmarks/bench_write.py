"""Writing scores: notes per second and peak memory, against mido and pretty_midi.

The same notes (8 voices, one note per voice per slot, pitches and velocities from a fixed
random pool) are written by:

- gradmidi: ``MidiFileSink`` fed ``Slot`` records as the worker feeds them, with its periodic
  crash-safe flush every 2 s (``tick()`` every 256 slots, as the worker's batches call it);
- mido: ``MidiTrack`` of ``Message`` objects, then ``MidiFile.save``;
- pretty_midi: ``Instrument.notes`` of ``Note`` objects, then ``PrettyMIDI.write``.

Each (writer, size) runs in a fresh process; peak memory is the growth of the process's
peak resident set (VmHWM, reset before writing) over its size when writing begins. At the
largest size gradmidi also reports its flushes: the time one full rewrite takes, the interval
it then keeps (flushes are spaced so their CPU time stays under 1.5 % of a core), and their share.

    python benchmarks/bench_write.py [--sizes 10000 1000000 10000000] [--anchors-up-to 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gradmidi.sinks.midifile import FLUSH_SHARE

VOICES = 8
POOL = 4096


def note_pool(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(36, 97, (POOL, VOICES)), rng.integers(40, 120, (POOL, VOICES))


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)
    except OSError:
        pass


def write_gradmidi(path: Path, notes: int) -> dict:
    from gradmidi.clock import Clock
    from gradmidi.mapping import Mapping
    from gradmidi.score import ScoreHeader, Slot, Voice
    from gradmidi.sinks.midifile import MidiFileSink

    pitches, velocities = note_pool()
    voices = [Voice(i, f"layer{i}", (f"layer{i}",), "linear", i, 0) for i in range(VOICES)]
    header = ScoreHeader(voices, Mapping(), Clock(), "bench", {"first_step": 0})
    # A pool of slot records, re-indexed as they go: making records is the pipeline's work, not the writer's.
    log_range = (-4.0, 2.0)  # the default Mapping's, so no range change is written
    slots = [Slot(i, i, 1, np.ones(VOICES), pitches[i], velocities[i], np.ones(VOICES, dtype=np.int64), log_range)
             for i in range(POOL)]
    sink = MidiFileSink(path, flush_interval=2.0)
    sink.open(header)
    reset_peak()
    start_rss = rss_kb("VmRSS")
    flush_cpu = 0.0
    flushes = 0
    t0 = time.perf_counter()
    for i in range(notes // VOICES):
        slot = slots[i % POOL]
        slot.index = slot.first_step = i
        sink.emit(slot)
        if i % 256 == 255:
            before, last = time.process_time(), sink._last_flush
            sink.tick()
            if sink._last_flush != last:
                flush_cpu += time.process_time() - before
                flushes += 1
    sink.close()
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "growth_mb": (rss_kb("VmHWM") - start_rss) / 1024, "flushes": flushes,
              "flush_cpu": flush_cpu, "bytes": path.stat().st_size}
    # One more rewrite of the finished score, timed alone: what a flush costs at this size.
    sink2 = MidiFileSink(path.with_name("again.mid"), flush_interval=2.0)
    sink2.open(header)
    for i in range(notes // VOICES):
        slot = slots[i % POOL]
        slot.index = slot.first_step = i
        sink2.emit(slot)
    sink2._encode_notes()
    sink2._dirty = True
    before = time.process_time()
    sink2.flush()
    result["one_flush_cpu"] = time.process_time() - before
    result["one_flush_wall"] = sink2._flush_wall
    sink2.close()
    return result


def write_mido(path: Path, notes: int) -> dict:
    import mido

    from gradmidi.clock import Clock

    pitches, velocities = note_pool()
    p, v = pitches.tolist(), velocities.tolist()
    clock = Clock()
    step, length = clock.slot_ticks, clock.note_span(0, 1)[1]
    reset_peak()
    start_rss = rss_kb("VmRSS")
    t0 = time.perf_counter()
    mid = mido.MidiFile(type=1, ticks_per_beat=clock.ticks_per_beat)
    for voice in range(VOICES):
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=f"layer{voice}"))
        track.append(mido.Message("program_change", channel=voice, program=0))
        for i in range(notes // VOICES):
            row = i % POOL
            track.append(mido.Message("note_on", channel=voice, note=p[row][voice], velocity=v[row][voice],
                                      time=0 if i == 0 else step - length))
            track.append(mido.Message("note_off", channel=voice, note=p[row][voice], velocity=0, time=length))
        mid.tracks.append(track)
    mid.save(path)
    return {"seconds": time.perf_counter() - t0, "growth_mb": (rss_kb("VmHWM") - start_rss) / 1024,
            "bytes": path.stat().st_size}


def write_pretty_midi(path: Path, notes: int) -> dict:
    import pretty_midi

    from gradmidi.clock import Clock

    pitches, velocities = note_pool()
    p, v = pitches.tolist(), velocities.tolist()
    clock = Clock()
    slot_s = clock.slot_seconds
    length_s = slot_s * clock.note_span(0, 1)[1] / clock.slot_ticks
    reset_peak()
    start_rss = rss_kb("VmRSS")
    t0 = time.perf_counter()
    pm = pretty_midi.PrettyMIDI(resolution=clock.ticks_per_beat, initial_tempo=clock.bpm)
    for voice in range(VOICES):
        inst = pretty_midi.Instrument(program=0, name=f"layer{voice}")
        inst.notes = [pretty_midi.Note(v[i % POOL][voice], p[i % POOL][voice], i * slot_s, i * slot_s + length_s)
                      for i in range(notes // VOICES)]
        pm.instruments.append(inst)
    pm.write(str(path))
    return {"seconds": time.perf_counter() - t0, "growth_mb": (rss_kb("VmHWM") - start_rss) / 1024,
            "bytes": path.stat().st_size}


WRITERS = {"gradmidi": write_gradmidi, "mido": write_mido, "pretty_midi": write_pretty_midi}


def run_one(writer: str, notes: int) -> dict:
    """In a fresh process, so memory peaks do not mix."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, __file__, "--one", writer, str(notes), tmp], capture_output=True,
                             text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--anchors-up-to", type=int, default=1_000_000,
                        help="largest size mido and pretty_midi write (10M takes them minutes and GBs)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        writer, notes, folder = args.one
        print(json.dumps(WRITERS[writer](Path(folder) / "out.mid", int(notes))))
        return
    print(f"# {VOICES} voices, one note each per slot; notes/s over the whole write (records fed, file on disk); "
          "memory: peak growth while writing")
    print(f"{'notes':>10} {'writer':>12} {'seconds':>8} {'notes/s':>11} {'vs mido':>8} {'peak +MB':>9} {'file MB':>8}")
    for notes in args.sizes:
        results = {writer: run_one(writer, notes) for writer in WRITERS
                   if writer == "gradmidi" or notes <= args.anchors_up_to}
        for writer, r in results.items():
            ratio = f"{results['mido']['seconds'] / r['seconds']:7.1f}x" if "mido" in results else f"{'':>8}"
            print(f"{notes:>10,} {writer:>12} {r['seconds']:8.2f} {notes / r['seconds']:11,.0f} {ratio} "
                  f"{r['growth_mb']:9.1f} {r['bytes'] / 2**20:8.1f}")
        g = results["gradmidi"]
        interval = max(2.0, g["one_flush_cpu"] / FLUSH_SHARE)
        print(f"{'':>10} flushes: {g['flushes']} during the write ({g['flush_cpu']:.2f} s CPU); one rewrite of the "
              f"{notes:,}-note score takes {g['one_flush_cpu'] * 1e3:.0f} ms of CPU ({g['one_flush_wall'] * 1e3:.0f} ms "
              f"wall), so they come every {interval:.1f} s: {100 * g['one_flush_cpu'] / interval:.2f} % of one core")


if __name__ == "__main__":
    main()
