"""Playing a saved score live: its channel messages sent at their times, then silence."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .outputs import Output
from .render import read_timeline
from .smf import tempo_map, ticks_to_seconds

TAIL_SECONDS = 1.0  # let the last notes ring before All Sound Off


def play_score(path: str | os.PathLike, output: Output, progress: Callable[[float, float], None] | None = None,
               timeline=None) -> float:
    """Sends every channel message of the score to ``output`` on time; returns the score's length."""
    timeline = timeline or read_timeline(path)
    events = sorted(
        ((tick, e) for track in timeline.tracks for tick, e in track if e[0] < 0xF0), key=lambda item: item[0]
    )
    seconds = ticks_to_seconds([t for t, _ in events], tempo_map(timeline.tracks), timeline.ticks_per_beat)
    start = time.monotonic()
    last_report = 0.0
    try:
        for at, (_, message) in zip(seconds, events, strict=True):
            while (left := start + at - time.monotonic()) > 0:
                time.sleep(min(left, 0.25))
                if progress and time.monotonic() - last_report > 0.25:
                    last_report = time.monotonic()
                    progress(last_report - start, timeline.seconds)
            output.send(message)
        time.sleep(max(0.0, start + timeline.seconds + TAIL_SECONDS - time.monotonic()))
        if progress:
            progress(timeline.seconds, timeline.seconds)
    finally:  # also on Ctrl-C: nothing keeps sounding
        output.close()
    return timeline.seconds
