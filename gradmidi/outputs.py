"""Where live MIDI goes: output ports and virtual ports (python-rtmidi), a port opened with mido, an
in-process synth, memory.

Every output shares one protocol, as mido's ports do: ``send(message)`` takes raw MIDI bytes,
``panic()`` silences whatever it left sounding, ``alive()`` says whether its destination still
exists, ``close()`` lets go of it. ``BaseOutput`` keeps the one tracker of sounding notes that
panic needs, so no caller tracks notes itself; ``MemoryOutput`` records what it is sent, for tests.

The MIDI API is the ``api`` argument, else the API named in mido's ``MIDO_BACKEND``
(``mido.backends.rtmidi/UNIX_JACK``), else the platform default. Nothing here opens the MIDI
system at import time.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import GradmidiError

CLOSE_GRACE_SECONDS = 0.05
APIS = {"LINUX_ALSA": 2, "UNIX_JACK": 3, "MACOSX_CORE": 1, "WINDOWS_MM": 4}
ALTERNATIVES = (
    "alternatives: JACK (api='UNIX_JACK' or MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK, with a JACK server "
    "running), the in-process synth (live='synth'), the .mid file alone, or gradmidi render afterwards"
)


def midi_api(api: str | None = None) -> str | None:
    """The rtmidi API name to use (None: rtmidi's default for the platform)."""
    name = api or os.environ.get("MIDO_BACKEND", "").partition("/")[2] or None
    if name is not None and name.upper() not in APIS:
        raise GradmidiError(f"unknown MIDI API {name!r}; choose one of {', '.join(APIS)}")
    return name.upper() if name else None


def _midi_out(api: str | None):
    try:
        import rtmidi
    except ImportError:
        raise GradmidiError("live MIDI needs python-rtmidi: pip install python-rtmidi") from None
    chosen = midi_api(api)
    try:
        with _c_stderr_silenced():  # ALSA's C library prints its own failure before rtmidi raises
            return rtmidi.MidiOut(APIS[chosen] if chosen else rtmidi.API_UNSPECIFIED, name="gradmidi")
    except rtmidi.SystemError as exc:
        where = chosen or "the default MIDI system"
        reason = str(exc).split(".")[0]
        if not chosen or chosen == "LINUX_ALSA":
            if not Path("/dev/snd/seq").exists():
                reason = "no ALSA sequencer on this machine (/dev/snd/seq is missing: a server or container?)"
        raise GradmidiError(f"cannot open {where}: {reason}; {ALTERNATIVES}") from None


@contextlib.contextmanager
def _c_stderr_silenced():
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def list_output_ports(api: str | None = None) -> list[str]:
    out = _midi_out(api)
    try:
        return list(out.get_ports())
    finally:
        out.delete()


@runtime_checkable
class Output(Protocol):
    """What live playback sends to."""

    name: str

    def send(self, message: bytes) -> None: ...

    def panic(self) -> None: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class BaseOutput:
    """An output that knows what it left sounding: subclasses write ``_write`` (and may override
    ``alive`` and ``_release``); ``panic`` and ``close`` silence every note and channel used."""

    name = "output"

    def __init__(self) -> None:
        self._sounding: set[tuple[int, int]] = set()
        self._channels: set[int] = set()
        self._closed = False

    def send(self, message: bytes) -> None:
        status = message[0] & 0xF0
        if status < 0xF0:
            channel = message[0] & 0x0F
            self._channels.add(channel)
            if status == 0x90 and message[2]:
                self._sounding.add((channel, message[1]))
            elif status in (0x80, 0x90):
                self._sounding.discard((channel, message[1]))
        self._write(message)

    def panic(self) -> None:
        """Note-off for every sounding note, then All Notes Off (CC 123) and All Sound Off (CC 120)
        on every channel used: what playback sends when it stops, however it stops."""
        for message in silence_messages(self._sounding, self._channels):
            self._write(message)
        self._sounding.clear()

    @property
    def sounding(self) -> frozenset[tuple[int, int]]:
        """(channel, key) of the notes on now."""
        return frozenset(self._sounding)

    def alive(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Silences, then lets go of the destination; safe to call twice."""
        if self._closed:
            return
        try:
            self.panic()
        finally:
            self._closed = True
            self._release()

    def _write(self, message: bytes) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Lets go of the port or synth."""


class MemoryOutput(BaseOutput):
    """Records every message with its monotonic time, as mido's ``EchoPort`` keeps them: for tests
    and for tools that want the live stream as data."""

    def __init__(self, name: str = "memory") -> None:
        super().__init__()
        self.name = name
        self.messages: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def _write(self, message: bytes) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), bytes(message)))


class PortOutput(BaseOutput):
    """An rtmidi output: connected to an existing port, or a virtual port others connect to."""

    def __init__(self, name: str, api: str | None = None, virtual: bool = False) -> None:
        super().__init__()
        self._out = _midi_out(api)
        self.virtual = virtual
        if virtual:
            try:
                self._out.open_virtual_port(name)
            except Exception as exc:  # rtmidi: Windows MM has no virtual ports
                raise GradmidiError(f"cannot make a virtual MIDI port here ({exc}); "
                                    "connect to a port instead") from None
            self.name = name
        else:
            ports = self._out.get_ports()
            matches = [i for i, p in enumerate(ports) if p == name] or [
                i for i, p in enumerate(ports) if name.lower() in p.lower()
            ]
            if not matches:
                self._out.delete()
                available = ", ".join(ports) or "none"
                raise GradmidiError(f"no MIDI output port matches {name!r} (ports: {available})")
            self._out.open_port(matches[0])
            self.name = ports[matches[0]]
        self._api = api

    def _write(self, message: bytes) -> None:
        self._out.send_message(message)

    def alive(self) -> bool:
        """False once the port we connected to has gone (its synth quit, its device was unplugged)."""
        if self._closed:
            return False
        if self.virtual:
            return True
        try:
            return self.name in self._out.get_ports()
        except Exception:
            return False

    def _release(self) -> None:
        # rtmidi queues messages for the MIDI system (JACK sends them on its next cycle) and has
        # no flush: closing at once can drop the final All Sound Off. Give the queue time to drain.
        time.sleep(CLOSE_GRACE_SECONDS)
        self._out.close_port()
        self._out.delete()


class MidoOutput(BaseOutput):
    """An output port the user opened with mido (any backend: rtmidi, portmidi, amidi, their own
    ``mido.ports.BaseOutput``). gradmidi sends to it and silences what it left sounding on close,
    but the port stays the user's: it is left open, for them to close."""

    def __init__(self, port) -> None:
        super().__init__()
        self.port = port
        self.name = str(getattr(port, "name", None) or type(port).__name__)
        from .interop import import_mido

        self._message = import_mido().Message.from_bytes

    def _write(self, message: bytes) -> None:
        self.port.send(self._message(message))

    def alive(self) -> bool:
        return not self._closed and not getattr(self.port, "closed", False)

    def _release(self) -> None:
        # Backends queue messages (rtmidi on JACK sends on the next cycle) and mido has no flush:
        # leave the final note-offs time to go out before the user closes the port.
        time.sleep(CLOSE_GRACE_SECONDS)


def is_mido_output(obj: object) -> bool:
    """True for an open mido output port (mido is imported only if it is already loaded: a port
    cannot exist without it)."""
    import sys

    mido_ports = sys.modules.get("mido.ports")
    return mido_ports is not None and isinstance(obj, mido_ports.BaseOutput)


class SynthOutput(BaseOutput):
    """FluidSynth in this process, playing through a real audio driver (pulseaudio, alsa, jack, ...)."""

    def __init__(self, soundfont=None, driver: str | None = None, **settings) -> None:
        super().__init__()
        from .fonts import resolve_soundfont
        from .render import load_fluidsynth

        fluidsynth = load_fluidsynth()
        font = resolve_soundfont(soundfont)
        self._fs = fluidsynth
        self.synth = fluidsynth.Synth(gain=0.3, samplerate=44100, channels=16, **settings)
        if self.synth.sfload(str(font), 1) < 0:
            self.synth.delete()
            raise GradmidiError(f"{font}: FluidSynth could not load this SoundFont")
        driver = driver or self.synth.get_setting("audio.driver")
        self.synth.setting("audio.driver", driver)
        # pyfluidsynth's start() reports success even when no driver came up: look at the handle.
        with _c_stderr_silenced():  # a failing driver has the ALSA library print pages of its own
            handle = fluidsynth.new_fluid_audio_driver(self.synth.settings, self.synth.synth)
        if not handle:
            self.synth.delete()
            raise GradmidiError(f"FluidSynth's audio driver {driver!r} did not start (no sound device?); "
                                "choose another with live='synth:DRIVER' (pulseaudio, pipewire, alsa, jack, "
                                "coreaudio, file) or render the .mid afterwards")
        self._driver = handle
        self.name = f"FluidSynth ({driver})"

    def _write(self, message: bytes) -> None:
        kind, channel = message[0] & 0xF0, message[0] & 0x0F
        handle = self.synth.synth
        if kind == 0x90 and message[2]:
            self._fs.fluid_synth_noteon(handle, channel, message[1], message[2])
        elif kind in (0x80, 0x90):
            self._fs.fluid_synth_noteoff(handle, channel, message[1])
        elif kind == 0xB0:
            self._fs.fluid_synth_cc(handle, channel, message[1], message[2])
        elif kind == 0xC0:
            self._fs.fluid_synth_program_change(handle, channel, message[1])

    def _release(self) -> None:
        self._fs.delete_fluid_audio_driver(self._driver)
        self.synth.delete()


def silence_messages(sounding: set[tuple[int, int]], channels: set[int]) -> list[bytes]:
    """Note-offs for the sounding (channel, key), then CC 123 and CC 120 on every channel used."""
    offs = [bytes([0x80 | channel, key, 0]) for channel, key in sorted(sounding)]
    return offs + [bytes([0xB0 | ch, cc, 0]) for ch in sorted(channels) for cc in (123, 120)]


def open_output(spec: str, api: str | None = None, soundfont=None) -> BaseOutput:
    """'synth[:DRIVER]', 'virtual[:NAME]', or a port name (or a part of one, 'port:NAME')."""
    kind, _, arg = spec.partition(":")
    if kind == "synth":
        return SynthOutput(soundfont, arg or None)
    if kind == "virtual":
        return PortOutput(arg or "gradmidi", api, virtual=True)
    if kind == "port":
        return PortOutput(arg, api)
    return PortOutput(spec, api)
