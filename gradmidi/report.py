"""A static HTML page for a set of runs: plot, audio player, events and voices, side by side.

The report is a folder (index.html, one .png and one .ogg per run) that works opened from
disk: no server, no network, no script.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import events as event_kinds
from .errors import GradmidiError
from .instruments import GM_DRUMS, GM_PROGRAMS
from .scorefile import ScoreFile, read_score

MAX_EVENT_ROWS = 200
AUDIO_SECONDS = 120.0  # a run's audio on the page: longer runs are heard as summaries
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } .sub { color: #666; margin-bottom: 20px; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 20px; }
.run { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 16px; }
.run h2 { font-size: 17px; margin: 0 0 4px; } .facts { color: #555; margin-bottom: 8px; }
.run img { width: 100%; height: auto; border: 1px solid #eee; }
audio { width: 100%; margin: 8px 0; } .noaudio { color: #a33; } .summary { color: #555; margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eee; }
th { background: #f3f3f3; } details summary { cursor: pointer; color: #333; }
"""


@dataclass
class RunPage:
    name: str
    score: ScoreFile
    image: str
    audio: str | None
    audio_problem: str | None
    audio_summary: str | None = None  # what the audio summarises, in words, when it is a summary


def _slug(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-") or "run"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def build_report(
    scores: list[str | os.PathLike], out: str | os.PathLike, *, audio: bool = True, soundfont=None,
    title: str = "gradmidi report", progress: Callable[[str], None] | None = None,
    duration: float | None = AUDIO_SECONDS,
) -> Path:
    """Writes ``out/index.html`` (and its images and audio) for ``scores``; returns the page's path.

    ``duration``: each run's audio lasts at most this long; a longer run is heard as a summary, and
    its card says so (None: every run whole)."""
    from .plot import plot
    from .render import fluidsynth_available, render

    if not scores:
        raise GradmidiError("give at least one score for the report")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GradmidiError(f"{out}: exists and is not a folder")
    parsed = [(Path(p), read_score(p)) for p in scores]  # every input checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    problem = fluidsynth_available() if audio else "audio not asked for (--no-audio)"
    pages: list[RunPage] = []
    taken: set[str] = set()
    for path, score in parsed:
        name = _slug(path, taken)
        if progress:
            progress(name)
        plot(score, out / f"{name}.png")
        audio_file, audio_problem, summary = None, problem, None
        if problem is None:
            try:
                summary = render(path, out / f"{name}.ogg", soundfont, duration=duration).summary
                audio_file = f"{name}.ogg"
            except GradmidiError as exc:
                audio_problem = str(exc)
        pages.append(RunPage(name, score, f"{name}.png", audio_file, audio_problem, summary))
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(_page(pages, title), encoding="utf-8")
    os.replace(tmp, index)
    return index


def _page(pages: list[RunPage], title: str) -> str:
    e = html.escape
    cards = "\n".join(_card(p) for p in pages)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>\n"
            f"<body><h1>{e(title)}</h1><div class=\"sub\">{len(pages)} run(s). Higher notes are larger gradient "
            f"norms; drums and coloured markers are events ({_event_legend(pages)}).</div>\n"
            f"<div class=\"runs\">\n{cards}\n</div></body></html>\n")


def _event_legend(pages: list[RunPage]) -> str:
    """'drum: label' for every kind in the runs' drum tables, in its colour: the page explains the
    kinds its scores hold, including one this process has not registered (grey, by its name)."""
    e = html.escape
    parts = []
    for name, key in dict.fromkeys(item for p in pages for item in p.score.header.drums.items()):
        kind = event_kinds.get(name)
        title = f' title="{e(kind.meaning)}"' if kind and kind.drum_key == key else ""
        parts.append(f'<span style="color: {event_kinds.colour_of(name)}"{title}>'
                     f"{e(GM_DRUMS.get(key, f'key {key}'))}: {e(kind.label if kind else name)}</span>")
    return ", ".join(parts) or "none"


def _card(page: RunPage) -> str:
    e = html.escape
    s = page.score.summary()
    counts = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in s["events"].items() if n) or "no events"
    first = [s["first_event_step"][k] for k in ("nan", "inf") if k in s["first_event_step"]]
    diverged = f"; first NaN/Inf at step {min(first)}" if first else ""
    audio = (f'<audio controls preload="metadata" src="{e(page.audio)}"></audio>' if page.audio
             else f'<p class="noaudio">no audio: {e(page.audio_problem or "")}</p>')
    if page.audio and page.audio_summary:
        audio += f'<p class="summary">The audio is {e(page.audio_summary)}: every event is heard.</p>'

    voices = "".join(
        f"<tr><td>{e(v.name)}</td><td>{e(_layers(v.layers))}</td><td>{v.channel + 1}</td>"
        f"<td>{e(GM_PROGRAMS[v.program])}</td><td>{e(v.kind)}</td>"
        f"<td>{_pitch_range(page.score, v.index)}</td></tr>"
        for v in page.score.header.voices
    )
    events = [(page.score.step_of(slot), kind) for slot, kind in page.score.drums]
    labels: dict[tuple[int, str], str] = {}
    for slot, text in page.score.markers:
        labels.setdefault((page.score.step_of(slot), text.split(" ", 1)[0]), text)
    rows = "".join(
        f'<tr class="event"><td>{step}</td><td class="kind" style="color: {event_kinds.colour_of(kind)}">{e(kind)}</td>'
        f"<td>{e(labels.get((step, kind), ''))}</td></tr>" for step, kind in events[:MAX_EVENT_ROWS]
    )
    more = f"<p>... and {len(events) - MAX_EVENT_ROWS} more events</p>" if len(events) > MAX_EVENT_ROWS else ""
    event_table = (f"<details{' open' if len(events) <= 20 else ''}><summary>events ({len(events)})</summary>"
                   f"<table class=\"events\"><tr><th>step</th><th>kind</th><th>marker</th></tr>{rows}</table>{more}"
                   f"</details>") if events else "<p>no events</p>"
    changes = "".join(f"<li>{e(change)}</li>" for change in s["changes"])
    path, title = page.score.path, page.score.header.title
    if path is None:
        shown = page.score.label
    else:  # two runs of one name: their folders tell them apart
        shown = path.name if page.name == path.stem else str(path)
    model = f" ({e(title)})" if title and title != page.name else ""
    return (f'<section class="run" id="{e(page.name)}"><h2>{e(shown)}{model}</h2>'
            f'<div class="facts">{s["steps"]} steps, {s["seconds"]:g} s at {s["bpm"]:g} bpm, '
            f"{e(s['scale'].replace('_', ' '))}; {e(counts)}{e(diverged)}</div>"
            + (f'<ul class="changes">{changes}</ul>' if changes else "") +
            f'<img src="{e(page.image)}" alt="piano roll and gradient norms of {e(page.name)}">{audio}'
            f'<table class="voices"><tr><th>voice</th><th>layers</th><th>ch</th><th>instrument</th><th>kind</th>'
            f"<th>pitches</th></tr>{voices}</table>{event_table}{_timeline(page.score)}</section>")


def _timeline(score: ScoreFile) -> str:
    """What happened besides events: epochs, the user's markers, an interruption, range changes."""
    e = html.escape
    kinds = set(score.header.drums)
    rows = [(score.step_of(slot), "marker", text) for slot, text in score.markers if text.split(" ", 1)[0] not in kinds]
    rows += [(score.step_of(slot), "range", f"norms {10 ** lo:.3g} to {10 ** hi:.3g} span the register")
             for slot, (lo, hi) in score.ranges[1:]]
    if not rows:
        return ""
    rows.sort(key=lambda r: r[0])
    body = "".join(f'<tr class="{kind}"><td>{step}</td><td>{kind}</td><td>{e(text)}</td></tr>'
                   for step, kind, text in rows[:MAX_EVENT_ROWS])
    more = f"<p>... and {len(rows) - MAX_EVENT_ROWS} more</p>" if len(rows) > MAX_EVENT_ROWS else ""
    return (f"<details{' open' if len(rows) <= 20 else ''}><summary>markers and range changes ({len(rows)})"
            f"</summary><table class=\"markers\"><tr><th>step</th><th>what</th><th>text</th></tr>{body}</table>"
            f"{more}</details>")


def _layers(layers: tuple[str, ...]) -> str:
    """The first three layer names, then how many more."""
    return ", ".join(layers[:3]) + (f" +{len(layers) - 3}" if len(layers) > 3 else "")


def _pitch_range(score: ScoreFile, voice: int) -> str:
    notes = score.notes.get(voice)
    pitch_range = notes.pitch_range() if notes is not None else None
    return f"{pitch_range[0]}-{pitch_range[1]}" if pitch_range else "-"
