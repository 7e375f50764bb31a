"""What the framework callbacks share: the default score path, and lazy framework imports."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import GradmidiError

SCORE_NAME = "gradmidi.mid"


def score_path(path, default_dir) -> str:
    """The score's path: the one given, or ``gradmidi.mid`` in the framework's log folder.

    Every rank gets the same options: the Sonifier itself lets only global rank zero write,
    play or serve.
    """
    if path is None:
        path = Path(default_dir or ".") / SCORE_NAME
    return os.fspath(path)


def require(module: str, extra: str):
    """Imports a framework lazily, or says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise GradmidiError(f"{module} is not installed: pip install 'gradmidi[{extra}]'") from exc
