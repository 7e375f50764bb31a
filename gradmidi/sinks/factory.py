"""The one place sinks are made from options: ``path``, ``live``, ``serve``, ``audio`` and your own.

The Sonifier, ``gradmidi sonify`` and ``gradmidi listen`` all ask here, so an option means the
same thing wherever it is given, and nothing else needs to know the concrete sink types.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..errors import GradmidiError
from .base import Sink

if TYPE_CHECKING:
    import mido.ports

LiveSpec = Union[str, Sink, "mido.ports.BaseOutput"]


@dataclass
class Sinks:
    """The sinks of one session, in the order they receive slots (real-time ones first)."""

    sinks: list[Sink] = field(default_factory=list)
    server: Sink | None = None  # the network stream, when serving: its address, token and counters


def build_sinks(
    *,
    path: str | os.PathLike | None = None,
    live: LiveSpec | Sequence[LiveSpec] | None = None,
    serve: str | Sink | None = None,
    serve_public: bool = False,
    serve_token: str | None = None,
    audio: str | os.PathLike | None = None,
    audio_duration: float | None = None,
    soundfont: str | os.PathLike | None = None,
    midi_api: str | None = None,
    live_latency: float = 0.5,
    flush_interval: float = 2.0,
    keep: tuple[list[list[tuple[int, bytes]]], int] | None = None,
    sinks: Sequence[Sink] = (),
) -> Sinks:
    """Every sink the options ask for. Cheap checks and binding come first, ports open last, so a
    refused option leaves nothing open. ``audio`` must already have passed ``check_audio``; ``keep``:
    what the .mid keeps of an earlier score (a resumed run)."""
    from .midifile import MidiFileSink

    file = MidiFileSink(path, flush_interval, keep) if path is not None else None
    built = Sinks(server=_serve_sink(serve, serve_public, serve_token))  # binds: refuses a bad address early
    try:
        built.sinks += _live_sinks(live, midi_api, soundfont, live_latency)  # opens ports: after the checks
    except BaseException:
        if built.server is not None:
            built.server.close()
        raise
    if built.server is not None:
        built.sinks.append(built.server)
    if file is not None:
        built.sinks.append(file)
        if audio is not None:
            from .audio import AudioSink

            # after the file: it renders the closed score
            built.sinks.append(AudioSink(file.path, audio, soundfont, audio_duration))
    built.sinks += list(sinks)
    return built


def check_audio(audio, path, soundfont, sounding: bool = True) -> Path | None:
    """Refuses a bad ``audio=`` at once (on every rank alike); a missing FluidSynth only warns, and
    the .mid is still written. Returns the audio path to render, or None."""
    if audio is None:
        return None
    if path is None:
        raise GradmidiError("audio= renders the .mid file: give a path for it too")
    from ..fonts import resolve_soundfont
    from ..render import FORMATS, fluidsynth_available

    if Path(audio).suffix.lower() not in FORMATS:
        raise GradmidiError(f"{audio}: unknown audio format; use .wav, .flac or .ogg")
    resolve_soundfont(soundfont)
    if not sounding:
        return None
    problem = fluidsynth_available()
    if problem:
        warnings.warn(f"gradmidi: {audio} will not be rendered: {problem}", RuntimeWarning, stacklevel=3)
        return None
    return Path(audio)


def check_user_sinks(sinks) -> list[Sink]:
    if sinks is None:
        return []
    if not isinstance(sinks, (list, tuple)) or not all(isinstance(s, Sink) for s in sinks):
        raise GradmidiError(f"sinks must be a list of gradmidi.Sink, not {sinks!r}")
    return list(sinks)


def _live_sinks(live, api, soundfont, latency) -> list[Sink]:
    """live=: 'synth[:DRIVER]', 'virtual[:NAME]', a port name (or part of one), an open mido output
    port, a Sink, or a list of them."""
    if live is None:
        return []
    from ..outputs import MidoOutput, is_mido_output, open_output
    from .live import LiveSink

    specs = live if isinstance(live, (list, tuple)) else [live]
    out: list[Sink] = []
    try:
        for spec in specs:
            if isinstance(spec, Sink):
                out.append(spec)
            elif isinstance(spec, str) and spec:
                out.append(LiveSink(open_output(spec, api, soundfont), max_latency=latency))
            elif is_mido_output(spec):
                if spec.closed:
                    raise GradmidiError(f"live=: the mido port {spec.name!r} is closed")
                out.append(LiveSink(MidoOutput(spec), max_latency=latency))
            else:
                raise GradmidiError(f"live= takes a port name, 'virtual[:NAME]', 'synth[:DRIVER]', an open mido "
                                    f"output port or a Sink, not {spec!r}")
    except BaseException:
        for sink in out:
            if isinstance(sink, LiveSink):
                sink.output.close()
        raise
    return out


def _serve_sink(serve, public: bool, token: str | None) -> Sink | None:
    """serve=: 'HOST:PORT' (loopback unless serve_public=True) or a ready ServeSink."""
    if serve is None:
        if public or token is not None:
            raise GradmidiError("serve_public= and serve_token= need serve='HOST:PORT'")
        return None
    if isinstance(serve, Sink):
        return serve
    if not isinstance(serve, str):
        raise GradmidiError(f"serve= takes 'HOST:PORT' (like '127.0.0.1:7400'), not {serve!r}")
    from .serve import ServeSink

    return ServeSink(serve, public=public, token=token)
