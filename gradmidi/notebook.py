"""A score shown inline in Jupyter: its plot and an audio player (``gradmidi.show``, ``ScoreFile._repr_html_``).

Everything is embedded in the cell's HTML (a PNG and an OGG as data URIs), so a saved notebook
keeps them and nothing is served. The plot is drawn on a Figure of its own: the user's
matplotlib backend and pyplot state are never touched.
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import os
import sys
import tempfile
from pathlib import Path

from .errors import GradmidiError
from .scorefile import ScoreFile, read_score

MAX_AUDIO_SECONDS = 120.0  # a longer run is embedded as a summary this long: minutes of audio would bloat it
AUDIO_RATE = 22050  # enough for a preview, half the bytes of 44.1 kHz
PLOT_DPI = 80


def show(score: str | os.PathLike | bytes | ScoreFile, *, audio: bool = True,
         soundfont: str | os.PathLike | None = None) -> None:
    """Displays a score (a path, bytes or a read score) in the notebook: plot, facts and a player."""
    try:
        from IPython.display import HTML, display
    except ImportError:
        raise GradmidiError("gradmidi.show displays in Jupyter: pip install ipython (or run it in a notebook); "
                            "outside one, use gradmidi.plot / gradmidi.render") from None
    read = score if isinstance(score, ScoreFile) else read_score(score)
    display(HTML(score_html(read, audio=audio, soundfont=soundfont)))


def score_html(score: ScoreFile, *, audio: bool = True, soundfont: str | os.PathLike | None = None,
               max_points: int = 1000) -> str:
    """The score as one self-contained HTML fragment. A missing part (no matplotlib, no FluidSynth, a
    long run) is said in a line instead, never raised: a notebook's display must not fail."""
    e = html.escape
    s = score.summary()
    counts = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in s["events"].items() if n) or "no events"
    name = score.path.name if score.path is not None else score.label
    facts = (f"<b>{e(name)}</b> ({e(s['title'])}): {len(score.header.voices)} voices, {s['steps']} steps, "
             f"{s['seconds']:g} s at {s['bpm']:g} bpm; {e(counts)}")
    parts = [f'<div class="gradmidi-score"><p>{facts}</p>', _plot_html(score, max_points)]
    if audio:
        parts.append(_audio_html(score, soundfont))
    parts.append("</div>")
    return "".join(parts)


def _plot_html(score: ScoreFile, max_points: int) -> str:
    from .plot import plot_score

    try:
        figure = plot_score(score, max_points).figure
    except GradmidiError as exc:
        return f'<p class="gradmidi-noplot">no plot: {html.escape(str(exc))}</p>'
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=PLOT_DPI)
    data = base64.b64encode(png.getvalue()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" style="max-width: 100%" '
            f'alt="piano roll and gradient norms">')


def _audio_html(score: ScoreFile, soundfont: str | os.PathLike | None) -> str:
    from .render import fluidsynth_available, render

    def said(why: str) -> str:
        return f'<p class="gradmidi-noaudio">no audio: {html.escape(why)}</p>'

    try:
        data = score.midi_bytes()
    except GradmidiError as exc:
        return said(str(exc))
    problem = fluidsynth_available()
    if problem is not None:
        return said(problem)
    with tempfile.TemporaryDirectory(prefix="gradmidi-show-") as folder:
        midi, ogg = Path(folder) / "score.mid", Path(folder) / "score.ogg"
        midi.write_bytes(data)  # the bytes as read: an edited score sounds as edited
        try:
            summary = render(midi, ogg, soundfont, rate=AUDIO_RATE, duration=MAX_AUDIO_SECONDS).summary
        except GradmidiError as exc:
            return said(str(exc))
        encoded = base64.b64encode(ogg.read_bytes()).decode("ascii")
    player = f'<audio controls preload="metadata" src="data:audio/ogg;base64,{encoded}"></audio>'
    if summary is None:
        return player
    where = f"'{score.path.name}'" if score.path is not None else "score"
    said_so = f"The audio is {summary}: every event is heard (gradmidi.render({where}, 'run.ogg') renders it whole)."
    return f'{player}<p class="gradmidi-summary">{html.escape(said_so)}</p>'


LIVE_HEIGHT = 620  # pixels: the page's header, piano roll, norms and the first voices


def show_live(server, *, url: str | None = None, height: int = LIVE_HEIGHT) -> None:
    """Embeds a serving run's live page in the notebook (``son.show()``): it plays and draws in the cell.

    The page is the run's own (``serve=``), so the cell keeps playing while training runs. In
    Colab the kernel's port is proxied to the browser; elsewhere the frame opens the run's address
    (VS Code and JupyterLab forward a loopback port to the laptop), or ``url`` where you serve it
    through a proxy of your own (for example jupyter-server-proxy's ``/proxy/7400/``).
    """
    from .sinks.serve import ServeSink

    if not isinstance(server, ServeSink):
        raise GradmidiError("son.show() embeds the run's live page, which the run serves: make the Sonifier with "
                            "serve='127.0.0.1:7400'; for a written score, gradmidi.show('run.mid')")
    try:
        from IPython.display import IFrame, display
    except ImportError:
        raise GradmidiError("son.show() displays in Jupyter: pip install ipython (or run it in a notebook); "
                            f"outside one, open {live_url(server)} in a browser") from None
    if url is None and "google.colab" in sys.modules:
        output = importlib.import_module("google.colab.output")  # Colab's own proxy of the kernel's port
        output.serve_kernel_port_as_iframe(server.port, height=str(height))
        return
    display(IFrame(url or live_url(server), width="100%", height=height))


def live_url(server) -> str:
    """The page's address as this machine reaches it (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{server.port}/"
