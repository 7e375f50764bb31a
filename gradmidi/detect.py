"""Training events from host values: nan, inf, spike, loss_spike, skipped.

Spike detection follows ZClip (Kumar et al., 2025): an exponential moving mean and
variance of the signal, a z-score against them once a warm-up has passed, and spikes
kept out of the statistics so one explosion does not hide the next. gradmidi applies it
to log10 norms (per voice), where a tenfold jump is the same distance at any scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .score import Event


@dataclass(frozen=True)
class SpikeSettings:
    alpha: float = 0.97  # EMA decay (ZClip's default)
    z: float = 2.5  # z-score threshold (ZClip's default)
    warmup: int = 25  # steps before any spike is reported (ZClip's default)
    min_jump: float = 0.3  # and at least this far above the mean, in log10 (x2): ignores jitter of flat runs
    loss_z: float = 3.0
    loss_min_ratio: float = 1.5  # a loss spike is also at least this multiple of the running mean
    repeat_every: int = 16  # while a voice stays NaN/Inf, sound the alarm again every N steps


class ZScore:
    """EMA mean/variance per channel, with warm-up; ``update`` returns which entries spiked."""

    def __init__(self, size: int, alpha: float, warmup: int) -> None:
        self.alpha, self.warmup = alpha, warmup
        self.mean = np.zeros(size)
        self.var = np.zeros(size)
        self.count = np.zeros(size, dtype=np.int64)

    def update(self, x: np.ndarray, z: float, min_gap: float) -> np.ndarray:
        finite = np.isfinite(x)
        ready = finite & (self.count >= self.warmup)
        std = np.sqrt(np.maximum(self.var, 1e-12))
        spiked = ready & ((x - self.mean) / std > z) & (x - self.mean > min_gap)
        learn = finite & ~spiked
        first = learn & (self.count == 0)
        a = self.alpha
        delta = np.where(learn, x - self.mean, 0.0)
        self.mean = np.where(first, x, self.mean + np.where(learn & ~first, (1 - a) * delta, 0.0))
        self.var = np.where(learn & ~first, a * (self.var + (1 - a) * delta**2), self.var)
        self.count += learn
        return spiked


class Detector:
    """Per-step events for a fixed set of voices."""

    def __init__(self, voice_names: list[str], settings: SpikeSettings | None = None) -> None:
        self.names = voice_names
        self.settings = settings or SpikeSettings()
        s = self.settings
        self._norms = ZScore(len(voice_names), s.alpha, s.warmup)
        self._loss = ZScore(1, s.alpha, s.warmup)
        self._bad_since: dict[str, int] = {}  # voice -> step its NaN/Inf alarm last sounded

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
            return [Event(step, "loss_spike", (), float(loss))]
        mean_before = float(self._loss.mean[0])
        spiked = self._loss.update(np.array([loss], dtype=np.float64), self.settings.loss_z, 0.0)[0]
        if spiked and loss > self.settings.loss_min_ratio * abs(mean_before):
            return [Event(step, "loss_spike", (), float(loss))]
        return []
