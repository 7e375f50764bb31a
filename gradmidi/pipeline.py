"""Host values -> slots: voice norms, aggregation over ``every`` steps, events, pitches.

The score session's builder: it sees numpy arrays only. A block of steps is built in array
operations; a live run's step, alone in its slot with nothing unusual in it, takes a scalar
one-step path with the same result. ``merge_slots`` folds finished slots with the same
aggregation, so a live output catching up plays what a coarser grid would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import GradmidiError
from .events import Detector, QuietStep, SpikeSettings, StepBlock
from .mapping import Mapping, PitchMapper, norms_to_pitches, pitches_to_velocities
from .score import Event, ScoreHeader, Slot, StepRecord

AGGREGATES = ("max", "rms", "last")


class ScoreBuilder:
    def __init__(
        self,
        header: ScoreHeader,
        assignment: np.ndarray,
        *,
        aggregate: str = "max",
        spikes: SpikeSettings | None = None,
        first_step: int = 0,
    ) -> None:
        if aggregate not in AGGREGATES:
            raise GradmidiError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")
        self.header = header
        self.clock = header.clock
        self.assignment = np.asarray(assignment, dtype=np.int64)
        self.n_voices = len(header.voices)
        self.aggregate = aggregate
        self.first_step = first_step
        self.detector = Detector([v.name for v in header.voices], spikes)
        self.mapper = PitchMapper(header.mapping)
        resumed = header.info.get("resumed")
        if isinstance(resumed, dict):  # a resumed run goes on in the range its score was in
            lo, hi = resumed["log_range"]
            self.mapper.log_range = (float(lo), float(hi))
        self._slot: int | None = None
        self._rows: list[np.ndarray] = []
        self._present: list[np.ndarray] = []
        self._events: list[Event] = []
        self._markers: list[str] = []
        self._loss: float | None = None
        self._last_step: int | None = None
        # The layers of each voice side by side, so a block's squares sum per voice in one reduceat.
        assigned = np.flatnonzero(self.assignment >= 0)
        self._order = assigned[np.argsort(self.assignment[assigned], kind="stable")]
        voices = self.assignment[self._order]
        self._starts = np.flatnonzero(np.r_[True, voices[1:] != voices[:-1]]) if len(voices) else voices
        self._voices = voices[self._starts] if len(voices) else voices
        # The one-step path (_quick_slot) needs every voice sounded by a layer and a range that stays put.
        self._quick = len(self._voices) == self.n_voices > 0 and not header.mapping.adaptive  # False: never
        self.quick_slots = 0  # slots built on it

    def voice_norms(self, layer_norms: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Root of the sum of squares per voice; NaN where no member layer had a gradient.

        A negative finite value is no norm (a replayed log may hold one): it counts as zero, so
        it is silent rather than heard as its magnitude; -Inf stays an Inf alarm.
        """
        keep = (self.assignment >= 0) & present
        values = layer_norms[keep]
        with np.errstate(invalid="ignore"):
            values = np.where(values < 0, np.where(np.isinf(values), np.inf, 0.0), values)
        voices = self.assignment[keep]
        finite = np.abs(values[np.isfinite(values) & (values != 0)])
        if finite.size and (finite.max() > 1e150 or finite.min() < 1e-150):
            # Squares would overflow to Inf (a false alarm) or underflow to 0 (silence): scale per voice.
            scale = np.zeros(self.n_voices)
            np.maximum.at(scale, voices, np.where(np.isfinite(values), np.abs(values), 0.0))
            scale[scale == 0] = 1.0
            squares = np.bincount(voices, weights=np.square(values / scale[voices]), minlength=self.n_voices)
            with np.errstate(over="ignore"):  # beyond float64 a group's norm is Inf: an honest alarm
                norms = np.sqrt(squares) * scale
        else:
            norms = np.sqrt(np.bincount(voices, weights=np.square(values), minlength=self.n_voices))
        voice_present = np.bincount(voices, minlength=self.n_voices) > 0
        norms[~voice_present] = np.nan
        return norms, voice_present

    def voice_norms_block(self, layer_norms: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``voice_norms`` for many steps at once (rows), in array operations."""
        keep = present & (self.assignment >= 0)
        with np.errstate(invalid="ignore"):
            values = np.where(keep, layer_norms, 0.0)
            values = np.where(values < 0, np.where(np.isinf(values), np.inf, 0.0), values)
        magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
        if magnitudes.size and (magnitudes.max() > 1e150 or magnitudes.min() < 1e-150):
            rows = [self.voice_norms(norms, mask) for norms, mask in zip(layer_norms, present, strict=True)]
            return np.vstack([norms for norms, _ in rows]), np.vstack([mask for _, mask in rows])
        norms = np.full((len(values), self.n_voices), np.nan)
        voice_present = np.zeros((len(values), self.n_voices), dtype=bool)
        if len(self._starts):
            norms[:, self._voices] = np.sqrt(np.add.reduceat(np.square(values[:, self._order]), self._starts, axis=1))
            voice_present[:, self._voices] = np.logical_or.reduceat(keep[:, self._order], self._starts, axis=1)
        norms[~voice_present] = np.nan
        return norms, voice_present

    def add_step(self, record: StepRecord) -> list[Slot]:
        """Adds one step's per-layer values; returns the slots it completed (usually zero or one)."""
        return self.add_steps([record])

    def add_steps(self, records: Sequence[StepRecord]) -> list[Slot]:
        """Adds consecutive steps; returns the slots they completed. Voice norms, events and pitches
        of the whole block are found in array operations: the worker's cost per step stays small."""
        if not records:
            return []
        if len(records) == 1:  # a live run's step, as it comes
            slot = self._quick_slot(records[0])
            if slot is not None:
                return [slot]
        layer_norms, present = self._rows_of(records)
        norms, voice_present = self.voice_norms_block(layer_norms, present)
        steps = np.array([r.step for r in records], dtype=np.int64)
        has_loss = np.array([r.loss is not None for r in records], dtype=bool)
        losses = np.array([np.nan if r.loss is None else r.loss for r in records], dtype=np.float64)
        skipped = np.array([bool(r.skipped) for r in records], dtype=bool)
        events = self.detector.steps(StepBlock(steps, norms, voice_present, losses, has_loss, skipped))
        done: list[Slot] = []
        every, at = self.clock.every, 0
        for i, record in enumerate(records):
            step = record.step
            done += self._advance(self.clock.slot_of(step - self.first_step))
            while at < len(events) and events[at].step == step:
                self._events.append(events[at])
                at += 1
            self._rows.append(norms[i])
            self._present.append(voice_present[i])
            if record.loss is not None:
                self._loss = record.loss
            if (step - self.first_step) % every == every - 1:
                # The slot's last step is in: close it now, not when the next step comes (live latency).
                done.append(self._close_slot())
                self._slot = None
        return self._map(done)

    def _quick_slot(self, record: StepRecord) -> Slot | None:
        """The common live step: alone in its slot, every layer present with a norm in range, nothing
        sounding but its notes, a fixed range. ``add_steps``'s result, bit for bit, from a dozen array
        calls and scalar Python over the voices, where a one-step block is mostly numpy's call
        overhead (110 against 25 us hot; a live worker woken from sleep pays more for every call).
        Any other step gets None, with nothing changed, and takes the general path."""
        norms, present, step = record.norms, record.present, record.step
        offset = step - self.first_step
        every = self.clock.every
        if (not self._quick or self._slot is not None or record.skipped or offset % every != every - 1
                or (self._last_step is not None and step <= self._last_step)
                or type(norms) is not np.ndarray or norms.dtype != np.float64 or norms.shape != self.assignment.shape
                or type(present) is not np.ndarray or present.dtype != np.bool_ or present.shape != norms.shape):
            return None
        values = norms[self._order]  # the voiced layers, voice by voice
        # No absent layer, no NaN/Inf, zero or negative norm, nor one whose square leaves float64.
        if not (present[self._order].all() and values.min() >= 1e-150 and values.max() <= 1e150):
            return None
        voice_norms = np.sqrt(np.add.reduceat(np.square(values), self._starts))
        logs = np.log10(voice_norms).tolist()
        if not self.detector.quiet(QuietStep(step, logs, record.loss)):
            return None
        self._last_step = step
        pitches, velocities = self.mapper.pitches_of_logs(logs)
        index = self.clock.slot_of(offset)
        self.quick_slots += 1
        return Slot(
            index=index, first_step=self.first_step + index * every, steps=1, norms=voice_norms,
            pitches=np.array(pitches, dtype=np.int64), velocities=np.array(velocities, dtype=np.int64),
            present=np.ones(self.n_voices, dtype=np.int64), log_range=self.mapper.log_range, loss=record.loss,
        )

    def _rows_of(self, records: Sequence[StepRecord]) -> tuple[np.ndarray, np.ndarray]:
        """The block's per-layer norms and present flags; refuses steps out of order or of the wrong size."""
        last = self._last_step
        for record in records:
            if last is not None and record.step <= last:
                raise GradmidiError(f"step {record.step} arrived after step {last}: steps must increase")
            norms, present = np.shape(record.norms), np.shape(record.present)
            if norms != self.assignment.shape or present != self.assignment.shape:
                raise GradmidiError(f"step {record.step}: {np.size(record.norms)} norms and {np.size(record.present)} "
                                    f"present flags for {self.assignment.size} layers; give one of each per layer")
            last = record.step
        self._last_step = last
        return (np.array([r.norms for r in records], dtype=np.float64),
                np.array([r.present for r in records], dtype=bool))

    def add_marker(self, step: int, text: str) -> list[Slot]:
        done = self._advance(self.clock.slot_of(step - self.first_step))
        self._markers.append(text)
        return self._map(done)

    def finish(self) -> list[Slot]:
        return self._map(self._advance(None))

    def _advance(self, slot: int | None) -> list[Slot]:
        if self._slot is None:
            self._slot = slot
            return []
        if slot is not None and slot == self._slot:
            return []
        done = [self._close_slot()] if (self._rows or self._markers or self._events) else []
        self._slot = slot
        return done

    def _close_slot(self) -> Slot:
        """The open slot, aggregated; its pitches come in ``_map``, for every slot of a block at once."""
        index = self._slot
        if index is None:
            raise RuntimeError("no slot is open")  # callers close only an open slot
        if len(self._rows) == 1:
            norms, counts = self._rows[0].copy(), self._present[0].astype(np.int64)
        elif self._rows:
            present = np.vstack(self._present)
            norms = _aggregate(np.vstack(self._rows), present, self.aggregate)
            counts = present.sum(axis=0)
        else:
            norms, counts = np.full(self.n_voices, np.nan), np.zeros(self.n_voices, dtype=np.int64)
        slot = Slot(
            index=index, first_step=self.first_step + index * self.clock.every, steps=len(self._rows), norms=norms,
            pitches=_UNMAPPED, velocities=_UNMAPPED, present=counts, log_range=self.mapper.log_range,
            events=self._events, markers=self._markers, loss=self._loss,
        )
        self._rows, self._present, self._events, self._markers, self._loss = [], [], [], [], None
        return slot

    def _map(self, slots: list[Slot]) -> list[Slot]:
        """Pitches and velocities of closed slots, in order. A fixed range maps them all in one call;
        an adaptive range may move at any slot, so it maps them one by one."""
        if not slots:
            return slots
        mapper = self.mapper
        if mapper.mapping.adaptive:
            for slot in slots:
                mapper.observe(slot.norms)
                slot.pitches = mapper.pitches(slot.norms)
                slot.velocities = mapper.velocities(slot.pitches)
                slot.log_range = mapper.log_range
            return slots
        pitches = mapper.pitches(slots[0].norms[None] if len(slots) == 1 else np.vstack([slot.norms for slot in slots]))
        velocities = mapper.velocities(pitches)
        for slot, p, v in zip(slots, pitches, velocities, strict=True):
            slot.pitches, slot.velocities = p, v
        return slots


_UNMAPPED = np.zeros(0, dtype=np.int64)  # a closed slot's pitches until ``_map`` sets them


def merge_slots(slots: Sequence[Slot], how: str, mapping: Mapping) -> Slot:
    """One slot standing for several consecutive ones, as if the builder had aggregated all their
    steps: the norms by ``how`` (each slot weighted by its steps present), pitches at the newest
    range, every event and marker kept."""
    if len(slots) == 1:
        return slots[0]
    counts = np.vstack([s.present for s in slots])
    norms = _aggregate(np.vstack([s.norms for s in slots]), counts, how)
    log_range = slots[-1].log_range
    pitches = norms_to_pitches(norms, log_range, mapping)
    return Slot(
        index=slots[0].index, first_step=slots[0].first_step, steps=sum(s.steps for s in slots), norms=norms,
        pitches=pitches, velocities=pitches_to_velocities(pitches, mapping), present=counts.sum(axis=0),
        log_range=log_range, events=[e for s in slots for e in s.events],
        markers=[m for s in slots for m in s.markers], loss=next((s.loss for s in reversed(slots)
                                                                  if s.loss is not None), None),
    )


def _aggregate(rows: np.ndarray, weights: np.ndarray, how: str) -> np.ndarray:
    """Per voice over rows (steps, or slots weighted by their steps): max, rms or last of the rows
    with a gradient (a weight above zero). Over axis 0, whatever the shape of a row (a summary
    aggregates many groups of slots at once).

    A NaN row makes the result NaN and an Inf row makes it Inf: an alarm is never averaged away.
    """
    present = weights > 0
    if rows.shape[0] == 1:
        out = rows[0].copy()
        out[~present[0]] = np.nan
        return out
    if how == "last":  # live runs capture only the last step; replayed logs may hold them all
        last = present.shape[0] - 1 - np.argmax(present[::-1], axis=0)
        out = np.take_along_axis(rows, last[None], axis=0)[0]
        out[~present.any(axis=0)] = np.nan
        return out
    values = np.where(present, rows, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        if how == "max":
            out = np.max(np.where(present, rows, -np.inf), axis=0)
        else:
            w = np.where(present, weights, 0)
            out = np.sqrt(np.sum(w * np.square(values), axis=0) / np.maximum(w.sum(axis=0), 1))
    out[np.any(present & np.isinf(rows), axis=0)] = np.inf
    out[np.any(present & np.isnan(rows), axis=0)] = np.nan
    out[~present.any(axis=0)] = np.nan
    return out
