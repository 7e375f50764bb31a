"""A finished run's score in the experiment trackers' dashboards: its audio and its plot under ``gradmidi/``.

TensorBoard (a ``SummaryWriter``: its audio and image dashboards) and W&B (a run's media
panels). Done once, when fitting ends, on the process that wrote the score. Nothing here may
harm training: a part that cannot be made (no FluidSynth, no matplotlib) or sent is a warning.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_TAG = "gradmidi/audio"
PLOT_TAG = "gradmidi/plot"
AUDIO_RATE = 22050  # a preview: half the bytes of 44.1 kHz
AUDIO_SECONDS = 120.0  # a longer run is heard as a summary of this length (summary.py)
PLOT_DPI = 80


@dataclass
class ScoreMedia:
    """What a dashboard shows of a score; a part that could not be made is None."""

    audio: np.ndarray | None  # mono float32 in [-1, 1] (TensorBoard's audio is mono)
    wav: Path | None  # the same audio as a file (W&B takes files)
    image: np.ndarray | None  # the plot as RGB, height x width x 3, uint8


def publish(score: str | os.PathLike, step: int, *, tensorboard: Sequence[Any] = (), wandb: Sequence[Any] = (),
            soundfont: str | os.PathLike | None = None) -> None:
    """Adds the score's audio and plot to each SummaryWriter and W&B run given (never raises)."""
    if not tensorboard and not wandb:
        return
    with tempfile.TemporaryDirectory(prefix="gradmidi-dashboard-") as folder:
        media = score_media(score, Path(folder), soundfont)
        for writer in tensorboard:
            _safely("TensorBoard", to_tensorboard, writer, media, step)
        for run in wandb:
            _safely("W&B", to_wandb, run, media, step)


def score_media(score: str | os.PathLike, folder: Path, soundfont: str | os.PathLike | None = None) -> ScoreMedia:
    """Renders the score and draws its plot; each part that fails is said in a warning and left out."""
    wav = folder / "score.wav"
    audio = None
    try:
        render_for_dashboard(score, wav, soundfont)
        import soundfile

        samples, _ = soundfile.read(wav, dtype="float32", always_2d=True)
        audio = np.clip(samples.mean(axis=1), -1.0, 1.0)
    except Exception as exc:  # a dashboard must never stop training
        warnings.warn(f"gradmidi: no audio for the dashboards: {exc}", UserWarning, stacklevel=2)
    image = None
    try:
        image = plot_image(score)
    except Exception as exc:
        warnings.warn(f"gradmidi: no plot for the dashboards: {exc}", UserWarning, stacklevel=2)
    return ScoreMedia(audio, wav if audio is not None else None, image)


def render_for_dashboard(score: str | os.PathLike, out: Path, soundfont: str | os.PathLike | None) -> None:
    """The audio a dashboard gets: the whole score, or for a run longer than AUDIO_SECONDS a summary of
    that length (every event kept), so a dashboard stays small and any run is heard in full."""
    from ..render import render

    render(score, out, soundfont, rate=AUDIO_RATE, duration=AUDIO_SECONDS)


def plot_image(score: str | os.PathLike) -> np.ndarray:
    """The score's plot as pixels, drawn through Agg on a Figure of its own (the user's matplotlib
    backend and pyplot state are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..plot import plot_score
    from ..scorefile import read_score

    figure = plot_score(read_score(score)).figure
    figure.set_dpi(PLOT_DPI)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def to_tensorboard(writer: Any, media: ScoreMedia, step: int) -> None:
    import torch

    if media.audio is not None:
        writer.add_audio(AUDIO_TAG, torch.from_numpy(media.audio)[None], step, sample_rate=AUDIO_RATE)
    if media.image is not None:
        writer.add_image(PLOT_TAG, media.image, step, dataformats="HWC")
    writer.flush()


def to_wandb(run: Any, media: ScoreMedia, step: int) -> None:
    import wandb

    logged: dict[str, Any] = {}
    if media.wav is not None:
        logged[AUDIO_TAG] = wandb.Audio(str(media.wav), sample_rate=AUDIO_RATE, caption="the run's score")
    if media.image is not None:
        logged[PLOT_TAG] = wandb.Image(media.image, caption="gradient norms and events")
    if logged:
        run.log(logged)


@contextlib.contextmanager
def dashboard_faults_warn() -> Iterator[None]:
    """Finding the trackers or sending to them: a fault is a warning, training goes on."""
    try:
        yield
    except Exception as exc:  # a dashboard must never stop training
        warnings.warn(f"gradmidi: the score could not be added to the dashboards: {exc}", UserWarning, stacklevel=3)


def _safely(where: str, send: Any, *args: Any) -> None:
    try:
        send(*args)
    except Exception as exc:  # a dashboard must never stop training
        warnings.warn(f"gradmidi: the score could not be added to {where}: {exc}", UserWarning, stacklevel=3)
