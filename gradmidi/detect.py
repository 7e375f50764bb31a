"""Training events from host values: nan, inf, spike, loss_spike, skipped.

Spike detection follows ZClip (Kumar et al., 2025): an exponential moving mean and
variance of the signal, a z-score against them once a warm-up has passed, and spikes
kept out of the statistics so one explosion does not hide the next. gradmidi applies it
to log10 norms (per voice), where a tenfold jump is the same distance at any scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import real, whole
from .score import Event


@dataclass(frozen=True)
class SpikeSettings:
    alpha: float = 0.97  # EMA decay (ZClip's default)
    z: float = 4.0  # z-score threshold (ZClip uses 2.5 for clipping; an alarm wants fewer false hits)
    warmup: int = 8  # steps before a z-score spike can be reported
    min_jump: float = 0.7  # and at least this far above the mean, in log10 (x5): ignores jitter of small batches
    big_jump: float = 1.0  # tenfold above the mean is a spike after only `early` steps
    early: int = 3
    loss_z: float = 3.0
    loss_min_ratio: float = 1.5  # a loss spike is also at least this multiple of the running mean
    repeat_every: int = 16  # while a voice stays NaN/Inf, sound the alarm again every N steps

    def __post_init__(self) -> None:
        real("SpikeSettings.alpha", self.alpha, 0, 1, low_open=True, high_open=True)
        for name in ("z", "loss_z"):
            real(f"SpikeSettings.{name}", getattr(self, name), 0, 1e6, low_open=True)
        for name in ("min_jump", "big_jump"):  # in decades; math.inf switches that rule off
            if getattr(self, name) != math.inf:
                real(f"SpikeSettings.{name} (or math.inf)", getattr(self, name), 0, 1e6)
        real("SpikeSettings.loss_min_ratio", self.loss_min_ratio, 0, 1e6)
        for name in ("warmup", "early"):
            whole(f"SpikeSettings.{name}", getattr(self, name), 0, 2**31)
        whole("SpikeSettings.repeat_every", self.repeat_every, 1, 2**31)


class ZScore:
    """EMA mean/variance per channel; ``update`` returns which entries spiked.

    A spike is z > ``z`` and at least ``min_gap`` above the mean once ``warmup`` values
    were seen, or ``big_gap`` above the mean after only ``early`` values (an explosion in
    the first steps should not hide behind the warm-up). As in ZClip, a spiked value is
    learnt clipped to the threshold, so a new plateau becomes the baseline in time.
    """

    def __init__(self, size: int, alpha: float, warmup: int, early: int = 3, big_gap: float = np.inf) -> None:
        self.alpha, self.warmup, self.early, self.big_gap = alpha, warmup, early, big_gap
        self.mean = np.zeros(size)
        self.var = np.zeros(size)
        self.count = np.zeros(size, dtype=np.int64)
        self._settled = False  # every channel past warm-up: the fast path applies

    def update(self, x: np.ndarray, z: float, min_gap: float) -> np.ndarray:
        gap = x - self.mean
        if self._settled and np.isfinite(gap).all():
            # The common step: nothing missing, past warm-up. A few vector ops, no masks.
            std = np.sqrt(self.var)
            spiked = ((gap > z * std) & (gap > min_gap)) | (gap > self.big_gap)
            if not spiked.any():
                a = self.alpha
                self.mean += (1 - a) * gap
                self.var = a * (self.var + (1 - a) * gap * gap)
                self.count += 1
                return spiked
        self._settled = bool(self.count.min() >= max(self.warmup, self.early)) if self.count.size else True
        finite = np.isfinite(x)
        std = np.sqrt(np.maximum(self.var, 1e-12))
        gap = np.where(finite, x - self.mean, 0.0)
        by_z = (self.count >= self.warmup) & (gap > z * std) & (gap > min_gap)
        by_size = (self.count >= self.early) & (gap > self.big_gap)
        spiked = finite & (by_z | by_size)
        ceiling = self.mean + np.maximum(np.maximum(z * std, min_gap), np.where(by_size & ~by_z, self.big_gap, 0))
        value = np.where(spiked, np.minimum(x, ceiling), x)
        first = finite & (self.count == 0)
        a = self.alpha
        delta = np.where(finite, value - self.mean, 0.0)
        self.mean = np.where(first, value, self.mean + np.where(finite & ~first, (1 - a) * delta, 0.0))
        self.var = np.where(finite & ~first, a * (self.var + (1 - a) * delta**2), self.var)
        self.count += finite
        return spiked


class Detector:
    """Per-step events for a fixed set of voices."""

    def __init__(self, voice_names: list[str], settings: SpikeSettings | None = None) -> None:
        self.names = voice_names
        self.settings = settings or SpikeSettings()
        s = self.settings
        self._norms = ZScore(len(voice_names), s.alpha, s.warmup, s.early, s.big_jump)
        self._loss = ZScore(1, s.alpha, s.warmup)
        self._bad_since: dict[str, int] = {}  # voice (or "loss") -> step its NaN/Inf alarm last sounded

    def step(
        self, step: int, norms: np.ndarray, present: np.ndarray, loss: float | None = None, skipped: bool = False
    ) -> list[Event]:
        events: list[Event] = []
        if skipped:
            # A GradScaler skip is routine loss-scale calibration: it has its own sound,
            # and the inf/nan gradients that caused it are not alarms of their own.
            events.append(Event(step, "skipped"))
        else:
            events += self._non_finite(step, norms, present)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(present & (norms > 0), np.log10(np.where(norms > 0, norms, 1.0)), np.nan)
        spiked = self._norms.update(logs, self.settings.z, self.settings.min_jump)
        if spiked.any():
            names = tuple(self.names[i] for i in np.flatnonzero(spiked))
            events.append(Event(step, "spike", names, float(np.nanmax(norms[spiked]))))
        if loss is not None:
            events += self._loss_event(step, loss)
        return events

    def _non_finite(self, step: int, norms: np.ndarray, present: np.ndarray) -> list[Event]:
        if not self._bad_since and np.isfinite(norms[present]).all():
            return []
        events = []
        for kind, mask in (("nan", np.isnan(norms) & present), ("inf", np.isinf(norms) & present)):
            due = []
            for i in np.flatnonzero(mask):
                name = self.names[i]
                last = self._bad_since.get(name)
                if last is None or step - last >= self.settings.repeat_every:
                    self._bad_since[name] = step
                    due.append(name)
            if due:
                events.append(Event(step, kind, tuple(due)))
        for i in np.flatnonzero(present & np.isfinite(norms)):
            self._bad_since.pop(self.names[i], None)
        return events

    def _loss_event(self, step: int, loss: float) -> list[Event]:
        if not np.isfinite(loss):
            last = self._bad_since.get("\0loss")
            if last is not None and step - last < self.settings.repeat_every:
                return []
            self._bad_since["\0loss"] = step
            return [Event(step, "loss_spike", (), float(loss))]
        self._bad_since.pop("\0loss", None)
        mean_before = float(self._loss.mean[0])
        spiked = self._loss.update(np.array([loss], dtype=np.float64), self.settings.loss_z, 0.0)[0]
        if spiked and loss > self.settings.loss_min_ratio * abs(mean_before):
            return [Event(step, "loss_spike", (), float(loss))]
        return []
