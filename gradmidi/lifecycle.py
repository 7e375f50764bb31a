"""Scores close however the process ends: atexit, Ctrl-C (SIGINT) and SIGTERM.

Ctrl-C is Python's own: gradmidi sets no SIGINT handler, so a traceback ends where the user's
code was, not in gradmidi. A score closed while a KeyboardInterrupt is being handled (by a
``with`` block, an ``except``) or at exit after one (``sys.last_type``) is closed as
interrupted (``interrupted_by_ctrl_c``).

The SIGTERM handler does no closing itself (it may run while the training thread holds a
queue's lock): it only marks every open score interrupted and raises SystemExit (exit status
143, where SIGTERM had its default action, which would skip atexit and leave the file up to a
flush interval old); that unwinds through ``with`` blocks, and atexit closes whatever is still
open. A SIGTERM handler set before gradmidi's is called instead; an ignored SIGTERM stays ignored.
"""

from __future__ import annotations

import atexit
import signal
import sys
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
        previous = signal.getsignal(signal.SIGTERM)
        if previous != signal.SIG_IGN and previous is not None:  # ignored, or set outside Python: leave it
            try:
                signal.signal(signal.SIGTERM, _on_signal(previous))
            except ValueError:  # not the main interpreter thread after all
                pass


def forget(obj: Closable) -> None:
    _OPEN.discard(obj)


def exit_if_pending() -> None:
    """After a close: the SIGTERM that came while it ran ends the process now."""
    if _pending_exit and not _closing and threading.current_thread() is threading.main_thread():
        raise SystemExit(_pending_exit)


def interrupted_by_ctrl_c() -> bool:
    """True while a KeyboardInterrupt is being handled, or at exit after one ended the program."""
    if isinstance(sys.exc_info()[1], KeyboardInterrupt):
        return True
    last = getattr(sys, "last_type", None)
    return _closing and isinstance(last, type) and issubclass(last, KeyboardInterrupt)


def _on_signal(previous):
    def handler(signum, frame):
        for obj in list(_OPEN):
            obj.interrupt()
        if callable(previous):
            previous(signum, frame)
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
