"""Listening to a run served elsewhere (``gradmidi listen HOST:PORT``).

A served run is a source of the same score session a local run uses: its slots go to the same
sinks (the live scheduler, backlog folded to its latency, and the .mid writer for ``--save``),
so what is heard and saved is what the run's own outputs play. A dropped stream is reconnected
with backoff; the same run continues in the same file, a new run (the trainer restarted) starts
a new one.

Users start the listener first: until something serves, it waits (polling, as an SSH forward
with nothing behind it accepts and hangs up at once), and with ``follow`` it waits again after
each run ends, so a sweep's runs land in successive files.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .errors import GradmidiError
from .outputs import Output
from .score import ScoreHeader, Slot
from .session import ScoreSession
from .sinks.base import Sink
from .sinks.factory import build_sinks
from .sinks.live import LiveSink
from .wire import MAX_SERVER_FRAME, PROTOCOL, FrameDecoder, FrameError, encode, parse_address, slot_from_message

CONNECT_SECONDS = 10.0
STALE_SECONDS = 20.0  # the server pings every 5 s: this much silence means the link is dead
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
WAIT_POLL = 0.2  # while waiting for a run: how often to try again (a run joined late loses its first slots)


class Refused(GradmidiError):
    """The server would not stream to us (bad token, another protocol): retrying cannot help."""


class NotServing(GradmidiError):
    """Nothing serves there yet (refused, or accepted and closed at once by an SSH forward): worth waiting for."""


class _Dropped(Exception):
    """The stream broke off without an ``end``."""


class Listener:
    """Receives a served run and feeds it to a live output and/or a saved score."""

    def __init__(
        self,
        address: str,
        *,
        open_output: Callable[[], Output] | None = None,
        save: str | Path | None = None,
        token: str | None = None,
        max_latency: float = 0.5,
        wait: float | None = None,
        follow: bool = False,
        say: Callable[[str], None] = lambda text: None,
    ) -> None:
        """``wait``: seconds to wait for a run to serve (None: until Ctrl-C; 0: not at all).
        ``follow``: after a run ends, wait (as long) for the next one instead of returning."""
        self.host, self.port = parse_address(address)
        self.address = address
        if open_output is None and save is None:
            raise GradmidiError("nothing to do: choose --port NAME, --synth or --save FILE (or several)")
        self.open_output = open_output
        self.save = Path(save) if save is not None else None
        self.token = token
        self.max_latency = max_latency
        self.wait = wait
        self.follow = follow
        self.say = say
        self.saved: list[Path] = []
        self.slots = 0
        self.gaps = 0
        self._session: ScoreSession | None = None
        self._output: Output | None = None
        self._sinks = self._make_sinks(self.save)  # a missing port or a bad --save fails before connecting
        self._run: str | None = None
        self._header: ScoreHeader | None = None
        self._offset: int | None = None
        self._last_index = -1

    # -- the session ------------------------------------------------------------------------
    def run(self) -> None:
        """Until the run ends (``end``; with ``follow``, until no next run comes within ``wait``) or
        Ctrl-C; a dropped stream is reconnected with backoff."""
        try:
            sock, decoder, welcome = self._await_run(first=True)
            while True:
                self._welcome(welcome)
                try:
                    if self._stream(sock, decoder, welcome["then"]):
                        sock.close()
                        if not self.follow:
                            self.say("the run ended")
                            return
                        self._next_score()  # this run's file is complete now, not when the next one comes
                        self.say(f"the run ended; waiting for the next run at {self.host}:{self.port}")
                        found = self._await_run(first=False)
                        if found is None:
                            self.say(f"no new run within {self.wait:g} s")
                            return
                        sock, decoder, welcome = found
                        continue
                    raise _Dropped("the server closed the connection")
                except (_Dropped, OSError, FrameError) as exc:
                    sock.close()
                    self.say(f"stream dropped ({_reason(exc)})")
                sock, decoder, welcome = self._reconnect()
        except KeyboardInterrupt:
            if self._session is not None:
                self._session.interrupt()  # the music stops now, the file keeps what was heard
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Silences the output and completes the saved file (also on Ctrl-C)."""
        if self._session is not None:
            self._session.close()  # closes the output too
            self._session = None
            if self.save is not None:
                self.say(f"saved {self.saved[-1]}")  # as each completes: a sweep may run for hours
        elif self._output is not None:  # made, never played
            self._output.close()
        self._output = None
        self._sinks = []

    def _next_score(self) -> None:
        """Completes the current score and readies the sinks for the next run's (``FILE-2.mid``, ...)."""
        self.close()
        self._sinks = self._make_sinks(self._numbered(self.save, len(self.saved) + 1) if self.save else None)
        self._run = None

    def _make_sinks(self, save: Path | None) -> list[Sink]:
        self._output = self.open_output() if self.open_output else None
        live = LiveSink(self._output, max_latency=self.max_latency) if self._output is not None else None
        try:
            return build_sinks(path=save, live=live).sinks
        except BaseException:
            if self._output is not None:
                self._output.close()
            raise

    def _await_run(self, first: bool):
        """Connects as soon as a run serves. After ``wait`` seconds of nothing: an error for the
        first run, None for a next one (a sweep has finished)."""
        where = f"{self.host}:{self.port}"
        deadline = None if self.wait is None else time.monotonic() + self.wait
        waiting = False
        while True:
            try:
                return self._connect()
            except NotServing as exc:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    if not first:
                        return None
                    waited = f" within {self.wait:g} s" if waiting else ""
                    raise GradmidiError(f"nothing is serving on {where}{waited} ({exc}): is the run started with "
                                        "serve=, and the SSH forward up?") from None
                if not waiting and first:
                    until = "Ctrl-C" if deadline is None else f"{self.wait:g} s"
                    self.say(f"waiting for a run at {where} (until {until})")
                waiting = True
                self._sleep(WAIT_POLL if left is None else min(WAIT_POLL, left))

    def _connect(self):
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_SECONDS)
        except ConnectionRefusedError:
            raise NotServing("connection refused") from None
        except socket.gaierror as exc:
            raise GradmidiError(f"cannot resolve {self.host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise GradmidiError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        try:
            sock.settimeout(CONNECT_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(encode({"type": "hello", "protocol": PROTOCOL, "token": self.token}))
            decoder = FrameDecoder(MAX_SERVER_FRAME)
            messages: list[dict] = []
            while not messages:
                data = sock.recv(65536)
                if not data:  # what an SSH forward does while nothing serves behind it
                    raise NotServing("it hung up without a word: an SSH forward with no run behind it, or not "
                                     "a gradmidi server")
                messages = decoder.feed(data)
            first_message = messages[0]
            if first_message["type"] == "refused":
                raise Refused(f"{where} refused this listener: {first_message.get('reason', 'no reason given')}")
            if first_message["type"] != "welcome" or first_message.get("protocol") != PROTOCOL:
                raise GradmidiError(f"{where} is not a gradmidi server speaking protocol {PROTOCOL}")
            header = ScoreHeader.from_dict(first_message["header"])
            first_message["header"] = header
            first_message["then"] = messages[1:]  # frames that came in the same read as the welcome
            return sock, decoder, first_message
        except FrameError as exc:
            sock.close()
            raise GradmidiError(f"{where} sent {exc}: not a gradmidi server?") from None
        except (KeyError, TypeError, ValueError) as exc:
            sock.close()
            if isinstance(exc, GradmidiError):
                raise
            raise GradmidiError(f"{where} sent a damaged welcome ({exc})") from None
        except TimeoutError:
            sock.close()
            raise GradmidiError(f"{where} did not answer within {CONNECT_SECONDS:g} s: not a gradmidi server?") \
                from None
        except ConnectionResetError:  # a run closing its socket as we came: the next one may follow
            sock.close()
            raise NotServing("the connection was reset") from None
        except OSError as exc:
            sock.close()
            raise GradmidiError(f"{where}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise

    def _reconnect(self):
        attempt = 0
        while True:
            wait = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            self.say(f"reconnecting in {wait:g} s")
            self._sleep(wait)
            attempt += 1
            try:
                sock, decoder, welcome = self._connect()
            except Refused:
                raise
            except GradmidiError as exc:
                self.say(f"attempt {attempt} failed: {exc}")
                continue
            return sock, decoder, welcome

    def _sleep(self, seconds: float) -> None:
        """Sleeps while keeping the saved file flushed."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            if self._session is not None:
                self._session.tick()

    # -- one connection ---------------------------------------------------------------------
    def _welcome(self, welcome: dict) -> None:
        header: ScoreHeader = welcome["header"]
        names = ", ".join(v.name for v in header.voices)
        if welcome["run"] == self._run:
            self.say(f"reconnected to {self.host}:{self.port}: the same run goes on")
        else:
            if self._run is not None:  # the trainer restarted: a new score
                self._next_score()
            self._run = welcome["run"]
            self._header = header
            self._offset = None
            self._last_index = -1
            self.say(f"listening to {header.title} on {self.host}:{self.port}: {len(header.voices)} voices ({names}), "
                     f"{header.clock.bpm:g} bpm")

    def _stream(self, sock: socket.socket, decoder: FrameDecoder, queued: list[dict]) -> bool:
        """Feeds slots to the sinks until ``end`` (True) or the stream breaks (an exception)."""
        sock.settimeout(0.5)
        heard = time.monotonic()
        while True:
            header = self._header
            assert header is not None  # set by the welcome, before any stream
            for message in queued:
                kind = message["type"]
                if kind == "slot":
                    self._play(slot_from_message(message, header), header)
                elif kind == "end":
                    return True
                elif kind == "refused":
                    raise Refused(f"{self.host}:{self.port} refused this listener: {message.get('reason')}")
            if self._session is not None:
                self._session.tick()
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() - heard > STALE_SECONDS:
                    raise _Dropped(f"nothing heard for {STALE_SECONDS:g} s") from None
                queued = []
                continue
            if not data:
                raise _Dropped("the server closed the connection")
            heard = time.monotonic()
            queued = decoder.feed(data)

    def _play(self, slot: Slot, header: ScoreHeader) -> None:
        if self._offset is None or self._session is None:  # a late joiner's score starts where it joined
            self._offset = slot.index
            self._session = self._open_session(slot, header)
        slot.index -= self._offset
        if slot.index <= self._last_index:
            return  # never play a slot twice
        if slot.index > self._last_index + 1 and self._last_index >= 0:
            self.gaps += 1
        self._last_index = slot.index
        self.slots += 1
        self._session.add_slot(slot)

    def _open_session(self, first: Slot, header: ScoreHeader) -> ScoreSession:
        first_step = int(header.info.get("first_step", 0)) + first.index * header.clock.every
        header = dataclasses.replace(header, info={**header.info, "first_step": first_step})
        if self.save is not None:
            self.saved.append(self._numbered(self.save, len(self.saved) + 1))
        return ScoreSession(header, self._sinks)

    @staticmethod
    def _numbered(save: Path, n: int) -> Path:
        return save if n == 1 else save.with_name(f"{save.stem}-{n}{save.suffix}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, socket.timeout):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
