"""Scores close however the process ends: atexit, Ctrl-C (SIGINT) and SIGTERM.

The handlers do no closing themselves (they may run while the training thread holds a
queue's lock): they only mark every open score interrupted, then act as before. SIGINT's
KeyboardInterrupt, or SIGTERM's SystemExit (exit status 143, where SIGTERM had its default
action, which would skip atexit and leave the file up to a flush interval old), unwinds
through ``with`` blocks, and atexit closes whatever is still open. A handler set before
gradmidi's is called instead; an ignored SIGTERM stays ignored.
"""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from typing import Protocol


class Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


_OPEN: weakref.WeakSet = weakref.WeakSet()
_hooks_installed = False
_closing = False  # atexit is closing everything
_pending_exit: int | None = None  # a SIGTERM came while a close was under way


def watch(obj: Closable) -> None:
    """Closes ``obj`` at exit and marks it interrupted on SIGINT/SIGTERM (hooks installed once)."""
    global _hooks_installed
    _OPEN.add(obj)
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN or previous is None:  # ignored, or set outside Python: leave it
                continue
            try:
                signal.signal(signum, _on_signal(previous))
            except ValueError:  # not the main interpreter thread after all
                break


def forget(obj: Closable) -> None:
    _OPEN.discard(obj)


def exit_if_pending() -> None:
    """After a close: the SIGTERM that came while it ran ends the process now."""
    if _pending_exit and not _closing and threading.current_thread() is threading.main_thread():
        raise SystemExit(_pending_exit)


def _on_signal(previous):
    def handler(signum, frame):
        for obj in list(_OPEN):
            obj.interrupt()
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        elif _closing or any(obj.closed for obj in list(_OPEN)):
            global _pending_exit  # a close is under way: let it finish, then exit (exit_if_pending)
            _pending_exit = 128 + signum
        else:
            raise SystemExit(128 + signum)

    return handler


def _close_all() -> None:
    global _closing
    _closing = True
    for obj in list(_OPEN):
        obj.close()
