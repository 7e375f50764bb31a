"""gradmidi: listen to neural networks train.

Every layer's gradient norm, each step, becomes a note on that layer's own MIDI channel;
NaN, Inf, spikes and skipped mixed-precision steps become percussion and markers.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING  # noqa: E402

from .clock import Clock  # noqa: E402
from .errors import GradmidiError  # noqa: E402
from .events import EventKind, SpikeSettings  # noqa: E402
from .events import register as register_event_kind  # noqa: E402
from .instruments import GM_PROGRAMS  # noqa: E402
from .mapping import SCALES, Mapping  # noqa: E402

# Eager, not lazy: importing the submodule gradmidi.render (audio=, a report, a user's import) would
# otherwise set the package's 'render' to the module, and gradmidi.render(...) would stop working.
from .render import render  # noqa: E402
from .scorefile import ScoreFile, read_score  # noqa: E402
from .sinks.base import Sink  # noqa: E402

if TYPE_CHECKING:  # type checkers and editors see them; at run time they load on first use
    from .notebook import show
    from .sonifier import Sonifier


def __getattr__(name):
    # torch is imported only when a Sonifier is wanted, so reading scores stays light.
    if name == "Sonifier":
        from .sonifier import Sonifier

        return Sonifier
    if name == "show":  # the notebook view brings the web server: not for commands that read scores
        from .notebook import show

        return show
    raise AttributeError(f"module 'gradmidi' has no attribute {name!r}")


__all__ = [
    "Sonifier", "show", "render", "Mapping", "Clock", "SpikeSettings", "EventKind", "register_event_kind", "Sink",
    "ScoreFile", "read_score", "GradmidiError", "SCALES", "GM_PROGRAMS", "__version__",
]
