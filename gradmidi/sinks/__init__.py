"""Where the score goes: the .mid file, live outputs, the network, an audio render, your own.

``factory.build_sinks`` makes them from options; each is a ``Sink`` (``base.py``).
"""

from .audio import AudioSink
from .base import Sink, SinkFanout
from .factory import Sinks, build_sinks
from .live import LiveSink
from .midifile import MidiFileSink
from .serve import ServeSink

__all__ = ["Sink", "SinkFanout", "LiveSink", "MidiFileSink", "ServeSink", "AudioSink", "Sinks", "build_sinks"]
