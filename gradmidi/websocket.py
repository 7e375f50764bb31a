"""The few parts of WebSocket (RFC 6455) a server that only speaks JSON text needs (stdlib only).

The handshake's accept key, server frames (unmasked, never fragmented) and a decoder for client
frames (masked, as the RFC requires) that refuses a frame longer than its limit as soon as the
length arrives, so a peer can never make us buffer more than that. Fragmented messages are
refused too: the page only ever sends its hello, one small text frame.
"""

from __future__ import annotations

import base64
import hashlib
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class WebSocketError(Exception):
    """The peer sent something that is not a WebSocket frame we accept."""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept answer to a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + GUID).digest()).decode("ascii")


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(struct.pack("!H", code) + reason.encode()[:120], CLOSE)


class FrameDecoder:
    """A client's bytes (masked) -> (opcode, payload) pairs; ``masked=False`` reads a server's."""

    def __init__(self, max_frame: int, *, masked: bool = True) -> None:
        self.max_frame = max_frame
        self.masked = masked
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            first, second = self._buf[0], self._buf[1]
            if not first & 0x80 or first & 0x70:
                raise WebSocketError("a fragmented or extended WebSocket frame")
            if bool(second & 0x80) != self.masked:
                raise WebSocketError("an unmasked WebSocket frame from a client" if self.masked
                                     else "a masked WebSocket frame from a server")
            size, at = second & 0x7F, 2
            if size == 126:
                if len(self._buf) < 4:
                    break
                size, at = struct.unpack("!H", self._buf[2:4])[0], 4
            elif size == 127:
                if len(self._buf) < 10:
                    break
                size, at = struct.unpack("!Q", self._buf[2:10])[0], 10
            if size > self.max_frame:
                raise WebSocketError(f"a WebSocket frame of {size} bytes (the limit is {self.max_frame})")
            key = 4 if self.masked else 0
            if len(self._buf) < at + key + size:
                break
            body = bytes(self._buf[at + key : at + key + size])
            if self.masked:
                mask = self._buf[at : at + 4]
                body = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
            del self._buf[: at + key + size]
            out.append((first & 0x0F, body))
        return out
