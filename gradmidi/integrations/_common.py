"""What the framework callbacks share: options for rank zero and the others, and a default path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import GradmidiError

# Options that make a Sonifier write, play or serve: only global rank zero keeps them.
OUTPUT_OPTIONS = ("live", "audio", "sinks", "serve", "serve_public", "serve_token")
SCORE_NAME = "gradmidi.mid"


def options_for_rank(options: dict[str, Any], path, is_rank_zero: bool, default_dir) -> dict[str, Any]:
    """Sonifier keyword arguments for this process; the others compute (if they must) but say nothing."""
    if not is_rank_zero:
        return {k: v for k, v in options.items() if k not in OUTPUT_OPTIONS} | {"path": None}
    if path is None:
        path = Path(default_dir or ".") / SCORE_NAME
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return dict(options) | {"path": os.fspath(path)}


def require(module: str, extra: str):
    """Imports a framework lazily, or says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise GradmidiError(f"{module} is not installed: pip install 'gradmidi[{extra}]'") from exc
