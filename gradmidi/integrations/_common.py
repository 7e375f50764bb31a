"""What the framework callbacks share: the default score path, and lazy framework imports."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import GradmidiError

SCORE_NAME = "gradmidi.mid"
SET_BY_CALLBACK = ("resume", "start_step")  # from the framework's checkpoint


def score_path(path: str | os.PathLike[str] | None, default_dir: str | os.PathLike[str] | None) -> str:
    """The score's path: the one given, or ``gradmidi.mid`` in the framework's log folder.

    Every rank gets the same options: the Sonifier itself lets only global rank zero write,
    play or serve.
    """
    if path is None:
        path = Path(default_dir or ".") / SCORE_NAME
    return os.fspath(path)


def sonifier_options(options: dict[str, Any]) -> dict[str, Any]:
    """Checks a callback's Sonifier options when the callback is made, not when training starts."""
    import difflib
    import inspect

    from ..sonifier import Sonifier

    allowed = [name for name in inspect.signature(Sonifier).parameters if name not in ("model", "path", "title")
               and name not in SET_BY_CALLBACK]
    for name in options:
        if name in SET_BY_CALLBACK:
            raise GradmidiError(f"{name}= is not a callback option: a run resumed from a checkpoint continues its "
                                "score by itself, and a fresh run starts a new one")
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise GradmidiError(f"unknown Sonifier option {name!r}{hint}")
    return dict(options)


def require(module: str, extra: str) -> ModuleType:
    """Imports a framework lazily, or says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise GradmidiError(f"{module} is not installed: pip install 'gradmidi[{extra}]'") from exc
