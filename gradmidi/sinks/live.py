"""The live sink: a real-time scheduler thread that plays slots at the tempo.

Slots arrive from the gradmidi worker whenever training produces them. The scheduler
owns the clock: it plays one slot per slot duration on an absolute grid (no drift). When
training is slower than the tempo, a slot plays as soon as it arrives; when training is
faster, the backlog is held to ``max_latency`` seconds by merging pending slots (max or rms
of their norms), never queued without bound. On close every sounding note is ended and All
Notes Off / All Sound Off go to every channel used.
"""

from __future__ import annotations

import heapq
import sys
import threading
import time
from collections import deque

import numpy as np

from ..events import get
from ..instruments import DRUM_CHANNEL
from ..mapping import norms_to_pitches
from ..outputs import silence_messages
from ..score import ScoreHeader, Slot
from .base import Sink

DRUM_VELOCITY = 110
# While live sinks play, Python hands the GIL over every millisecond instead of every 5: the
# scheduler and worker threads must not wait a whole default switch interval behind a training
# thread running Python. Restored when the last live sink closes.
SWITCH_INTERVAL = 0.001
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def _quicker_thread_switching(on: bool) -> None:
    global _switch_users, _switch_saved
    with _switch_lock:
        if on:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
            _switch_users += 1
        elif _switch_users:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)
HEALTH_SECONDS = 1.0  # how often the scheduler checks that its port still exists


def merge_slots(slots: list[Slot], how: str, header: ScoreHeader, log_range) -> Slot:
    """One slot standing for several: per-voice max (or rms) of the norms, every event kept."""
    norms = np.vstack([s.norms for s in slots])
    with np.errstate(invalid="ignore"):
        if how == "rms":
            merged = np.sqrt(np.nanmean(norms**2, axis=0))
        else:
            merged = np.nanmax(np.where(np.isnan(norms), -np.inf, norms), axis=0)
    merged[np.all(np.isnan(norms), axis=0)] = np.nan
    merged[np.any(np.isnan(norms) & ~np.all(np.isnan(norms), axis=0), axis=0)] = np.nan
    pitches = norms_to_pitches(merged, log_range, header.mapping)
    velocities = np.max(np.vstack([s.velocities for s in slots]), axis=0)
    return Slot(
        index=slots[0].index, first_step=slots[0].first_step, steps=sum(s.steps for s in slots), norms=merged,
        pitches=pitches, velocities=velocities, events=[e for s in slots for e in s.events],
        markers=[m for s in slots for m in s.markers], log_range=None, loss=slots[-1].loss,
    )


class LiveSink(Sink):
    """Plays the score through an output (a MIDI port, a virtual port, an in-process synth)."""

    def __init__(self, output, max_latency: float = 0.5, record_timing: bool = False) -> None:
        self.output = output
        self.name = f"live output {getattr(output, 'name', '')}".strip()
        self.max_latency = max_latency
        self._pending: deque[Slot] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._sounding: set[tuple[int, int]] = set()
        self._offs: list[tuple[float, int, bytes]] = []  # (due, seq, message) heap: note-offs, arpeggio notes
        self._seq = 0
        self._grid: float | None = None  # when the next slot is due
        self._channels: set[int] = set()
        self.failed: str | None = None
        self.played = 0  # slots played (merged ones count once)
        self.merged = 0  # slots folded into others to keep up
        self.timing: list[tuple[float, float]] | None = [] if record_timing else None  # (due, sent)

    # -- called from the gradmidi worker --------------------------------------------------
    def open(self, header: ScoreHeader) -> None:
        self.header = header
        self.clock = header.clock
        self.aggregate = header.info.get("aggregate", "max")
        lo, hi = header.mapping.norm_range
        self.log_range = (float(np.log10(lo)), float(np.log10(hi)))
        for voice in header.voices:
            self.output.send(bytes([0xC0 | voice.channel, voice.program]))
            self._channels.add(voice.channel)
        self._channels.add(DRUM_CHANNEL)
        self._thread = threading.Thread(target=self._run, name="gradmidi-live", daemon=True)
        _quicker_thread_switching(True)
        self._thread.start()

    def emit(self, slot: Slot) -> None:
        if self.failed:
            raise RuntimeError(self.failed)
        if slot.log_range is not None:
            self.log_range = slot.log_range
        with self._cond:
            now = time.monotonic()
            start = self._start(now)
            if not self._pending and not self._stopping and start <= now + 0.0005:
                self._play(slot, start)  # on time and idle: play from here, one thread hop fewer
            else:
                self._pending.append(slot)
            self._cond.notify()

    def hush(self) -> None:
        """Drop what is pending: on Ctrl-C the music stops now rather than playing out."""
        with self._cond:
            self._drain = False
            self._cond.notify()

    def close(self) -> None:
        """Plays what is pending (at most ``max_latency`` of music, unless hushed), then silences."""
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._thread = None
        _quicker_thread_switching(False)
        try:
            self._silence()
        except Exception:
            if not self.failed:
                raise
        finally:
            self.output.close()
        if self.failed:  # the fan-out warns about it, once
            raise RuntimeError(self.failed)

    # -- the scheduler thread ---------------------------------------------------------------
    def _start(self, now: float) -> float:
        """When a slot taken now plays: on the grid while on time (or under half a slot late, so
        there is no drift); further behind, training was slower than the tempo: at once."""
        grid, period = self._grid, self.clock.slot_seconds
        return grid if grid is not None and grid >= now - period / 2 else now

    def _run(self) -> None:
        period = self.clock.slot_seconds
        capacity = max(1, int(round(self.max_latency / period)))
        offs = self._offs
        last_health = time.monotonic()
        try:
            while True:
                with self._cond:  # every send happens under this lock: one port, two threads
                    now = time.monotonic()
                    while offs and offs[0][0] <= now:
                        self._send(heapq.heappop(offs)[2])
                    if now - last_health >= HEALTH_SECONDS:
                        last_health = now
                        if not self.output.alive():
                            raise RuntimeError(f"{self.output.name} is gone")
                    if self._stopping and not self._drain:
                        self._pending.clear()
                    if self._stopping and not self._pending and not offs:
                        return
                    start = self._start(now)
                    if self._pending and start <= now + 0.0005:
                        slot = self._fold(capacity) if len(self._pending) > capacity else self._pending.popleft()
                        self._play(slot, start)
                        continue
                    deadlines = [offs[0][0]] if offs else []
                    if self._pending:
                        deadlines.append(start)
                    target = min(deadlines, default=now + HEALTH_SECONDS)
                    if target - now > 0.002:  # the condition wakes early for a new slot or close()
                        self._cond.wait(min(target - now - 0.001, HEALTH_SECONDS))
                        continue
                self._sleep_until(target)  # the last 2 ms: sleep precisely, outside the lock
        except Exception as exc:  # a live fault must not reach training: stop playing, report once
            self.failed = str(exc) or type(exc).__name__

    def _fold(self, capacity: int) -> Slot:
        """Merges the backlog so that only ``capacity`` slots remain; returns the first."""
        pending = list(self._pending)
        self._pending.clear()
        bounds = np.linspace(0, len(pending), capacity + 1).round().astype(int)
        groups = [pending[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self.merged += len(pending) - len(groups)
        merged = [merge_slots(g, self.aggregate, self.header, self.log_range) if len(g) > 1 else g[0] for g in groups]
        self._pending.extend(merged[1:])
        return merged[0]

    def _play(self, slot: Slot, start: float) -> None:
        """Sends the slot's notes (the caller holds the lock); queues their note-offs."""
        voices, clock, period = self.header.voices, self.clock, self.clock.slot_seconds
        offs, seq = self._offs, self._seq
        tick_seconds = period / clock.slot_ticks
        sent_at = time.monotonic()
        for v in voices:
            pitch = int(slot.pitches[v.index])
            if pitch < 0:
                continue
            offset, length = clock.note_span(v.index, len(voices))
            on = bytes([0x90 | v.channel, pitch, int(slot.velocities[v.index])])
            if offset:
                heapq.heappush(offs, (start + offset * tick_seconds, seq, on))
                seq += 1
            else:
                self._send(on)
            heapq.heappush(offs, (start + (offset + length) * tick_seconds, seq, bytes([0x80 | v.channel, pitch, 0])))
            seq += 1
        drums = {self.header.drums[e.kind]: getattr(get(e.kind), "velocity", DRUM_VELOCITY)
                 for e in slot.events if e.kind in self.header.drums}
        _, length = clock.note_span(0, 1)
        for key in sorted(drums):
            self._send(bytes([0x90 | DRUM_CHANNEL, key, drums[key]]))
            heapq.heappush(offs, (start + length * tick_seconds, seq, bytes([0x80 | DRUM_CHANNEL, key, 0])))
            seq += 1
        if self.timing is not None:
            self.timing.append((start, sent_at))
        self.played += 1
        self._seq = seq
        self._grid = start + period

    def _send(self, message: bytes) -> None:
        status = message[0] & 0xF0
        if status == 0x90 and message[2]:
            self._sounding.add((message[0] & 0x0F, message[1]))
        elif status in (0x80, 0x90):
            self._sounding.discard((message[0] & 0x0F, message[1]))
        self.output.send(message)

    @staticmethod
    def _sleep_until(deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(left if left > 0.002 else left / 2)

    def _silence(self) -> None:
        for message in silence_messages(self._sounding, self._channels):
            self.output.send(message)
        self._sounding.clear()
