"""Soak: a long run of synthetic norms (no model) through the same pipeline and writer as a live
run. Memory stays flat while the score grows (the notes are spooled to disk), the file is valid,
and every slot decodes back to its norm. CI runs 5,000 steps; the full harness 1,000,000 x 32 layers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from reliabilitykit import child_env, record, scale

SOAK = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from gradmidi.clock import Clock
    from gradmidi.mapping import Mapping
    from gradmidi.pipeline import ScoreBuilder
    from gradmidi.score import ScoreHeader, StepRecord
    from gradmidi.sinks.midifile import MidiFileSink
    from gradmidi.voices import plan_voices

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    path, steps, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    voices, assignment = plan_voices([(f"blocks.{i}", "Linear") for i in range(layers)])
    header = ScoreHeader(voices, Mapping(), Clock(), "soak", {"first_step": 0})
    builder = ScoreBuilder(header, assignment)
    sink = MidiFileSink(path, flush_interval=2.0)
    sink.open(header)
    present = np.ones(layers, bool)
    base = np.logspace(-3, 1, layers)
    rss, started = [], time.monotonic()
    for step in range(steps):
        norms = base * (1 + 0.5 * np.sin(step / 50 + np.arange(layers)))  # deterministic, known per step
        for slot in builder.add_step(StepRecord(step, norms, present)):
            sink.emit(slot)
        if step % 1000 == 999:
            sink.tick()  # as the worker does: the file is rewritten every 2 s throughout
        if step % max(steps // 10, 1) == 0:
            rss.append(rss_mb())
    for slot in builder.finish():
        sink.emit(slot)
    sink.close()
    rss.append(rss_mb())
    print(json.dumps({"rss_mb": rss, "peak_mb": peak_mb(),
                      "seconds": time.monotonic() - started, "voices": len(voices)}))
    """
)

# Decoding in its own process too, so its peak memory is its own.
DECODE = textwrap.dedent(
    """
    import json, sys, numpy as np, gradmidi
    score = gradmidi.read_score(sys.argv[1])
    names = [v.name for v in score.header.voices]
    decoded = np.full((score.summary()["steps"], len(names)), np.nan)
    for step, name, norm in score.decode():
        decoded[step, names.index(name)] = norm
    np.save(sys.argv[2], decoded)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    print(json.dumps({"peak_mb": peak, "steps": score.summary()["steps"], "slots": score.summary()["slots"]}))
    """
)


def expected_voice_norms(steps: int, layers: int) -> np.ndarray:
    """The norms the soak feeds, grouped as the pipeline groups them (root of the sum of squares)."""
    from gradmidi.voices import plan_voices

    voices, assignment = plan_voices([(f"blocks.{i}", "Linear") for i in range(layers)])
    base = np.logspace(-3, 1, layers)
    t = np.arange(steps)[:, None]
    norms = base * (1 + 0.5 * np.sin(t / 50 + np.arange(layers)))
    out = np.zeros((steps, len(voices)))
    for v in range(len(voices)):
        out[:, v] = np.sqrt(np.sum(norms[:, assignment == v] ** 2, axis=1))
    return out


def test_soak_memory_stays_flat_and_every_slot_decodes(tmp_path):
    steps, layers = scale(5_000, 1_000_000), 32
    path = tmp_path / "soak.mid"
    result = subprocess.run([sys.executable, "-c", SOAK, str(path), str(steps), str(layers)], capture_output=True,
                            text=True, timeout=3600, stdin=subprocess.DEVNULL, env=child_env())
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    rss = figures["rss_mb"]
    # Bounded: from the first tenth of the run to its end the resident memory grows by under
    # 16 MB, whatever the length (the notes live in spool files, not in memory).
    growth = max(rss) - rss[1]
    assert growth < 16, rss
    result = subprocess.run([sys.executable, "-c", DECODE, str(path), str(tmp_path / "decoded.npy")],
                            capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL, env=child_env())
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert reading["steps"] == steps and reading["slots"] == steps
    expected = expected_voice_norms(steps, layers)
    decoded = np.load(tmp_path / "decoded.npy")
    assert decoded.shape == expected.shape
    assert not np.isnan(decoded).any()  # every slot of every voice is there
    # ... and within half a scale step: a minor pentatonic step is at most 3 semitones = 0.3 decades.
    assert np.max(np.abs(np.log10(decoded) - np.log10(expected))) <= 0.15 + 1e-9
    record(f"soak: {steps:,} steps x {layers} layers ({figures['voices']} voices), synthetic norms", 1,
           "valid file, every slot of every voice decoded within half a scale step",
           peak_rss_mb=round(figures["peak_mb"], 1), rss_growth_mb=round(growth, 1),
           file_mb=round(path.stat().st_size / 2**20, 1), write_seconds=round(figures["seconds"], 1),
           decode_peak_rss_mb=round(reading["peak_mb"], 1))
