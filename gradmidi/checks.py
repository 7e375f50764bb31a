"""Option checks with one message style: the option's name, the values it allows, what it got.

Options come from users (Sonifier keyword arguments, the CLI) and from score headers read
back from files that may be damaged or hostile, so a wrong type must end as a GradmidiError,
never as a TypeError or AttributeError from deep inside.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import GradmidiError


def whole(name: str, value: object, low: int, high: int) -> int:
    """A whole number in [low, high] (a bool is not a number here)."""
    if not isinstance(value, bool) and isinstance(value, Real):
        number = _exact_int(value)
        if number is not None and low <= number <= high:
            return number
    raise GradmidiError(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def real(name: str, value: object, low: float, high: float, *, low_open: bool = False,
         high_open: bool = False) -> float:
    """A finite number in the interval; ``*_open`` excludes that end."""
    if not isinstance(value, bool) and isinstance(value, Real):
        v = _finite(value)
        if v is not None and low <= v <= high and not (low_open and v == low) and not (high_open and v == high):
            return v
    allowed = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise GradmidiError(f"{name} must be a number in {allowed}, not {value!r}")


# JSON holds integers of any size, and float() of one past 1.8e308 raises OverflowError: these
# two answer None instead, so a hostile header still ends as a GradmidiError.
def _exact_int(value: Real) -> int | None:
    """``value`` as an int when it is whole; an Integral of any size converts exactly."""
    if isinstance(value, Integral):
        return int(value)
    v = _finite(value)
    return int(v) if v is not None and v.is_integer() else None


def _finite(value: Real) -> float | None:
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise GradmidiError(f"{name} must be True or False, not {value!r}")
    return value


def pair(name: str, value: Any) -> tuple[Any, ...]:
    """Two items (a tuple or list), such as a range."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise GradmidiError(f"{name} must be a pair (low, high), not {value!r}")
    return tuple(value)
