"""The sink contract, modelled on ``logging.Handler``: open once, receive every slot, close once.

A sink is where a score goes (a file, a live output, the network, an audio render, your own).
It receives the session's slots on one thread and decides only where and when they go: what
a slot sounds like comes from ``gradmidi.notes``.
"""

from __future__ import annotations

import math
import warnings

from ..score import ScoreHeader, Slot


class Sink:
    """Receives the score. Subclasses override what they need; all calls come from one thread.

    ``realtime``: the sink plays (or streams to someone who plays) as the run goes, so the
    session hands it each slot at once instead of in cheaper batches. ``max_delay``: otherwise,
    the longest (seconds) a slot may wait in the session's batches before this sink sees it.
    """

    name = "sink"
    realtime = False
    max_delay = math.inf

    def open(self, header: ScoreHeader) -> None:
        """Called once before the first slot."""

    def emit(self, slot: Slot) -> None:
        """Called for every slot, in order."""

    def tick(self) -> None:
        """Called regularly (about twice a second) even when no slot arrives: time-based work."""

    def interrupt(self) -> None:
        """The run was interrupted (Ctrl-C, SIGTERM): drop what is waiting to play; ``close`` follows."""

    def close(self) -> None:
        """Called once at the end; must leave whatever the sink owns complete."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class SinkFanout:
    """Fans slots out to sinks; a sink that raises is warned about once and dropped."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = list(sinks)

    @property
    def realtime(self) -> bool:
        return any(sink.realtime for sink in self.sinks)

    @property
    def max_delay(self) -> float:
        return min((sink.max_delay for sink in self.sinks), default=math.inf)

    def _call(self, method: str, *args, realtime_first: bool = False) -> None:
        sinks = sorted(self.sinks, key=lambda sink: not sink.realtime) if realtime_first else list(self.sinks)
        for sink in sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a sink must never take training down
                self.sinks.remove(sink)
                warnings.warn(f"gradmidi: {sink.name} stopped ({exc}); training and the other sinks go on",
                              RuntimeWarning, stacklevel=2)
                if method != "close":
                    try:
                        sink.close()
                    except Exception:
                        pass

    def open(self, header: ScoreHeader) -> None:
        self._call("open", header)

    def emit(self, slot: Slot) -> None:
        # A slot reaches a live output before the file and the others take their turn.
        self._call("emit", slot, realtime_first=True)

    def tick(self) -> None:
        self._call("tick")

    def interrupt(self) -> None:
        self._call("interrupt")

    def close(self) -> None:
        self._call("close")
