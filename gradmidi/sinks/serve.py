"""The network sink: publishes the score's slots to listeners over TCP (``serve="HOST:PORT"``).

All network I/O happens on the sink's own server thread, a selector over non-blocking sockets:
``emit`` (on gradmidi's worker thread) only encodes the slot and appends it to an outbox. Each
listener has a bounded send buffer; a listener that falls that far behind (stopped reading, a
dead link) is dropped and logged once, so a slow listener can never hold up training.

Loopback only unless ``public=True``; then a token is required (generated unless given), and
nothing is sent to a connection before its hello carries that token. See ``gradmidi.wire``.

Browsers use the same port: a connection that starts with ``GET `` is HTTP (``sinks/web.py``):
the run's live page, its files, or a WebSocket carrying the same messages as JSON text frames,
each slot with the notes it sounds (computed here by the one ``Arrangement``, so the page plays
exactly the .mid file's notes and needs no copy of the mapping).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import selectors
import socket
import threading
import time
import uuid
import warnings
from collections import deque

import numpy as np

from .. import websocket
from ..errors import GradmidiError
from ..instruments import GM_PROGRAMS
from ..notes import Arrangement
from ..score import ScoreHeader, Slot
from ..wire import (
    MAX_LISTENER_FRAME,
    PROTOCOL,
    FrameDecoder,
    FrameError,
    encode,
    is_loopback,
    parse_address,
    slot_message,
)
from . import web
from .base import Sink

log = logging.getLogger("gradmidi.serve")

HELLO_SECONDS = 10.0  # a connection that has not said hello by then is closed
PING_SECONDS = 5.0  # an idle stream still sends something, so listeners can tell a dead link
CLOSE_SECONDS = 2.0  # at close, how long listeners get to take the rest of the stream
HTTP_SECONDS = 60.0  # a browser's request and its answer (the SoundFont is 2 MB over a forward)
_END = object()


class _Listener:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.decoder = FrameDecoder(MAX_LISTENER_FRAME)
        self.ws_decoder = websocket.FrameDecoder(MAX_LISTENER_FRAME)
        self.out = bytearray()
        self.welcomed = False
        self.limit = 0
        self.hello_deadline = time.monotonic() + HELLO_SECONDS
        self.last_sent = time.monotonic()
        self.writing = False
        self.kind = ""  # "tcp", "http" or "ws" (a browser's WebSocket), once the first bytes tell
        self.request = bytearray()  # an HTTP request's bytes until its headers are complete
        self.hang_up = False  # an HTTP answer: close once it is sent
        self.authorised = False  # a WebSocket whose upgrade request carried the token


class ServeSink(Sink):
    """Streams the score to any number of listeners (``gradmidi listen HOST:PORT``)."""

    name = "network stream"
    realtime = True  # listeners play it as it comes

    def __init__(
        self,
        address: str,
        *,
        public: bool = False,
        token: str | None = None,
        buffer_bytes: int = 1 << 20,
        max_listeners: int = 32,
        send_buffer: int | None = 64 << 10,
    ) -> None:
        host, port = parse_address(address, server=True)
        loopback = is_loopback(host)
        if not loopback and not public:
            raise GradmidiError(
                f"serve={address!r} would accept listeners from other machines: pass serve_public=True "
                "(listeners then need its token), or serve on 127.0.0.1 and use an SSH port forward")
        if token is not None and (not isinstance(token, str) or not token.strip() or len(token) > 256):
            raise GradmidiError("the serve token must be a non-empty string of at most 256 characters")
        self.generated_token = token is None and not loopback
        self.token = secrets.token_urlsafe(18) if self.generated_token else token
        self.buffer_bytes = int(buffer_bytes)
        self.max_listeners = int(max_listeners)
        self.send_buffer = send_buffer
        try:
            self._sock = socket.create_server((host, port), family=_family(host))
        except OSError as exc:
            raise GradmidiError(f"cannot serve on {address}: {exc.strerror or exc}") from None
        self._sock.setblocking(False)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._outbox: deque = deque()
        self._listeners: dict[socket.socket, _Listener] = {}
        self._thread: threading.Thread | None = None
        self.failed: str | None = None
        self.listeners = 0  # listeners receiving the stream now
        self._browsers = 0  # of them, pages (their frames carry each slot's notes too)
        self.joined = 0
        self.dropped_listeners = 0  # fell behind their buffer
        self.refused = 0  # bad token, garbage, oversized frames, too many, no hello
        if self.generated_token:
            page = f"THIS-MACHINE:{self.port}" if host in ("0.0.0.0", "::") else self.address  # a wildcard bind
            warnings.warn(f"gradmidi: serving beyond loopback on {self.address}; listeners need "
                          f"--token {self.token}; browsers open http://{page}/?token={self.token}",
                          UserWarning, stacklevel=3)

    # -- called from the gradmidi worker --------------------------------------------------
    def open(self, header: ScoreHeader) -> None:
        self._run_id = uuid.uuid4().hex
        self._header = header.to_dict()
        self._arrangement = Arrangement(header)
        self._thread = threading.Thread(target=self._serve, name="gradmidi-serve", daemon=True)
        self._thread.start()

    def emit(self, slot: Slot) -> None:
        if self.failed:
            raise RuntimeError(self.failed)
        message = slot_message(slot)
        page = None
        if self._browsers:  # the page's frame (the slot with its notes) only when a page is listening
            notes = self._arrangement.notes(slot)
            columns = (notes.channel, notes.key, notes.velocity, notes.onset, notes.length)  # from the slot's start
            page = _ws_frame(dict(message, notes=np.stack(columns, axis=1).astype(np.int64).tolist()
                                  if len(notes) else []))
        self._outbox.append((encode(message), page))
        self._wake()

    def tick(self) -> None:
        if self.failed:
            raise RuntimeError(self.failed)

    def close(self) -> None:
        """Sends ``end``, gives listeners up to CLOSE_SECONDS to take the rest, then hangs up."""
        if self._thread is not None:
            self._outbox.append(_END)
            self._wake()
            self._thread.join(CLOSE_SECONDS + 5)
            self._thread = None
        else:
            self._shutdown()
        if self.failed:
            raise RuntimeError(self.failed)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the server thread is already awake) or closed
            pass

    # -- the server thread ------------------------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        self._sel = sel
        try:
            sel.register(self._sock, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            closing_at = None
            while True:
                for key, mask in sel.select(timeout=0.25):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.fileobj in self._listeners:
                        listener = self._listeners[key.fileobj]
                        if mask & selectors.EVENT_READ:
                            self._read(listener)
                        if mask & selectors.EVENT_WRITE and key.fileobj in self._listeners:
                            self._flush(listener)
                if closing_at is None and self._deliver():
                    closing_at = time.monotonic()
                    sel.unregister(self._sock)
                    self._sock.close()  # no new listeners for a run that has ended
                now = time.monotonic()
                if closing_at is not None:
                    if not any(lis.out for lis in self._listeners.values()) or now - closing_at > CLOSE_SECONDS:
                        return
                    continue
                for listener in list(self._listeners.values()):
                    if (listener.hang_up or listener.kind == "http") and now > listener.hello_deadline:
                        self._drop(listener)  # a browser that stopped sending its request or taking its answer
                    elif not listener.welcomed and now > listener.hello_deadline:
                        self._refuse(listener, "no hello")
                    elif listener.welcomed and now - listener.last_sent > PING_SECONDS:
                        self._queue(listener, self._frame(listener, {"type": "ping"}))
        except Exception as exc:  # a server fault must not reach training: the fan-out warns once
            self.failed = f"the network stream failed: {exc}"
        finally:
            self._shutdown()
            sel.close()

    def _deliver(self) -> bool:
        """Hands the outbox to every welcomed listener; True once the run has ended."""
        while self._outbox:
            item = self._outbox.popleft()
            if item is _END:
                for listener in list(self._listeners.values()):
                    if listener.welcomed:
                        self._queue(listener, self._frame(listener, {"type": "end"}))
                    else:
                        self._drop(listener)
                return True
            for listener in list(self._listeners.values()):
                frame = item[listener.kind == "ws"]
                if listener.welcomed and frame is not None:  # None: made before any page had joined
                    self._queue(listener, frame)
        return False

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors and the like: keep serving the others
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.send_buffer:
                # Our own buffer is the bound that counts; keep the kernel's from hiding minutes of backlog.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            listener = _Listener(sock, f"{peer[0]}:{peer[1]}")
            self._listeners[sock] = listener
            self._sel.register(sock, selectors.EVENT_READ, "listener")
            if len(self._listeners) > self.max_listeners:
                self._refuse(listener, f"too many listeners (at most {self.max_listeners})")

    def _read(self, listener: _Listener) -> None:
        try:
            data = listener.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if listener.welcomed:
                log.info("gradmidi: listener %s left", listener.peer)
            self._drop(listener)
            return
        if not listener.kind:
            listener.request += data
            if len(listener.request) < 4 and b"GET ".startswith(bytes(listener.request)):
                return  # too few bytes yet to tell a browser from a listener
            listener.kind = "http" if listener.request.startswith(b"GET ") else "tcp"
            data = b"" if listener.kind == "http" else bytes(listener.request)
            if listener.kind == "tcp":
                listener.request.clear()
        if listener.hang_up:
            return  # answered: nothing more it says matters
        if listener.kind == "http":
            listener.request += data
            self._http(listener)
            return
        try:
            if listener.kind == "ws":
                messages = self._ws_messages(listener, listener.ws_decoder.feed(data))
            else:
                messages = listener.decoder.feed(data)
        except (FrameError, websocket.WebSocketError) as exc:
            self._refuse(listener, f"sent {exc}")
            return
        for message in messages:
            if listener.welcomed:
                continue  # nothing a listener says after its hello matters
            self._hello(listener, message)
            if listener.sock not in self._listeners:
                return

    def _hello(self, listener: _Listener, message: dict) -> None:
        if message["type"] != "hello":
            self._refuse(listener, "expected a hello")
            return
        if message.get("protocol") != PROTOCOL:
            self._refuse(listener, f"protocol {message.get('protocol')!r} is not supported (this server: {PROTOCOL})")
            return
        if self.token is not None and not listener.authorised:
            given = message.get("token")
            if not isinstance(given, str) or not given:
                self._refuse(listener, "a token is required")
                return
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self._refuse(listener, "bad token")
                return
        message = {"type": "welcome", "protocol": PROTOCOL, "run": self._run_id, "header": self._header}
        if listener.kind == "ws":  # the page names each voice's instrument without a copy of the GM table
            message["instruments"] = [GM_PROGRAMS[v["program"]] for v in self._header["voices"]]
        welcome = self._frame(listener, message)
        listener.welcomed = True
        listener.limit = len(welcome) + self.buffer_bytes
        self.listeners += 1
        self._browsers += listener.kind == "ws"
        self.joined += 1
        log.info("gradmidi: listener %s joined", listener.peer)
        self._queue(listener, welcome)

    def _queue(self, listener: _Listener, frame: bytes) -> None:
        listener.out += frame
        if len(listener.out) > listener.limit and listener.welcomed:
            self.dropped_listeners += 1
            log.warning("gradmidi: listener %s fell more than %d bytes behind; dropped it (training goes on)",
                        listener.peer, self.buffer_bytes)
            self._drop(listener)
            return
        self._flush(listener)

    def _flush(self, listener: _Listener) -> None:
        if listener.out:
            try:
                sent = listener.sock.send(listener.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # reset by the peer
                self._drop(listener)
                return
            del listener.out[:sent]
            if sent:
                listener.last_sent = time.monotonic()
        if listener.hang_up and not listener.out:
            self._drop(listener)
            return
        writing = bool(listener.out)
        if writing != listener.writing:
            listener.writing = writing
            self._sel.modify(listener.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0),
                             "listener")

    def _refuse(self, listener: _Listener, reason: str) -> None:
        """Says why (best effort, never waiting) and hangs up; the server goes on."""
        self.refused += 1
        log.warning("gradmidi: refused listener %s: %s", listener.peer, reason)
        if listener.kind == "http":
            said = web.error(400, reason)
        elif listener.kind == "ws":
            said = _ws_frame({"type": "refused", "reason": reason}) + websocket.close_frame(1008)
        else:
            said = encode({"type": "refused", "reason": reason})
        try:
            listener.sock.send(said)
        except OSError:
            pass
        self._drop(listener)

    def _drop(self, listener: _Listener) -> None:
        if self._listeners.pop(listener.sock, None) is None:
            return
        if listener.welcomed:
            self.listeners -= 1
            self._browsers -= listener.kind == "ws"
        try:
            self._sel.unregister(listener.sock)
        except (KeyError, ValueError):
            pass
        listener.sock.close()

    def _shutdown(self) -> None:
        for listener in list(self._listeners.values()):
            self._drop(listener)
        for sock in (self._sock, self._wake_r, self._wake_w):
            sock.close()

    # -- browsers -------------------------------------------------------------------------
    def _http(self, listener: _Listener) -> None:
        """Answers a browser's request once its headers are in; a WebSocket upgrade becomes a listener."""
        try:
            request = web.parse_request(bytes(listener.request))
            if request is None:
                return
            listener.request.clear()
            listener.hello_deadline = time.monotonic() + HTTP_SECONDS
            answer, cookie = self._authorise(request)
            if answer is not None:
                self.refused += 1
                log.warning("gradmidi: refused browser %s: %s", listener.peer, request.path)
                self._answer(listener, answer)
            elif request.path == web.STREAM_PATH and request.wants_websocket:
                switched = web.upgrade(request)
                listener.kind, listener.authorised = "ws", True
                listener.hello_deadline = time.monotonic() + HELLO_SECONDS
                listener.out += switched
                self._flush(listener)
            else:
                self._answer(listener, web.asset(request, set_cookie=cookie))
                log.debug("gradmidi: browser %s got %s", listener.peer, request.path)
        except web.HTTPError as exc:
            self._answer(listener, web.error(exc.status, str(exc)))

    def _authorise(self, request: web.Request) -> tuple[bytes | None, str | None]:
        """(an answer that refuses, or None; the cookie that keeps a token given in the URL)."""
        if request.wants_websocket and not web.same_origin(request):
            return web.error(403, "the stream is for this page only (Origin)"), None
        if self.token is None:
            if not web.loopback_host(request):
                return web.error(403, "this run serves loopback names only (Host)"), None
            return None, None
        given = web.token_given(request, self.port)
        if web.token_matches(given, self.token):
            cookie = None
            if request.query.get("token"):
                cookie = f"{web.cookie_name(self.port)}={self.token}; Path=/; HttpOnly; SameSite=Lax"
            return None, cookie
        if request.path in ("/", "/index.html"):
            return web.token_form(wrong=given is not None), None
        return web.error(403 if given else 401, "the token is missing or wrong"), None

    def _answer(self, listener: _Listener, answer: bytes) -> None:
        listener.hang_up = True
        listener.out += answer
        self._flush(listener)

    def _ws_messages(self, listener: _Listener, frames: list[tuple[int, bytes]]) -> list[dict]:
        messages = []
        for opcode, payload in frames:
            if opcode == websocket.CLOSE:
                self._answer(listener, websocket.close_frame())
                break
            if opcode == websocket.PING:
                listener.out += websocket.frame(payload, websocket.PONG)
                self._flush(listener)
            elif opcode == websocket.TEXT:
                try:
                    message = json.loads(payload.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise FrameError("a WebSocket message that is not JSON") from None
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    raise FrameError("a message that is not an object with a type")
                messages.append(message)
        return messages

    def _frame(self, listener: _Listener, message: dict) -> bytes:
        return _ws_frame(message) if listener.kind == "ws" else encode(message)


def _ws_frame(message: dict) -> bytes:
    return websocket.frame(json.dumps(message, separators=(",", ":"), allow_nan=False).encode())


def _family(host: str) -> socket.AddressFamily:
    return socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][0]
