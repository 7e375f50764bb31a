"""The score session: one pipeline from step values to every sink, whatever the source.

A training run (``Sonifier``), a replayed log (``gradmidi sonify``) and a served run
(``gradmidi listen``) are three sources of the same session: it owns the header, the slot
builder, the worker thread and the fan-out to sinks, with one lifecycle: open (at
construction), ``submit`` steps and markers (or ``add_slot`` for slots built elsewhere),
``interrupt``, ``close``. It is torch-free; values arrive as numpy arrays.

Threaded, the session never blocks its caller: ``submit`` hands the record to a bounded
queue (a full queue drops the step and counts it) and a worker thread does the rest.
Without real-time sinks the worker works in batches, ``BATCH_SECONDS`` apart (or a sink's
``max_delay``, if shorter), to spend fewer thread switches and cold starts against a training
thread that wants the interpreter; the steps of a batch are built as one block
(``ScoreBuilder.add_steps``), in array operations. With them it
takes each step as it comes (a one-step path builds it), unless steps come faster than
``REALTIME_BATCH_SECONDS``: then it takes them that many milliseconds at a time.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import Counter, deque
from typing import Protocol

import numpy as np

from .events import SpikeSettings
from .pipeline import ScoreBuilder
from .score import Event, MarkerRecord, ScoreHeader, Slot, StepRecord
from .sinks.base import Sink, SinkFanout

BATCH_SECONDS = 0.25  # a batch's fixed cost (about 1 ms: wake-up, host read, fan-out) spread over more steps
REALTIME_BATCH_SECONDS = 0.004  # live, with steps closer than this: batches this long, a step at a time otherwise
BLOCK_STEPS = 256  # a synchronous source's steps are built this many at a time
RECENT_EVENTS = 10_000


class PendingStep(Protocol):
    """A step whose values are still on their way to the host (a Sonifier's captured step).

    Its class may also have ``records(steps) -> list[StepRecord]``, which reads a batch of them at
    once; the worker then uses it for consecutive steps of that class."""

    step: int

    def record(self) -> StepRecord:
        """Waits for the values; called on the session's worker thread only."""
        ...


Item = StepRecord | MarkerRecord | PendingStep
_INTERRUPT = object()  # worker: tell the sinks, in order after what is queued
_STOP = object()


class ScoreSession:
    """Steps and markers in; slots out to every sink."""

    def __init__(
        self,
        header: ScoreHeader,
        sinks: list[Sink],
        *,
        assignment: np.ndarray | None = None,
        aggregate: str = "max",
        spikes: SpikeSettings | None = None,
        threaded: bool = False,
        queue_size: int = 4096,
    ) -> None:
        """``assignment`` maps each layer to its voice (-1: silent); without it the session only
        takes ready slots (``add_slot``)."""
        self.header = header
        first_step = int(header.info.get("first_step", 0))
        self._builder = None if assignment is None else ScoreBuilder(
            header, assignment, aggregate=aggregate, spikes=spikes, first_step=first_step)
        self._fanout = SinkFanout(sinks)
        self.slots = 0
        self.dropped = 0  # steps lost to a full queue
        self.notes = 0  # voice notes sounded (a score with none is worth a word: see Sonifier.close)
        self.event_counts: Counter[str] = Counter()
        self.events: deque[Event] = deque(maxlen=RECENT_EVENTS)  # the most recent, for summaries
        self._next_step = first_step
        self._interrupted = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._held: list = []  # a synchronous session's steps not yet built
        self._fanout.open(header)
        self._queue: queue.Queue | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=queue_size)
            self._wake = threading.Event()  # cuts the worker's pause short at close
            # Live sound (here or a listener's) wants each step at once; otherwise batches are cheaper.
            self._batch_seconds = 0.0 if self._fanout.realtime else min(BATCH_SECONDS, self._fanout.max_delay)
            self._worker = threading.Thread(target=self._work, name="gradmidi", daemon=True)
            self._worker.start()

    @property
    def sinks(self) -> list[Sink]:
        """The sinks still receiving the score (one that failed was dropped, with a warning)."""
        return list(self._fanout.sinks)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sources --------------------------------------------------------------------------
    def submit(self, item: Item) -> None:
        """A step (ready or pending) or a marker, in step order. Never blocks when threaded."""
        if self._closed:
            return
        self._next_step = item.step if isinstance(item, MarkerRecord) else item.step + 1
        if self._queue is None:  # held, and built a block at a time
            self._held.append(item)
            if isinstance(item, MarkerRecord) or len(self._held) >= BLOCK_STEPS:
                self._handle_all(self._drain_held())
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if self.dropped == 0:
                warnings.warn("gradmidi is falling behind training; dropping steps", RuntimeWarning, stacklevel=3)
            self.dropped += 1

    def add_slot(self, slot: Slot) -> None:
        """A slot built elsewhere (a served run's), straight to the sinks."""
        self._emit_all([slot])

    def tick(self) -> None:
        """Time-based sink work (flushes) for sessions without a worker."""
        self._handle_all(self._drain_held())
        self._fanout.tick()

    def interrupt(self) -> None:
        """Marks the run interrupted (safe in a signal handler: only a flag). At close, the score
        gets an 'interrupted' marker and real-time sinks drop what is waiting to play."""
        self._interrupted = True

    def close(self) -> None:
        """Finishes the score: every slot built, every sink closed. Safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        tail: list = []
        if self._interrupted:
            tail = ([MarkerRecord(self._next_step, "interrupted")] if self._builder is not None else []) + [_INTERRUPT]
        if self._queue is not None:
            for item in tail:
                self._queue.put(item)
            self._queue.put(_STOP)
            self._wake.set()
            self._worker.join()
        else:
            self._handle_all(self._drain_held() + tail)
            self._finish()
        self._fanout.close()

    # -- the worker -----------------------------------------------------------------------
    def _work(self) -> None:
        assert self._queue is not None
        running = True
        last_batch = 0.0
        while running:
            try:
                batch = [self._queue.get(timeout=0.25)]
            except queue.Empty:
                self._fanout.tick()
                continue
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                running = False
                batch = batch[:batch.index(_STOP)]
            self._handle_all(batch)
            self._fanout.tick()
            now = time.monotonic()
            # Live, a step plays as it comes; steps faster than that are taken a few at a time, as
            # a live output merges them to its tempo anyway, and each wake-up contends for the
            # interpreter with the training thread.
            pause = self._batch_seconds or (REALTIME_BATCH_SECONDS if now - last_batch < REALTIME_BATCH_SECONDS else 0)
            if len(batch) * 4 > self._queue.maxsize:  # steps come fast: back before the queue fills and drops them
                pause *= self._queue.maxsize / (4 * len(batch))
            last_batch = now
            if running and pause:
                self._wake.wait(pause)
        self._finish()

    def _drain_held(self) -> list:
        held, self._held = self._held, []
        return held

    def _handle_all(self, items: list) -> None:
        """Consecutive steps go to the builder as one block; markers and interrupts between them."""
        block: list[StepRecord] = []
        for item in _resolved(items):
            if isinstance(item, MarkerRecord) or item is _INTERRUPT:
                self._guarded(self._add_steps, block)
                block = []
                self._guarded(self._handle, item)
            else:
                block.append(item)
        self._guarded(self._add_steps, block)

    def _guarded(self, handle, arg) -> None:
        if self._queue is None:  # a synchronous source sees its own errors
            handle(arg)
            return
        try:
            handle(arg)
        except Exception as exc:  # never let the worker die silently and stall close()
            warnings.warn(f"gradmidi: dropped steps after an error: {exc}", RuntimeWarning, stacklevel=1)

    def _add_steps(self, records: list[StepRecord]) -> None:
        if records:
            self._emit_all(self._ready_builder().add_steps(records))

    def _handle(self, item) -> None:
        if item is _INTERRUPT:
            self._fanout.interrupt()
        else:
            self._emit_all(self._ready_builder().add_marker(item.step, item.text))

    def _ready_builder(self) -> ScoreBuilder:
        if self._builder is None:
            raise TypeError("this session takes ready slots only (add_slot)")
        return self._builder

    def _emit_all(self, slots: list[Slot]) -> None:
        for slot in slots:
            self._fanout.emit(slot)  # first: the bookkeeping below must not delay a live output
        self._count(slots)

    def _finish(self) -> None:
        if self._builder is not None:
            self._emit_all(self._builder.finish())

    def _count(self, slots: list[Slot]) -> None:
        """The session's tallies, a block of slots at a time (most slots hold no event)."""
        if not slots:
            return
        for slot in slots:
            if slot.events:
                self.events.extend(slot.events)
                self.event_counts.update(e.kind for e in slot.events)
        self.slots += len(slots)
        self.notes += int(np.count_nonzero(np.concatenate([slot.pitches for slot in slots]) >= 0))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ScoreSession {self.header.title!r} {state}: {self.slots} slots, sinks {self.sinks}>"


def _resolved(items: list) -> list:
    """The items with every pending step replaced by its record, consecutive ones of a class that reads
    a batch at once (``records``) read together; a step whose values never arrived is dropped with a
    warning, and the others go on."""
    out: list = []
    run: list = []  # consecutive pending steps of one class
    for item in items:
        if isinstance(item, (StepRecord, MarkerRecord)) or item is _INTERRUPT:
            out += _records_of(run) + [item]
            run = []
            continue
        if run and type(item) is not type(run[0]):
            out += _records_of(run)
            run = []
        run.append(item)
    return out + _records_of(run)


def _records_of(steps: list) -> list[StepRecord]:
    if not steps:
        return []
    batch = getattr(type(steps[0]), "records", None)
    if batch is not None and len(steps) > 1:
        try:
            return batch(steps)
        except Exception:  # read them one by one: only the step at fault is lost
            pass
    records = []
    for step in steps:
        try:
            records.append(step.record())
        except Exception as exc:  # a step whose values never arrived: the others go on
            warnings.warn(f"gradmidi: dropped a step after an error: {exc}", RuntimeWarning, stacklevel=1)
    return records
