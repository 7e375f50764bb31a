"""Where the score goes: the .mid file, live outputs, the network, an audio render, your own.

``factory.build_sinks`` makes them from options; each is a ``Sink`` (``base.py``). The sinks
load on first use, so a command that only reads or renders a score does not import the server.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .base import Sink, SinkFanout

if TYPE_CHECKING:
    from .audio import AudioSink
    from .factory import Sinks, build_sinks
    from .live import LiveSink
    from .midifile import MidiFileSink
    from .serve import ServeSink

_HOMES = {"AudioSink": "audio", "Sinks": "factory", "build_sinks": "factory", "LiveSink": "live",
          "MidiFileSink": "midifile", "ServeSink": "serve"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Sink", "SinkFanout", "LiveSink", "MidiFileSink", "ServeSink", "AudioSink", "Sinks", "build_sinks"]
