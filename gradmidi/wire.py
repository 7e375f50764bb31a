"""The network stream's wire format: length-prefixed JSON frames over TCP (stdlib only).

A frame is a 4-byte big-endian length N, then N bytes of UTF-8 JSON holding one object with a
``"type"``. The listener speaks first: ``hello`` (protocol version, token). The server answers
``refused`` (a reason, then it hangs up) or ``welcome`` (the run's id, the score header with the
voice table and drum table), then one ``slot`` per slot as the run plays (each with the pitch
range in force, so a late joiner needs no history), ``ping``
when idle, and ``end`` when the run closes. Non-finite norms travel as the strings "NaN",
"Infinity" and "-Infinity", so every frame is strict JSON. Frame sizes are bounded both ways.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket

import numpy as np

from .errors import GradmidiError
from .score import Event, ScoreHeader, Slot

PROTOCOL = 2  # 2: slots carry their range always and their steps present per voice
DEFAULT_PORT = 7400
MAX_LISTENER_FRAME = 4096  # a listener only ever sends its hello
MAX_SERVER_FRAME = 16 << 20  # the welcome's header lists every layer name: large models, long lists
_LENGTH = 4
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return len(body).to_bytes(_LENGTH, "big") + body


class FrameDecoder:
    """Turns received bytes into messages; refuses a frame longer than ``max_frame`` as soon as its
    length arrives, so a peer can never make us buffer more than that."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= _LENGTH:
            size = int.from_bytes(self._buf[:_LENGTH], "big")
            if size > self.max_frame:
                raise FrameError(f"a frame of {size} bytes (the limit is {self.max_frame})")
            if len(self._buf) < _LENGTH + size:
                break
            body = bytes(self._buf[_LENGTH : _LENGTH + size])
            del self._buf[: _LENGTH + size]
            try:
                message = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
            except (UnicodeDecodeError, ValueError) as exc:
                raise FrameError(f"a frame that is not JSON ({exc})") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise FrameError("a frame that is not an object with a type")
            out.append(message)
        return out


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def parse_address(text: str, *, server: bool = False) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:7400') -> (host, port); a one-line error for anything else."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    lowest = 0 if server else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise GradmidiError(f"expected HOST:PORT (like 127.0.0.1:{DEFAULT_PORT}), not {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address the name resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise GradmidiError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


# -- slots --------------------------------------------------------------------------------
def _number(x: float) -> float | str:
    x = float(x)
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _float(x) -> float:
    if isinstance(x, str):
        if x not in _NONFINITE:
            raise ValueError(f"not a number: {x!r}")
        return _NONFINITE[x]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"not a number: {x!r}")
    return float(x)


def slot_message(slot: Slot) -> dict:
    return {
        "type": "slot",
        "index": int(slot.index),
        "first_step": int(slot.first_step),
        "steps": int(slot.steps),
        "norms": [_number(x) for x in slot.norms],
        "pitches": [int(p) for p in slot.pitches],
        "velocities": [int(v) for v in slot.velocities],
        "present": [int(c) for c in slot.present],
        "events": [{"step": int(e.step), "kind": e.kind, "voices": list(e.voices),
                    "value": None if e.value is None else _number(e.value)} for e in slot.events],
        "markers": [str(m) for m in slot.markers],
        "log_range": [float(x) for x in slot.log_range],
        "loss": None if slot.loss is None else _number(slot.loss),
    }


def slot_from_message(message: dict, header: ScoreHeader) -> Slot:
    """The slot a ``slot`` frame carries; FrameError if any part of it is malformed.

    Event kinds are checked against the run's own drum table (the welcome's header), not this
    process's registry: a server may know kinds the listener does not.
    """
    voices = len(header.voices)
    try:
        norms = np.array([_float(x) for x in message["norms"]], dtype=np.float64)
        pitches = np.array([int(p) for p in message["pitches"]], dtype=np.int64)
        velocities = np.array([int(v) for v in message["velocities"]], dtype=np.int64)
        present = np.array([int(c) for c in message["present"]], dtype=np.int64)
        if not len(norms) == len(pitches) == len(velocities) == len(present) == voices:
            raise ValueError(f"{len(norms)} norms for {voices} voices")
        if np.any((pitches < -1) | (pitches > 127)) or np.any((velocities < 0) | (velocities > 127)):
            raise ValueError("a pitch or velocity outside MIDI's range")
        if np.any(present < 0):
            raise ValueError("a negative count of steps present")
        events = []
        for e in message["events"]:
            if e["kind"] not in header.drums:
                raise ValueError(f"unknown event kind {e['kind']!r}")
            events.append(Event(int(e["step"]), str(e["kind"]), tuple(str(v) for v in e["voices"]),
                                None if e["value"] is None else _float(e["value"])))
        lo, hi = (_float(x) for x in message["log_range"])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"a damaged pitch range {message['log_range']!r}")
        index, steps = int(message["index"]), int(message["steps"])
        if index < 0 or steps < 0:
            raise ValueError("a negative slot index")
        return Slot(
            index=index, first_step=int(message["first_step"]), steps=steps, norms=norms,
            pitches=pitches, velocities=velocities, present=present, log_range=(lo, hi), events=events,
            markers=[str(m) for m in message["markers"]],
            loss=None if message["loss"] is None else _float(message["loss"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FrameError(f"a malformed slot ({exc})") from None
