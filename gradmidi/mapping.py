"""Norm <-> pitch: log scaling into a register, quantised to a musical scale.

A pure function of (values, settings), torch-free. The settings travel inside every
score (``Mapping.to_dict``) so that a .mid file can be decoded back into norms.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from numbers import Integral

import numpy as np

from .checks import flag, pair, real, whole
from .errors import GradmidiError

SCALES: dict[str, tuple[int, ...]] = {
    "chromatic": tuple(range(12)),
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "whole_tone": (0, 2, 4, 6, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "blues": (0, 3, 5, 6, 7, 10),
}
SCALE_ALIASES = {
    "natural_minor": "minor", "aeolian": "minor", "ionian": "major",
    "pentatonic": "major_pentatonic", "wholetone": "whole_tone",
}
KEYS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def scale_intervals(name: str) -> tuple[int, ...]:
    if not isinstance(name, str):
        raise GradmidiError(f"scale must be a name, one of: {', '.join(SCALES)}; not {name!r}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = SCALE_ALIASES.get(key, key)
    if key not in SCALES:
        raise GradmidiError(f"unknown scale {name!r}; choose one of: {', '.join(SCALES)}")
    return SCALES[key]


def key_pitch_class(key: str | int) -> int:
    """0-11 from a note name such as 'A', 'F#', 'Bb' (or a number)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key % 12
    if not isinstance(key, str):
        raise GradmidiError(f"unknown key {key!r}; use a note name such as C, F#, Bb (or 0-11)")
    text = str(key).strip().lower()
    if not text or text[0] not in KEYS or any(c not in "#b♯♭" for c in text[1:]):
        raise GradmidiError(f"unknown key {key!r}; use a note name such as C, F#, Bb")
    return (KEYS[text[0]] + sum(1 if c in "#♯" else -1 for c in text[1:])) % 12


@dataclass(frozen=True)
class Mapping:
    """How a gradient norm becomes a note.

    ``norm_range`` is fixed by default so that the same norm gives the same pitch in
    every run; ``adaptive=True`` re-centres the range on the run's own quantiles after a
    warm-up (each change is recorded in the score, so decoding stays exact).
    """

    scale: str = "minor_pentatonic"
    key: str | int = "A"
    low_note: int = 36
    high_note: int = 96
    norm_range: tuple[float, float] = (1e-4, 1e2)
    velocity: int | str = 80  # an int, or "norm" (louder for higher norms)
    adaptive: bool = False
    adaptive_warmup: int = 50
    adaptive_every: int = 200
    adaptive_quantiles: tuple[float, float] = (0.02, 0.98)
    pitch_classes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        intervals = scale_intervals(self.scale)
        root = key_pitch_class(self.key)
        object.__setattr__(self, "pitch_classes", tuple(sorted((root + i) % 12 for i in intervals)))
        for name in ("low_note", "high_note"):
            if not isinstance(getattr(self, name), Integral) or isinstance(getattr(self, name), bool):
                whole(name, getattr(self, name), 0, 127)  # the type; the register is checked below
        norm_range = tuple(real("norm_range", v, 0, 1e300, low_open=True) for v in pair("norm_range", self.norm_range))
        object.__setattr__(self, "norm_range", norm_range)
        if not (0 <= self.low_note < self.high_note <= 127):
            raise GradmidiError(
                f"register {self.low_note}-{self.high_note} is invalid: need 0 <= low_note < high_note <= 127"
            )
        lo, hi = self.norm_range
        if not (0 < lo < hi and math.isfinite(hi)):
            raise GradmidiError(f"norm_range {self.norm_range} is invalid: need 0 < low < high < inf")
        if not any(p % 12 in self.pitch_classes for p in range(self.low_note, self.high_note + 1)):
            raise GradmidiError("the register holds no note of the scale")
        if isinstance(self.velocity, str):
            if self.velocity != "norm":
                raise GradmidiError(f"velocity must be 1-127 or 'norm', not {self.velocity!r}")
        else:
            whole("velocity", self.velocity, 1, 127)  # or "norm", above
        flag("adaptive", self.adaptive)
        whole("adaptive_warmup", self.adaptive_warmup, 1, 2**31)
        whole("adaptive_every", self.adaptive_every, 1, 2**31)
        q = tuple(real("adaptive_quantiles", v, 0, 1) for v in pair("adaptive_quantiles", self.adaptive_quantiles))
        if not q[0] < q[1]:
            raise GradmidiError(f"adaptive_quantiles must be (low, high) with 0 <= low < high <= 1, not {q}")
        object.__setattr__(self, "adaptive_quantiles", q)

    # -- the scale as an array of allowed MIDI notes inside the register
    @property
    def notes(self) -> np.ndarray:
        allowed = [p for p in range(self.low_note, self.high_note + 1) if p % 12 in self.pitch_classes]
        return np.asarray(allowed, dtype=np.int64)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("pitch_classes")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Mapping:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "pitch_classes"}
        for name in ("norm_range", "adaptive_quantiles"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)


# The adaptive range. A re-centred range is the run's quantiles widened by HEADROOM of their span
# on each side (at least MIN_SPAN decades in all), so a run that keeps moving (norms rising all
# through a long run) stays inside it for a while instead of reaching an edge at once. When a voice
# sounded the register's bottom or top note in more than PIN_SHARE of the last PIN_SLOTS slots
# (pinned there: its changes are not heard), it re-centres at once rather than waiting for
# ``adaptive_every``.
HEADROOM = 0.25
MIN_SPAN = 0.5
PIN_SLOTS = 8
PIN_SHARE = 0.5


@dataclass
class PitchMapper:
    """Applies a Mapping; holds the current range (which moves only when adaptive)."""

    mapping: Mapping
    log_range: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        lo, hi = self.mapping.norm_range
        self.log_range = (math.log10(lo), math.log10(hi))
        self._notes = self.mapping.notes
        self._note_list = self._notes.tolist()  # the one-step path's (pitches_of_logs)
        self._midpoints = ((self._notes[1:] + self._notes[:-1]) / 2).tolist()
        self._history: list[np.ndarray] = []
        self._seen = 0
        self._since_change = 0  # slots observed since the range last moved (after the warm-up)
        self._pinned: list[np.ndarray] = []  # per recent slot, which voices sound an edge note of the register

    def pitches(self, norms: np.ndarray) -> np.ndarray:
        """MIDI notes for norms; -1 where a norm is not a positive finite number (silence)."""
        return norms_to_pitches(norms, self.log_range, self.mapping, self._notes)

    def velocities(self, pitches: np.ndarray) -> np.ndarray:
        return pitches_to_velocities(pitches, self.mapping)

    def pitches_of_logs(self, logs: list[float]) -> tuple[list[int], list[int]]:
        """Pitches and velocities of positive finite norms given as their log10s, in scalar Python:
        a live step's few voices, where numpy's call overhead would be most of the work. The same
        arithmetic as ``norms_to_pitches`` and ``pitches_to_velocities``, so the same notes."""
        m = self.mapping
        lo, hi = self.log_range
        span, low, width = hi - lo, m.low_note, m.high_note - m.low_note
        pitches = [self._note_list[bisect_left(self._midpoints, low + min(max((log - lo) / span, 0.0), 1.0) * width)]
                   for log in logs]
        if m.velocity == "norm":
            return pitches, [min(max(40 + (p - low) * 80 // max(width, 1), 1), 127) for p in pitches]
        return pitches, [int(m.velocity)] * len(pitches)

    def observe(self, norms: np.ndarray) -> tuple[float, float] | None:
        """Feed a slot's norms (before mapping them); returns the new log range when the adaptive
        range moves: at the end of the warm-up, then every ``adaptive_every`` slots after the last
        move, or at once when many values are pinned at an edge (see PIN_SHARE)."""
        if not self.mapping.adaptive:
            return None
        good = norms[np.isfinite(norms) & (norms > 0)]
        if good.size:
            self._history.append(np.log10(good))
        pitches = self.pitches(norms)
        self._pinned = [*self._pinned[-(PIN_SLOTS - 1):], (pitches == self._notes[0]) | (pitches == self._notes[-1])]
        self._seen += 1
        self._since_change += 1
        m = self.mapping
        window = max(m.adaptive_every, m.adaptive_warmup)
        self._history = self._history[-window:]
        if self._seen < m.adaptive_warmup or not self._history:
            return None
        due = self._seen == m.adaptive_warmup or self._since_change >= m.adaptive_every or self._pinned_at_edge()
        if not due:
            return None
        self.log_range = _with_headroom(*np.quantile(np.concatenate(self._history), m.adaptive_quantiles))
        self._since_change = 0
        self._pinned = []
        return self.log_range

    def _pinned_at_edge(self) -> bool:
        """Whether a voice sat on an edge note through most of the last PIN_SLOTS slots (all since the last move)."""
        if self._since_change < PIN_SLOTS or len(self._pinned) < PIN_SLOTS:
            return False
        if len({len(p) for p in self._pinned}) != 1:  # slots of different widths: not one run's voices
            return False
        return bool((np.count_nonzero(np.vstack(self._pinned), axis=0) > PIN_SHARE * PIN_SLOTS).any())


def _with_headroom(lo: float, hi: float) -> tuple[float, float]:
    """The quantile range widened by HEADROOM of its span each side, and to at least MIN_SPAN decades
    (a flat run is not zoomed into its noise)."""
    span = max(hi - lo, MIN_SPAN / (1 + 2 * HEADROOM))
    mid = (hi + lo) / 2
    half = span * (0.5 + HEADROOM)
    return float(mid - half), float(mid + half)


def norms_to_pitches(
    norms: np.ndarray, log_range: tuple[float, float], mapping: Mapping, notes: np.ndarray | None = None
) -> np.ndarray:
    """Log10 norm -> continuous pitch in the register -> nearest scale note. Vectorised."""
    notes = mapping.notes if notes is None else notes
    norms = np.asarray(norms, dtype=np.float64)
    valid = np.isfinite(norms) & (norms > 0)
    lo, hi = log_range
    with np.errstate(divide="ignore", invalid="ignore"):  # invalid norms give NaN or -Inf here, masked below
        frac = (np.log10(norms) - lo) / (hi - lo)
    continuous = mapping.low_note + np.minimum(np.maximum(frac, 0.0), 1.0) * (mapping.high_note - mapping.low_note)
    # The nearest scale note: the first whose upper midpoint is at or above (a tie goes to the lower note).
    chosen = notes[np.searchsorted((notes[1:] + notes[:-1]) / 2, continuous)]
    return np.where(valid, chosen, -1).astype(np.int64)


def pitches_to_velocities(pitches: np.ndarray, mapping: Mapping) -> np.ndarray:
    """Note velocities: the mapping's fixed one, or louder for higher notes (``velocity="norm"``)."""
    pitches = np.asarray(pitches)
    if mapping.velocity == "norm":
        span = max(mapping.high_note - mapping.low_note, 1)
        return np.clip(40 + (pitches - mapping.low_note) * 80 // span, 1, 127).astype(np.int64)
    return np.full(pitches.shape, int(mapping.velocity), dtype=np.int64)


def pitches_to_norms(pitches: np.ndarray, log_range: tuple[float, float], mapping: Mapping) -> np.ndarray:
    """The inverse of the continuous part: the norm at the centre of a note's bin."""
    pitches = np.asarray(pitches, dtype=np.float64)
    lo, hi = log_range
    frac = (pitches - mapping.low_note) / (mapping.high_note - mapping.low_note)
    return np.power(10.0, lo + frac * (hi - lo))


def half_step_log(pitch: int, mapping: Mapping, log_range: tuple[float, float]) -> float:
    """Half the larger gap to a neighbouring scale note, in log10 units: the decode tolerance."""
    notes = mapping.notes
    i = int(np.searchsorted(notes, pitch))
    gaps = []
    if i > 0:
        gaps.append(notes[i] - notes[i - 1])
    if i + 1 < len(notes):
        gaps.append(notes[i + 1] - notes[i])
    per_semitone = (log_range[1] - log_range[0]) / (mapping.high_note - mapping.low_note)
    return max(gaps or [1]) / 2 * per_semitone
