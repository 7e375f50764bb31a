"""The sink contract, modelled on logging handlers: open once, receive every slot, close once."""

from __future__ import annotations

import warnings

from ..score import ScoreHeader, Slot


class Sink:
    """Receives the score. Subclasses override what they need; all calls come from one thread."""

    name = "sink"

    def open(self, header: ScoreHeader) -> None:
        """Called once before the first slot."""

    def emit(self, slot: Slot) -> None:
        """Called for every slot, in order."""

    def tick(self) -> None:
        """Called regularly (about twice a second) even when no slot arrives: time-based work."""

    def close(self) -> None:
        """Called once at the end; must leave whatever the sink owns complete."""


class SinkFanout:
    """Fans slots out to sinks; a sink that raises is warned about once and dropped."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = list(sinks)

    def _call(self, method: str, *args) -> None:
        for sink in list(self.sinks):
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
        self._call("emit", slot)

    def tick(self) -> None:
        self._call("tick")

    def close(self) -> None:
        self._call("close")
