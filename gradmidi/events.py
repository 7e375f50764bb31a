"""Training events: the kinds (declared once, in a registry) and the rules that detect them.

An event kind is everything gradmidi knows about one kind of event: its name, the drum
that sounds it on channel 10, its colour in plots and reports, a label and what it means,
and the rule that detects it. Writers, readers, plots and the report all ask the registry,
so a kind registered here (built in, or by a user) reaches every one of them. A score
carries its own drum table (``ScoreHeader.drums``), so it decodes by the keys it was
written with, whatever this process has registered since.

Rules see one step at a time as a ``StepValues``. Spike detection follows ZClip (Kumar et
al., 2025): an exponential moving mean and variance of the signal, a z-score against them
once a warm-up has passed, and spikes kept out of the statistics so one explosion does not
hide the next. gradmidi applies it to log10 norms (per voice), where a tenfold jump is the
same distance at any scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from .checks import real, whole
from .errors import GradmidiError
from .score import Event

DOWNBEAT_KEY = 37  # Side Stick: the optional soft downbeat at an epoch boundary; not an event kind
DOWNBEAT_VELOCITY = 45
UNKNOWN_COLOUR = "#7f7f7f"  # a kind a score holds that this process has not registered
BLOCK_ROWS = 256  # the most steps a rule's block recurrence takes at once
LEGACY_DRUMS: dict[str, int] = {"nan": 49, "inf": 52, "spike": 56, "loss_spike": 39, "skipped": 81}
"""The drum table of format-1 scores (gradmidi 0.1.0), which do not carry their own."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


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


@dataclass(frozen=True, eq=False)  # arrays do not compare as one bool: equality is identity
class StepValues:
    """One step's values as detection rules see them, per voice.

    A new input to detection is a new field here, not a new argument to every rule.
    """

    step: int
    norms: np.ndarray  # per voice: root-sum-square of member layers' norms; NaN where no gradient
    present: np.ndarray  # per voice, bool: a member layer had a gradient this step
    loss: float | None = None
    skipped: bool = False  # the GradScaler skipped this optimizer step


@dataclass(frozen=True, eq=False)
class StepBlock:
    """Consecutive steps' values, one row per step: what the worker holds at once. Rules that can
    look at a whole block (``block`` method) do it in array operations; the others see its rows."""

    steps: np.ndarray  # [n] int64
    norms: np.ndarray  # [n, voices]
    present: np.ndarray  # [n, voices] bool
    loss: np.ndarray  # [n] float64; only where has_loss
    has_loss: np.ndarray  # [n] bool
    skipped: np.ndarray  # [n] bool

    def __len__(self) -> int:
        return len(self.steps)

    def row(self, i: int) -> StepValues:
        loss = float(self.loss[i]) if self.has_loss[i] else None
        return StepValues(int(self.steps[i]), self.norms[i], self.present[i], loss, bool(self.skipped[i]))


@dataclass(frozen=True, eq=False)
class QuietStep:
    """A step on the one-step path (``ScoreBuilder``'s live common case): every voice has a positive
    finite norm, given as its log10, and the optimizer step was not skipped."""

    step: int
    logs: list[float]  # per voice
    loss: float | None = None


class Rule(Protocol):
    """Detects one kind of event; holds its own state across the steps of one run.

    A rule may also have ``block(values: StepBlock) -> list[Event]`` that does a block of steps at
    once with the same result; without it the rule is called once per step. And it may have
    ``quiet(values: QuietStep)``: the change to its state (a callable) of a step on which it sounds
    nothing, or None where it might sound; without it, every step takes the general path.
    """

    def __call__(self, values: StepValues) -> list[Event]: ...


@dataclass(frozen=True)
class EventKind:
    """One kind of training event, declared once: how it sounds, looks, reads and is detected."""

    name: str  # "nan", "inf", "spike", ...: identifier-like, the kind's name in scores and markers
    drum_key: int  # GM percussion key on channel 10
    colour: str  # "#rrggbb" in plots and the report
    label: str  # short, for legends and tables ("NaN gradient")
    meaning: str  # one sentence: what it means and what the drum is ("Crash Cymbal 1: ...")
    rule: Callable[[tuple[str, ...], SpikeSettings], Rule] | None = None  # a fresh rule for one run's voices
    velocity: int = 110

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise GradmidiError(f"event kind name must be identifier-like (letters, digits, _), not {self.name!r}")
        if self.name.lower().startswith("epoch"):
            raise GradmidiError(f"event kind name {self.name!r} must not begin with 'epoch': such markers are epochs")
        whole(f"drum key of event kind {self.name!r}", self.drum_key, 27, 87)  # the GM percussion keys
        if not isinstance(self.colour, str) or not _COLOUR.fullmatch(self.colour):
            raise GradmidiError(f"colour of event kind {self.name!r} must be '#rrggbb', not {self.colour!r}")
        for field in ("label", "meaning"):
            text = getattr(self, field)
            if not isinstance(text, str) or not text.strip() or "\n" in text:
                raise GradmidiError(f"{field} of event kind {self.name!r} must be one non-empty line, not {text!r}")
        if self.rule is not None and not callable(self.rule):
            raise GradmidiError(f"rule of event kind {self.name!r} must be callable or None, not {self.rule!r}")
        whole(f"velocity of event kind {self.name!r}", self.velocity, 1, 127)


_KINDS: dict[str, EventKind] = {}


def register(kind: EventKind, *, replace: bool = False) -> EventKind:
    """Adds an event kind (``replace=True``: changes one, keeping its place); returns it.

    Every drum key sounds one kind only, so that a score's drum track decodes unambiguously.
    """
    if not isinstance(kind, EventKind):
        raise GradmidiError(f"register takes an EventKind, not {kind!r}")
    if kind.name in _KINDS and not replace:
        raise GradmidiError(f"event kind {kind.name!r} is already registered; pass replace=True to change it")
    if kind.drum_key == DOWNBEAT_KEY:
        raise GradmidiError(f"drum key {DOWNBEAT_KEY} is the epoch downbeat's; choose another for {kind.name!r}")
    for other in _KINDS.values():
        if other.drum_key == kind.drum_key and other.name != kind.name:
            raise GradmidiError(f"drum key {kind.drum_key} already sounds event kind {other.name!r}; "
                                f"choose another for {kind.name!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    if name not in _KINDS:
        raise GradmidiError(f"no event kind {name!r} is registered")
    del _KINDS[name]


def registered() -> tuple[EventKind, ...]:
    """Every registered kind, in registration order (the order of events within a step)."""
    return tuple(_KINDS.values())


def get(name: str) -> EventKind | None:
    return _KINDS.get(name)


def drum_table() -> dict[str, int]:
    """Kind name -> drum key, in registration order: what a new score's header records."""
    return {kind.name: kind.drum_key for kind in _KINDS.values()}


def colour_of(name: str) -> str:
    """A kind's colour; grey for one this process has not registered (read from another's score)."""
    kind = _KINDS.get(name)
    return kind.colour if kind else UNKNOWN_COLOUR


# -- detection -------------------------------------------------------------------------------
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
        self._decay: np.ndarray | None = None  # the block recurrence's weights, made on first use

    def advance(self, x: np.ndarray, z: float, min_gap: float) -> int:
        """Takes as many leading rows of ``x`` ([n, size]) as the fast path would, all at once: past
        warm-up, every value finite, no spike. Returns how many; ``update`` does the row after them.

        The mean and variance recurrences are linear, so a block of them is two triangular matrix
        products (equal to stepping row by row up to float rounding).
        """
        if not self._settled or not len(x):
            return 0
        if len(x) == 1:  # one row: the scalar recurrence is cheaper
            change = self.quiet(x[0].tolist(), z, min_gap)
            if change is None:
                return 0
            change()
            return 1
        finite = np.isfinite(x).all(axis=1)
        n = len(x) if finite.all() else int(np.argmin(finite))
        n = min(n, BLOCK_ROWS)
        if n == 0:
            return 0
        a = self.alpha
        if self._decay is None:
            t = np.arange(BLOCK_ROWS)
            self._decay = np.tril(a ** np.maximum(t[:, None] - t[None, :], 0)) * (1 - a)
        weights, x = self._decay[:n, :n], x[:n]
        after = a ** np.arange(1, n + 1)[:, None]  # a^(t+1): what is left of the state before the block
        mean = after * self.mean + weights @ x
        gap = x - np.vstack([self.mean, mean[:-1]])
        var = after * self.var + a * (weights @ (gap * gap))
        std = np.sqrt(np.vstack([self.var, var[:-1]]))
        spiked = (((gap > z * std) & (gap > min_gap)) | (gap > self.big_gap)).any(axis=1)
        taken = int(np.argmax(spiked)) if spiked.any() else n
        if taken:
            self.mean, self.var = mean[taken - 1].copy(), var[taken - 1].copy()
            self.count += taken
        return taken

    def quiet(self, x: list[float], z: float, min_gap: float) -> Callable[[], None] | None:
        """The common step of the recurrence, for a row past warm-up with nothing missing that does not
        spike: the state change to apply, or None for any other row. Scalar Python: a row is a few
        voices, where numpy's call overhead would be most of the work. ``update`` and ``advance``
        take a single row through it too."""
        if not self._settled:
            return None
        a = self.alpha
        mean, var = [], []
        for value, m, v in zip(x, self.mean.tolist(), self.var.tolist(), strict=True):
            gap = value - m
            if not math.isfinite(gap) or (gap > z * math.sqrt(v) and gap > min_gap) or gap > self.big_gap:
                return None
            mean.append(m + (1 - a) * gap)
            var.append(a * (v + (1 - a) * gap * gap))

        def apply() -> None:
            self.mean, self.var = np.array(mean), np.array(var)
            self.count += 1

        return apply

    def update(self, x: np.ndarray, z: float, min_gap: float) -> np.ndarray:
        change = self.quiet(x.tolist(), z, min_gap)  # the common step: nothing missing, past warm-up, no spike
        if change is not None:
            change()
            return np.zeros(len(x), dtype=bool)
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


class NonFinite:
    """NaN (or Inf) gradients per voice: an alarm at onset, again every ``repeat_every`` steps while
    the voice stays non-finite, and none on a skipped step (a GradScaler skip is routine loss-scale
    calibration with its own sound; the Inf/NaN that caused it is no alarm of its own)."""

    def __init__(self, kind: str, test: Callable[[np.ndarray], np.ndarray], names: tuple[str, ...],
                 settings: SpikeSettings) -> None:
        self.kind, self.test, self.names, self.repeat_every = kind, test, names, settings.repeat_every
        self._last: dict[int, int] = {}  # voice index -> the step its alarm last sounded

    def __call__(self, values: StepValues) -> list[Event]:
        if values.skipped:
            return []
        bad = self.test(values.norms) & values.present
        if not self._last and not bad.any():
            return []
        due = []
        for i in np.flatnonzero(bad).tolist():
            last = self._last.get(i)
            if last is None or values.step - last >= self.repeat_every:
                self._last[i] = values.step
                due.append(self.names[i])
        for i in np.flatnonzero(values.present & np.isfinite(values.norms)).tolist():
            self._last.pop(i, None)  # finite again: the next NaN/Inf is a new onset
        return [Event(values.step, self.kind, tuple(due))] if due else []

    def quiet(self, values: QuietStep) -> Callable[[], None]:
        return self._last.clear  # every voice finite: none is NaN/Inf, each ended alarm forgotten

    def block(self, values: StepBlock) -> list[Event]:
        if not self._last and not (self.test(values.norms) & values.present).any():
            return []  # the usual block: nothing to sound, nothing to remember
        return [e for i in range(len(values)) for e in self(values.row(i))]


class Spike:
    """A voice's norm jumped far above its recent level (z-score on log10 norms)."""

    def __init__(self, names: tuple[str, ...], settings: SpikeSettings) -> None:
        self.names, self.settings = names, settings
        self._norms = ZScore(len(names), settings.alpha, settings.warmup, settings.early, settings.big_jump)

    def __call__(self, values: StepValues) -> list[Event]:
        norms, present = values.norms, values.present
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(present & (norms > 0), np.log10(np.where(norms > 0, norms, 1.0)), np.nan)
        spiked = self._norms.update(logs, self.settings.z, self.settings.min_jump)
        if not spiked.any():
            return []
        names = tuple(self.names[i] for i in np.flatnonzero(spiked))
        return [Event(values.step, "spike", names, float(np.nanmax(norms[spiked])))]

    def block(self, values: StepBlock) -> list[Event]:
        norms, present = values.norms, values.present
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(present & (norms > 0), np.log10(np.where(norms > 0, norms, 1.0)), np.nan)
        return _by_runs(len(values), lambda i: self._norms.advance(logs[i:], self.settings.z, self.settings.min_jump),
                        lambda i: self(values.row(i)))

    def quiet(self, values: QuietStep) -> Callable[[], None] | None:
        return self._norms.quiet(values.logs, self.settings.z, self.settings.min_jump)


class LossSpike:
    """The loss jumped above its running level, or became non-finite (then throttled like NaN)."""

    def __init__(self, names: tuple[str, ...], settings: SpikeSettings) -> None:
        self.settings = settings
        self._loss = ZScore(1, settings.alpha, settings.warmup)
        self._bad_since: int | None = None  # the step a non-finite loss last sounded

    def __call__(self, values: StepValues) -> list[Event]:
        loss, step, s = values.loss, values.step, self.settings
        if loss is None:
            return []
        if not math.isfinite(loss):
            if self._bad_since is not None and step - self._bad_since < s.repeat_every:
                return []
            self._bad_since = step
            return [Event(step, "loss_spike", (), float(loss))]
        self._bad_since = None
        mean_before = float(self._loss.mean[0])
        spiked = self._loss.update(np.array([loss], dtype=np.float64), s.loss_z, 0.0)[0]
        if spiked and loss > s.loss_min_ratio * abs(mean_before):
            return [Event(step, "loss_spike", (), float(loss))]
        return []

    def block(self, values: StepBlock) -> list[Event]:
        rows = np.flatnonzero(values.has_loss)
        losses = values.loss[rows][:, None]

        def fast(i: int) -> int:
            return self._loss.advance(losses[i:], self.settings.loss_z, 0.0) if self._bad_since is None else 0

        return _by_runs(len(rows), fast, lambda i: self(values.row(int(rows[i]))))

    def quiet(self, values: QuietStep) -> Callable[[], None] | None:
        if values.loss is None:
            return _unchanged
        loss = float(values.loss)
        if self._bad_since is not None or not math.isfinite(loss):
            return None
        return self._loss.quiet([loss], self.settings.loss_z, 0.0)


def _by_runs(n: int, fast: Callable[[int], int], slow: Callable[[int], list[Event]]) -> list[Event]:
    """Rows 0..n-1: as many as ``fast(i)`` takes at once from row i, then one by ``slow(i)``, and so on."""
    events: list[Event] = []
    i = 0
    while i < n:
        i += fast(i)
        if i < n:
            events += slow(i)
            i += 1
    return events


class Skipped:
    """The GradScaler skipped the optimizer step."""

    def __init__(self, names: tuple[str, ...], settings: SpikeSettings) -> None:
        pass

    def __call__(self, values: StepValues) -> list[Event]:
        return [Event(values.step, "skipped")] if values.skipped else []

    def block(self, values: StepBlock) -> list[Event]:
        return [Event(int(values.steps[i]), "skipped") for i in np.flatnonzero(values.skipped)]

    def quiet(self, values: QuietStep) -> Callable[[], None]:
        return _unchanged  # a quiet step was not skipped


def _unchanged() -> None:
    """A quiet step's change to a rule with nothing to remember."""


class Detector:
    """Per-step events for a fixed set of voices: one fresh rule per registered kind that has one."""

    def __init__(self, voice_names: list[str] | tuple[str, ...], settings: SpikeSettings | None = None) -> None:
        self.names = tuple(voice_names)
        self.settings = settings or SpikeSettings()
        self.rules: list[Rule] = [kind.rule(self.names, self.settings) for kind in registered() if kind.rule]

    def step(self, values: StepValues) -> list[Event]:
        """The step's events, in registry order."""
        events: list[Event] = []
        for rule in self.rules:
            events += rule(values)
        return events

    def quiet(self, values: QuietStep) -> bool:
        """Advances every rule past a step on which none sounds and returns True; or returns False,
        having changed nothing, where one might (or has no ``quiet``): ``steps`` then takes it."""
        changes = []
        for rule in self.rules:
            quiet = getattr(rule, "quiet", None)
            change = quiet(values) if quiet is not None else None
            if change is None:
                return False
            changes.append(change)
        for change in changes:
            change()
        return True

    def steps(self, values: StepBlock) -> list[Event]:
        """A block's events, in step order, and in registry order within a step."""
        events: list[Event] = []
        for rule in self.rules:
            block = getattr(rule, "block", None)
            if block is not None:
                events += block(values)
            else:
                events += [e for i in range(len(values)) for e in rule(values.row(i))]
        events.sort(key=lambda e: e.step)  # stable: registry order stays within a step
        return events


# -- the built-in kinds ----------------------------------------------------------------------
register(EventKind("nan", 49, "#d62728", "NaN gradient", "Crash Cymbal 1: a gradient is NaN, the run is broken.",
                   partial(NonFinite, "nan", np.isnan)))
register(EventKind("inf", 52, "#9467bd", "Inf gradient",
                   "Chinese Cymbal: a gradient overflowed to Inf, a harsher crash.",
                   partial(NonFinite, "inf", np.isinf)))
register(EventKind("spike", 56, "#ff7f0e", "gradient spike",
                   "Cowbell: a gradient norm jumped far above its recent level.", Spike))
register(EventKind("loss_spike", 39, "#8c564b", "loss spike", "Hand Clap: the loss jumped, or became non-finite.",
                   LossSpike))
register(EventKind("skipped", 81, "#17becf", "skipped step",
                   "Open Triangle: the GradScaler skipped the optimizer step (routine loss-scale calibration).",
                   Skipped))
