"""The audio sink: renders the finished .mid file through FluidSynth when the run closes."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Sink


class AudioSink(Sink):
    """Renders ``score`` to ``audio`` (.wav, .flac or .ogg) at close; the score's sink closes first."""

    def __init__(self, score: str | os.PathLike, audio: str | os.PathLike, soundfont=None,
                 duration: float | None = None) -> None:
        self.score, self.audio, self.soundfont, self.duration = Path(score), Path(audio), soundfont, duration
        self.name = f"audio render of {self.audio}"

    def close(self) -> None:
        from ..render import render

        render(self.score, self.audio, self.soundfont, duration=self.duration)  # a failure is the fan-out's one warning
