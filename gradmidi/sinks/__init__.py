"""Where the score goes: the .mid file now; live ports, synths and the network later."""

from .base import Sink, SinkFanout
from .midifile import MidiFileSink

__all__ = ["Sink", "SinkFanout", "MidiFileSink"]
