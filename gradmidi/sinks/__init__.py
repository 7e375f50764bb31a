"""Where the score goes: the .mid file, live outputs (ports, virtual ports, the in-process synth), the network."""

from .base import Sink, SinkFanout
from .live import LiveSink
from .midifile import MidiFileSink
from .serve import ServeSink

__all__ = ["Sink", "SinkFanout", "LiveSink", "MidiFileSink", "ServeSink"]
