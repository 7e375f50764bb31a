"""Option checks with one message style: the option's name, the values it allows, what it got.

Options come from users (Sonifier keyword arguments, the CLI) and from score headers read
back from files that may be damaged or hostile, so a wrong type must end as a GradmidiError,
never as a TypeError or AttributeError from deep inside.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import GradmidiError


def whole(name: str, value, low: int, high: int) -> int:
    """A whole number in [low, high] (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)) or (
            isinstance(value, Real) and not float(value).is_integer()):
        raise GradmidiError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    if not low <= value <= high:
        raise GradmidiError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


def real(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in the interval; ``*_open`` excludes that end."""
    allowed = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise GradmidiError(f"{name} must be a number in {allowed}, not {value!r}")
    v = float(value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise GradmidiError(f"{name} must be a number in {allowed}, not {value!r}")
    return v


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise GradmidiError(f"{name} must be True or False, not {value!r}")
    return value


def pair(name: str, value) -> tuple:
    """Two items (a tuple or list), such as a range."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise GradmidiError(f"{name} must be a pair (low, high), not {value!r}")
    return tuple(value)
