"""The live sink: a real-time scheduler thread that plays slots at the tempo.

Slots arrive from the session whenever training produces them. The scheduler owns the clock:
it plays one slot per slot duration on an absolute grid (no drift). When training is slower
than the tempo, a slot plays as soon as it arrives; when training is faster, the backlog is
held to ``max_latency`` seconds by merging pending slots with the run's own aggregation
(``pipeline.merge_slots``), never queued without bound. What a slot sounds comes from
``gradmidi.notes``; on close the output silences whatever is still sounding.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
import time
from collections import deque

import numpy as np

from ..notes import Arrangement
from ..outputs import Output
from ..pipeline import merge_slots
from ..score import ScoreHeader, Slot
from .base import Sink

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


# A thread that slept long runs its first code slowly (0.2-0.5 ms here): the scheduler wakes this
# much before a deadline and sleeps the rest once, warm, so sends keep to the grid.
WAKE_EARLY = 0.001
HEALTH_SECONDS = 1.0  # how often the scheduler checks that its port still exists
HEALTH_SLACK = 0.02  # ... when nothing is due for this long


class LiveSink(Sink):
    """Plays the score through an output (a MIDI port, a virtual port, an in-process synth, memory)."""

    realtime = True

    def __init__(self, output: Output, max_latency: float = 0.5, record_timing: bool = False) -> None:
        self.output = output
        self.name = f"live output {getattr(output, 'name', '')}".strip()
        self.max_latency = max_latency
        self._pending: deque[Slot] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._offs: list[tuple[float, int, bytes]] = []  # (due, seq, message) heap: note-offs, arpeggio notes
        self._seq = 0
        self._grid: float | None = None  # when the next slot is due
        self.failed: str | None = None
        self.played = 0  # slots played (merged ones count once)
        self.merged = 0  # slots folded into others to keep up
        self.timing: list[tuple[float, float]] | None = [] if record_timing else None  # (due, sent)
        self.played_slots: list[tuple[int, int]] | None = [] if record_timing else None  # (index, steps)

    # -- called from the session ------------------------------------------------------------
    def open(self, header: ScoreHeader) -> None:
        self.header = header
        self.clock = header.clock
        self.aggregate = header.info.get("aggregate", "max")
        self.arrangement = Arrangement(header)
        for message in self.arrangement.programs():
            self.output.send(message)
        self._thread = threading.Thread(target=self._run, name="gradmidi-live", daemon=True)
        _quicker_thread_switching(True)
        self._thread.start()

    def emit(self, slot: Slot) -> None:
        if self.failed:
            raise RuntimeError(self.failed)
        with self._cond:
            now = time.monotonic()
            start = self._start(now)
            if not self._pending and not self._stopping and start <= now + 0.0005:
                self._play(slot, start)  # on time and idle: play from here, one thread hop fewer
            else:
                self._pending.append(slot)
                if len(self._pending) > 1:
                    return  # the scheduler already waits for the first: waking it would only cost
            self._cond.notify()  # new note-offs, or a first slot to wait for

    def interrupt(self) -> None:
        """Drops what is pending: on Ctrl-C the music stops now rather than playing out."""
        with self._cond:
            self._drain = False
            self._cond.notify()

    def close(self) -> None:
        """Plays what is pending (at most ``max_latency`` of music, unless interrupted), then silences."""
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._thread = None
        _quicker_thread_switching(False)
        try:
            self.output.close()  # silences whatever is still sounding
        except Exception:
            if not self.failed:
                raise
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
                        self.output.send(heapq.heappop(offs)[2])
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
                    # Asking a port whether it still exists can take milliseconds (JACK): only with time to spare.
                    if now - last_health >= HEALTH_SECONDS and (target - now > HEALTH_SLACK or
                                                                now - last_health >= 4 * HEALTH_SECONDS):
                        last_health = now
                        if not self.output.alive():
                            raise RuntimeError(f"{self.output.name} is gone")
                        continue
                    if target - now > WAKE_EARLY:  # a new slot or close() wakes it earlier still
                        self._cond.wait(min(target - now - WAKE_EARLY, HEALTH_SECONDS))
                        continue
                left = target - time.monotonic()  # the last moment in one short sleep, outside the lock
                if left > 0:
                    time.sleep(left)
        except Exception as exc:  # a live fault must not reach training: stop playing, report once
            self.failed = str(exc) or type(exc).__name__

    def _fold(self, capacity: int) -> Slot:
        """Merges the backlog so that only ``capacity`` slots remain; returns the first."""
        pending = list(self._pending)
        self._pending.clear()
        bounds = np.linspace(0, len(pending), capacity + 1).round().astype(int)
        groups = [pending[a:b] for a, b in itertools.pairwise(bounds) if b > a]
        self.merged += len(pending) - len(groups)
        merged = [merge_slots(group, self.aggregate, self.header.mapping) for group in groups]
        self._pending.extend(merged[1:])
        return merged[0]

    def _play(self, slot: Slot, start: float) -> None:
        """Sends the slot's notes due now (the caller holds the lock); queues the rest and the note-offs."""
        notes = self.arrangement.notes(slot)
        tick_seconds = self.clock.slot_seconds / self.clock.slot_ticks
        offs, seq = self._offs, self._seq
        sent_at = time.monotonic()
        for channel, key, velocity, onset, length in zip(notes.channel.tolist(), notes.key.tolist(),
                                                         notes.velocity.tolist(), notes.onset.tolist(),
                                                         notes.length.tolist(), strict=True):
            on = bytes([0x90 | channel, key, velocity])
            if onset:
                heapq.heappush(offs, (start + onset * tick_seconds, seq, on))
                seq += 1
            else:
                self.output.send(on)
            heapq.heappush(offs, (start + (onset + length) * tick_seconds, seq, bytes([0x80 | channel, key, 0])))
            seq += 1
        if self.timing is not None and self.played_slots is not None:
            self.timing.append((start, sent_at))
            self.played_slots.append((slot.index, slot.steps))
        self.played += 1
        self._seq = seq
        self._grid = start + self.clock.slot_seconds
