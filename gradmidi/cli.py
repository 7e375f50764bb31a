"""The ``gradmidi`` command: thin; parses, calls the library, prints.

Every user mistake ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import fields as dataclasses_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import GradmidiError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .demo import Result


class _Group(click.Group):
    """Turns library errors into click's one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GradmidiError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except BrokenPipeError:
            _reader_gone()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(_one_line(f"{where}{exc.strerror or exc}")) from None


def _reader_gone() -> None:
    """The reader of our output left (``gradmidi decode run.mid | head``): stop quietly, as a
    command killed by SIGPIPE does (status 141), with no error and no shutdown noise."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
    except (OSError, ValueError):
        pass
    sys.exit(128 + 13)


def _one_line(message: str) -> str:
    """A message quoting user data (a file name, a log row) may hold line breaks: show them escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradmidi")
def cli() -> None:
    """Listen to neural networks train: gradient norms as MIDI notes, NaNs and spikes as drums."""


def _console(quiet: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=False, quiet=quiet, highlight=False)
    console.on_broken_pipe = _reader_gone  # type: ignore[method-assign]  # rich's own says exit 1
    if not console.is_terminal:
        console.width = 160  # piped or logged: do not squeeze tables into 80 columns
    return console


@cli.command(short_help="Train the seed experiment and write its five scores.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("gradmidi-demo"), show_default=True, help="Folder for the .mid files.")
@click.option("--steps", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Training steps per setting.")
@click.option("--setting", "settings", multiple=True, metavar="NAME",
              help="Run only these settings (repeatable); default: all five.")
@click.option("--mnist", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Read MNIST from this local folder (torchvision layout) instead of the bundled digits.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Training seed. Batch-256 divergence is chaotic: about half of seeds overflow to NaN, "
                   "the rest explode and die.")
@click.option("--scale", default="minor_pentatonic", show_default=True, help="Scale (see gradmidi programs).")
@click.option("--key", default="A", show_default=True, help="Key: a note name such as C, F#, Bb.")
@click.option("--audio/--no-audio", default=True, show_default=True,
              help="Render each score to .wav with FluidSynth and gradmidi's own SoundFont.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write an HTML page comparing the settings (needs matplotlib).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the report's (or the output folder's) path.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(out_dir: Path, steps: int, settings: tuple[str, ...], mnist: Path | None, seed: int, scale: str, key: str,
         audio: bool, report: bool, quiet: bool, as_json: bool) -> None:
    """Train the seed experiment's CNN in its five settings and write one score per setting."""
    from . import demo as demo_mod
    from .mapping import Mapping

    Mapping(scale=scale, key=key)  # reject a bad scale or key before any training
    chosen = demo_mod.pick_settings(list(settings))
    data = demo_mod.load_mnist(mnist) if mnist else demo_mod.load_digits_28()
    out_dir.mkdir(parents=True, exist_ok=True)
    console = _console(quiet or as_json)
    if audio:
        from .render import fluidsynth_available

        problem = fluidsynth_available()
        if problem:
            audio = False
            click.echo(f"note: scores only, no audio: {problem}", err=True)
    results = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        for setting in chosen:
            task = progress.add_task(setting.label, total=steps)
            results.append(demo_mod.train_setting(
                setting, data, out_dir, steps=steps, seed=seed, scale=scale, key=key, audio=audio,
                on_step=functools.partial(progress.advance, task),
            ))
    report_page = None
    if report:
        from .report import build_report

        try:
            with console.status("writing the report", spinner="dots"):
                report_page = build_report([r.path for r in results], out_dir / "report", audio=audio,
                                           title="gradmidi demo: the seed experiment")
        except GradmidiError as exc:  # the scores are written: a missing plot library is only a note
            click.echo(f"note: no report: {exc}", err=True)
    if as_json:
        click.echo(json.dumps([_result_json(r) for r in results], indent=2))
        return
    if quiet:
        click.echo(str(report_page or out_dir))
        return
    console.print(_summary_table(results))
    heard = " and .wav audio" if any(r.audio for r in results) else ""
    console.print(f"Scores (.mid){heard} written to [bold]{out_dir}/[/]  "
                  "(open them in any DAW, or: gradmidi inspect FILE)")
    if report_page:
        console.print(f"Report: [bold]{report_page}[/]")


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "setting": result.setting.name, "label": result.setting.label, "file": str(result.path),
        "audio": str(result.audio) if result.audio else None,
        "final_loss": result.final_loss, "first_divergence_step": result.first_divergence, **{
            k: result.summary[k] for k in ("steps", "events", "voices")
        },
    }


def _summary_table(results: list[Result]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title="gradmidi demo: pitch range per voice, events by kind", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("setting", no_wrap=True)
    table.add_column("steps", justify="right")
    voice_names = [v["name"] for v in results[0].summary["voices"]] if results else []
    for name in voice_names:
        table.add_column(name, justify="center")
    kinds = [k for k in (results[0].summary["events"] if results else [])
             if k != "skipped" or any(r.summary["events"][k] for r in results)]
    for kind in kinds:
        table.add_column(kind.replace("_", " "), justify="right")
    table.add_column("diverged", justify="right")
    table.add_column("loss", justify="right")
    for r in results:
        ranges = [f"{v['pitch_range'][0]}-{v['pitch_range'][1]}" if v["pitch_range"] else "-"
                  for v in r.summary["voices"]]
        counts = [str(r.summary["events"][k] or "") for k in kinds]
        first = r.first_divergence
        table.add_row(r.setting.label, str(r.summary["steps"]), *ranges, *counts,
                      f"step {first}" if first is not None else "-", f"{r.final_loss:.3g}")
    return table


@cli.command(short_help="A score's voices, programs, steps and events (--json).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: Path, as_json: bool) -> None:
    """Show a score's voices, programs, steps and events."""
    from .scorefile import read_score

    summary = read_score(file).summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{summary['title']}[/]  {file}")
    console.print(
        f"{summary['steps']} steps in {summary['slots']} slots (every {summary['every']}), "
        f"{summary['bpm']:g} bpm, {summary['seconds']:g} s, "
        + (summary["scale"] if summary["decodable"] else "no mapping (not a gradmidi score)")
    )
    _say_changes(console, summary["changes"])
    table = Table("voice", "ch", "program", "kind", "layers", "notes", "pitches")
    for v in summary["voices"]:
        pitches = f"{v['pitch_range'][0]}-{v['pitch_range'][1]}" if v["pitch_range"] else "-"
        notes = f"{v['notes']} (+{v['undecoded']} undecoded)" if v["undecoded"] else str(v["notes"])
        table.add_row(v["name"], str(v["channel"]), f"{v['program']} {v['instrument']}", v["kind"],
                      str(v["layers"]), notes, pitches)
    console.print(table)
    events = ", ".join(f"{k} {n} (first at step {summary['first_event_step'][k]})"
                       for k, n in summary["events"].items() if n)
    console.print(f"events: {events or 'none'}")
    if summary["range_changes"]:
        moves = summary["range_changes"]
        console.print(f"range changes: {len(moves)}: " + "; ".join(
            f"step {m['step']}: {m['norms'][0]:.3g} to {m['norms'][1]:.3g}" for m in moves[:20])
            + (f"; ... {len(moves) - 20} more" if len(moves) > 20 else ""), markup=False)
    if summary["markers"]:
        shown = summary["markers"][:20]
        console.print("markers: " + "; ".join(f"{text}" for _, text in shown)
                      + (f"; ... {len(summary['markers']) - 20} more" if len(summary["markers"]) > 20 else ""))


def _say_changes(console: Console, changes: list[str] | tuple[str, ...]) -> None:
    """What an editor changed in a score (or that it is plain MIDI): said, never guessed around."""
    for change in changes:
        console.print(f"changed: {change}", markup=False)


@cli.command(short_help="A score back to step, voice, norm (CSV).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV to write (columns step, voice, norm); default: standard output.")
def decode(file: Path, out: Path | None) -> None:
    """Recover every sounded norm from a score (within half a scale step)."""
    from .scorefile import read_score

    score = read_score(file)
    if out is None or str(out) == "-":
        score.write_csv(sys.stdout)
        return
    if out.exists() and out.resolve() == Path(file).resolve():
        raise GradmidiError(f"{out}: refusing to overwrite the score being decoded")
    if out.suffix.lower() not in (".csv", ".txt", ""):
        raise GradmidiError(f"-o {out}: decode writes CSV: name it .csv")
    rows = score.write_csv(out)
    click.echo(f"{rows} norms written to {out}", err=True)


@cli.command(short_help="A score to audio (WAV, FLAC, OGG) through FluidSynth.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audio file: .wav, .flac or .ogg (default: FILE with .wav).")
@click.option("--soundfont", "soundfont", type=click.Path(path_type=Path), default=None,
              help="SoundFont (default: $GRADMIDI_SOUNDFONT, else gradmidi's own).")
@click.option("--rate", type=click.IntRange(8000, 192000), default=44100, show_default=True, help="Sample rate.")
@click.option("--loudness", type=click.FloatRange(-60, 0), default=-16.0, show_default=True,
              help="Target integrated loudness in LUFS (peaks kept at or below -1 dBFS).")
@click.option("--raw", is_flag=True, help="Keep FluidSynth's own level: no loudness normalisation.")
@click.option("--gain", type=click.FloatRange(-60, 24), default=0.0, show_default=True,
              help="Extra gain in dB, applied after normalisation.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="Synths rendering channel groups side by side (default: every core).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Audio of at most this long: a longer run is summarised (its slots merged, every event kept).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def render(file: Path, out: Path | None, soundfont: Path | None, rate: int, loudness: float, raw: bool, gain: float,
           jobs: int | None, duration: float | None, quiet: bool, as_json: bool) -> None:
    """Render a score (or any MIDI file) to audio through FluidSynth."""
    from .render import render as render_score

    out = out or file.with_suffix(".wav")
    options: dict[str, Any] = {"rate": rate, "gain": gain, "loudness": None if raw else loudness, "jobs": jobs,
                               "duration": duration}
    if quiet or as_json:  # nothing to draw: rich is not even imported (start-up counts on short scores)
        result = render_score(file, out, soundfont, **options)
    else:
        console = _console()
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("rendering"), BarColumn(), TextColumn("{task.fields[at]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("render", total=None, at="")

            def on_progress(done: float, total: float) -> None:
                progress.update(task, completed=done, total=total, at=f"{done:.0f}/{total:.0f} s")

            result = render_score(file, out, soundfont, progress=on_progress, **options)
    if as_json:
        click.echo(json.dumps({"file": str(result.path), "seconds": result.seconds, "loudness_lufs": result.loudness,
                               "soundfont": str(result.soundfont), "jobs": result.jobs,
                               "changes": list(result.changes), "summary": result.summary}))
    elif not quiet:
        _say_changes(console, result.changes)
        level = f"{result.loudness:.1f} LUFS" if not raw else "FluidSynth's own level"
        summary = f" ({result.summary})" if result.summary else ""
        console.print(f"{result.path}: {result.seconds:.1f} s{summary}, {level}, font {result.soundfont.name}")


@cli.command(short_help="The General MIDI SoundFonts installed on this machine.")
@click.option("--all", "show_all", is_flag=True, help="Also list fonts that are not complete General MIDI sets.")
@click.option("--json", "as_json", is_flag=True, help="Print the fonts as JSON.")
def fonts(show_all: bool, as_json: bool) -> None:
    """List the General MIDI SoundFonts installed on this machine, and the one in use."""
    from .fonts import ENV_VAR, font_info, resolve_soundfont, system_fonts

    found = system_fonts(include_all=show_all)
    current = resolve_soundfont()
    if as_json:
        click.echo(json.dumps({"in_use": str(current), "fonts": [
            {"path": str(f.path), "name": f.name, "bytes": f.size, "programs": f.melodic, "drum_kits": f.drum_kits,
             "general_midi": f.general_midi} for f in found]}, indent=2))
        return
    info = font_info(current)
    click.echo(f"in use: {current} ({info.name}, {info.size / 1e6:.1f} MB)  [--soundfont, ${ENV_VAR}, bundled]")
    if not found:
        click.echo("no General MIDI SoundFonts found in the usual folders "
                   "(Debian/Ubuntu: apt-get install fluid-soundfont-gm; macOS: brew install --cask musescore)")
    for f in found:
        kind = "GM" if f.general_midi else f"{f.melodic} programs"
        click.echo(f"{f.path}  {f.name}  {f.size / 1e6:.1f} MB  {kind}, {f.drum_kits} drum kit(s)")


@cli.command(short_help="The MIDI output ports (--api UNIX_JACK, ...).")
@click.option("--api", default=None, help="MIDI API: LINUX_ALSA, UNIX_JACK, MACOSX_CORE, WINDOWS_MM "
              "(default: $MIDO_BACKEND's, else the platform's).")
def ports(api: str | None) -> None:
    """List the MIDI output ports live playback can use."""
    from .outputs import list_output_ports

    with _in_flags(LIVE_FLAGS):
        names = list_output_ports(api)
    if not names:
        click.echo("no MIDI output ports: start a synth or DAW, or play through the in-process synth "
                   "(gradmidi play FILE --synth)")
    for name in names:
        click.echo(name)


@cli.command(short_help="A score live, to a MIDI port or the in-process synth.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--port", default=None, help="Output port name (or part of one).")
@click.option("--synth", is_flag=True, help="Play through FluidSynth in this process.")
@click.option("--driver", default=None, help="Audio driver for --synth (pulseaudio, pipewire, alsa, jack, ...).")
@click.option("--soundfont", type=click.Path(path_type=Path), default=None, help="SoundFont for --synth.")
@click.option("--api", default=None, help="MIDI API for --port (see 'gradmidi ports').")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Play for at most this long: a longer run is summarised (its slots merged, every event kept).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def play(file: Path, port: str | None, synth: bool, driver: str | None, soundfont: Path | None, api: str | None,
         duration: float | None, quiet: bool) -> None:
    """Play a saved score (or any MIDI file) live, to a MIDI port or the in-process synth."""
    from .outputs import open_output
    from .play import TAIL_SECONDS, play_score
    from .render import read_timeline
    from .summary import summarised

    if bool(port) == bool(synth):
        raise GradmidiError("choose one of --port NAME or --synth")
    # a bad file is refused before any port or synth opens
    with summarised(file, duration, TAIL_SECONDS) as (source, summary):
        timeline = read_timeline(source)
    with _in_flags(LIVE_FLAGS):
        output = open_output(f"synth:{driver or ''}" if synth else f"port:{port}", api, soundfont)
    console = _console(quiet)
    _say_changes(console, timeline.changes)
    if summary is not None and not quiet:
        console.print(f"playing {summary.describe(TAIL_SECONDS)}")
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn(f"playing {file.name} on {output.name}"), BarColumn(),
                  TextColumn("{task.completed:.0f}/{task.total:.0f} s"), console=console, transient=True,
                  disable=quiet or not console.is_terminal) as progress:
        task = progress.add_task("play", total=None)
        seconds = play_score(file, output, lambda done, total: progress.update(task, completed=done, total=total),
                             timeline)
    if not quiet:
        console.print(f"played {file} ({seconds:.1f} s) on {output.name}")


@cli.command(short_help="A run served elsewhere (serve=), live and/or saved (--save).")
@click.argument("address", metavar="HOST:PORT")
@click.option("--port", default=None, help="Output port name (or part of one).")
@click.option("--synth", is_flag=True, help="Play through FluidSynth in this process.")
@click.option("--driver", default=None, help="Audio driver for --synth (pulseaudio, pipewire, alsa, jack, ...).")
@click.option("--soundfont", type=click.Path(path_type=Path), default=None, help="SoundFont for --synth.")
@click.option("--api", default=None, help="MIDI API for --port (see 'gradmidi ports').")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also record what is heard as a score (a new run: FILE-2.mid, ...).")
@click.option("--token", envvar="GRADMIDI_TOKEN", default=None,
              help="The token a server bound beyond loopback printed at start (or $GRADMIDI_TOKEN).")
@click.option("--latency", type=click.FloatRange(0.05, 10), default=0.5, show_default=True,
              help="Most seconds of backlog played; more is merged (as live= does).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for a run to start serving (default: until Ctrl-C; 0: not at all).")
@click.option("--follow", is_flag=True,
              help="After a run ends, wait for the next (a sweep); with --save each goes to its own file.")
@click.option("-q", "--quiet", is_flag=True, help="Say nothing on the terminal (connections, saved files).")
def listen(address: str, port: str | None, synth: bool, driver: str | None, soundfont: Path | None, api: str | None,
           save: Path | None, token: str | None, latency: float, timeout: float | None, follow: bool,
           quiet: bool) -> None:
    """Play a run served elsewhere (Sonifier(..., serve="HOST:PORT")) live; reconnects when it drops.
    Started before the run, it waits for it."""
    from .listen import Listener
    from .outputs import open_output

    if port and synth:
        raise GradmidiError("choose one of --port NAME or --synth")
    spec = f"synth:{driver or ''}" if synth else (f"port:{port}" if port else None)

    def say(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    listener = Listener(address, open_output=(lambda: open_output(spec, api, soundfont)) if spec else None,
                        save=save, token=token, max_latency=latency, wait=timeout, follow=follow, say=say)
    try:
        with _in_flags(LIVE_FLAGS):
            listener.run()
    except KeyboardInterrupt:
        say("stopped")


@cli.command(short_help="A score as a picture (PNG, SVG, PDF).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Image to write: .png, .svg or .pdf (default: FILE with .png).")
@click.option("--max-points", type=click.IntRange(100, 1_000_000), default=2000, show_default=True,
              help="Bins per voice for long runs (events are always all drawn).")
def plot(file: Path, out: Path | None, max_points: int) -> None:
    """Draw a score: piano roll with event markers, decoded norms on a log axis."""
    from .plot import plot as plot_file

    out = out or file.with_suffix(".png")
    result = plot_file(file, out, max_points=max_points)
    click.echo(f"{out}: {len(result.voice_labels)} voices, {len(result.events)} events", err=True)


@cli.command(short_help="An HTML page comparing runs: plots, audio, voices, events.")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("gradmidi-report"),
              show_default=True, help="Folder for index.html, plots and audio.")
@click.option("--audio/--no-audio", default=True, show_default=True, help="Render each run to .ogg for the page.")
@click.option("--soundfont", type=click.Path(path_type=Path), default=None,
              help="SoundFont for the audio (default: $GRADMIDI_SOUNDFONT, else gradmidi's own).")
@click.option("--title", default="gradmidi report", show_default=True, help="The page's title.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Each run's audio at most this long (default: 2 minutes): longer runs are heard as summaries.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the page's path.")
def report(files: tuple[Path, ...], out: Path, audio: bool, soundfont: Path | None, title: str, duration: float,
           quiet: bool) -> None:
    """A static HTML page comparing runs: plot, audio, events and voices for each."""
    from .report import build_report

    console = _console(quiet)
    with console.status("building the report", spinner="dots") if console.is_terminal and not quiet else \
            _nothing() as status:
        def on_run(name: str) -> None:
            if status is not None:
                status.update(f"report: {name}")

        index = build_report(list(files), out, audio=audio, soundfont=soundfont, title=title, progress=on_run,
                             **({} if duration is None else {"duration": duration}))
    click.echo(str(index))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@cli.command(short_help="A finished run's logs (TensorBoard, CSV, JSONL) into a score.")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Score to write.")
@click.option("--tags", multiple=True, metavar="PATTERN",
              help="Glob over tag/name (repeatable); default: TensorBoard tags that look like gradient norms, "
                   "and the loss.")
@click.option("--like", type=click.Path(path_type=Path), default=None,
              help="Take the mapping, tempo, every, aggregate and spike settings from this score.")
@click.option("--scale", default=None, help="Scale (default: minor_pentatonic, or --like's).")
@click.option("--key", default=None, help="Key (default: A, or --like's).")
@click.option("--norm-range", type=(float, float), default=None, metavar="LOW HIGH",
              help="Norms at the bottom and top of the register (default: 1e-4 1e2, or --like's).")
@click.option("--adaptive/--fixed", default=None,
              help="Re-centre the range on the run's own norms after a warm-up (default: fixed, or --like's).")
@click.option("--bpm", type=click.FloatRange(20, 1200), default=None, help="Tempo (default: 120, or --like's).")
@click.option("--duration", type=click.FloatRange(0, 1e9, min_open=True), default=None, metavar="SECONDS",
              help="Fit the whole log into about this many seconds (sets the tempo; not with --bpm).")
@click.option("--every", type=click.IntRange(1, 1_000_000), default=None,
              help="Steps per slot, for long logs (default: 1, or --like's).")
@click.option("--aggregate", type=click.Choice(["max", "rms", "last"]), default=None,
              help="How a slot's steps combine (default: max, or --like's).")
@click.option("--voices", "voice_patterns", multiple=True, metavar="PATTERN",
              help="A voice of the series matching this glob (repeatable); default: one per series, "
                   "grouped past 15.")
@click.option("--programs", "program_specs", multiple=True, metavar="PATTERN=PROGRAM",
              help="GM program (name or 0-127) for voices or series matching PATTERN (repeatable, or "
                   "comma-separated): 'fc*=Violin,conv1=12'. An exact name beats a pattern.")
@click.option("--spikes", default=None, metavar="NAME=VALUE,...",
              help="Spike detection settings, as gradmidi.SpikeSettings fields: z=3,warmup=4.")
def sonify(source, out, tags, like, scale, key, norm_range, adaptive, bpm, duration, every, aggregate,
           voice_patterns, program_specs, spikes) -> None:
    """Turn a finished run's logs (TensorBoard, CSV or JSONL of step, name, value) into a score.

    A series named loss (or .../loss, train_loss) is the run's loss: its jumps are loss spikes."""
    import dataclasses

    from .clock import MAX_BPM, Clock
    from .events import SpikeSettings
    from .mapping import Mapping
    from .replay import read_series, sonify_series
    from .sinks.midifile import score_name_problem

    problem = score_name_problem(out)
    if problem:
        raise GradmidiError(f"-o {out}: {problem} (or render it: gradmidi render)")
    if out.exists() and out.resolve() == source.resolve():
        raise GradmidiError(f"{out}: refusing to write the score over its source")
    if duration is not None and bpm is not None:
        raise GradmidiError(f"--bpm {bpm:g} and --duration {duration:g} both set the tempo: give one of them")
    mapping, clock, settings, how = Mapping(), Clock(), SpikeSettings(), "max"
    if like is not None:
        from .scorefile import read_score

        liked = read_score(like)
        if not liked.decodable:
            raise GradmidiError(f"{like}: --like needs a gradmidi score: this file has no gradmidi header")
        header = liked.header
        mapping, clock, how = header.mapping, header.clock, header.info.get("aggregate", "max")
        stored = header.info.get("spikes")
        if isinstance(stored, dict):  # written by Sonifier: "inf" stands for math.inf
            known = {f.name for f in dataclasses_fields(SpikeSettings)}
            values: dict[str, Any] = {k: float(v) if isinstance(v, str) else v for k, v in stored.items() if k in known}
            settings = SpikeSettings(**values)
    given = {"scale": scale, "key": key, "norm_range": norm_range, "adaptive": adaptive}
    with _in_flags(SONIFY_FLAGS):
        mapping = dataclasses.replace(mapping, **{k: v for k, v in given.items() if v is not None})
    clock = dataclasses.replace(clock, **{k: v for k, v in (("bpm", bpm), ("every", every)) if v is not None})
    programs = _pairs_text(program_specs, "--programs", "PATTERN=PROGRAM")
    if spikes:
        settings = dataclasses.replace(settings, **_settings_text(spikes, SpikeSettings))
    series = read_series(source, list(tags) or None)
    if duration is not None:
        steps = sorted({s for values in series.values.values() for s in values})
        fitted = Clock.for_duration(duration, len(steps), slot_beats=clock.slot_beats, every=clock.every,
                                    arpeggio=clock.arpeggio, gate=clock.gate)
        if every is not None and fitted.every != every:
            click.echo(f"note: --every {every} raised to {fitted.every} to fit {len(steps)} steps into "
                       f"--duration {duration:g} (at most {MAX_BPM:g} bpm)", err=True)
        clock = fitted
    loss = series.loss_name()
    with _in_flags(SONIFY_FLAGS):
        steps_written = sonify_series(series, out, title=source.name, mapping=mapping, clock=clock,
                                      aggregate=aggregate or how, spikes=settings,
                                      voices=list(voice_patterns) or None, programs=programs or None)
    for note in series.notes():
        click.echo(f"note: {note}", err=True)
    if loss is not None:
        click.echo(f"note: {loss} is the loss: its jumps sound as loss spikes", err=True)
    voices = len(series.values) - (loss is not None)
    click.echo(f"{out}: {_count(steps_written, 'step')}, {_count(voices, 'series', 'series')} from {source}",
               err=True)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


# The library's advice on live output, as play, listen and ports spell it.
LIVE_FLAGS = {"live='synth:DRIVER'": "--driver DRIVER", "live='synth'": "--synth", "api='UNIX_JACK'": "--api UNIX_JACK"}
# The library's option names, as the sonify command spells them.
SONIFY_FLAGS = {"norm_range": "--norm-range", "programs pattern": "--programs pattern",
                "voice pattern": "--voices pattern"}


@contextlib.contextmanager
def _in_flags(flags: dict[str, str]) -> Iterator[None]:
    """A library error names keyword arguments; on the command line it names the flags typed."""
    try:
        yield
    except GradmidiError as exc:
        message = str(exc)
        for name, flag in flags.items():
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", flag, message)
        raise GradmidiError(message) from None


def _pairs_text(specs: tuple[str, ...], option: str, form: str) -> dict[str, str | int]:
    """('fc*=Violin,conv1=12', ...) -> {'fc*': 'Violin', 'conv1': 12}; one-line errors naming the option."""
    out: dict[str, str | int] = {}
    for part in (p.strip() for spec in specs for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.rpartition("=")
        if not sep or not name.strip() or not value.strip():
            raise GradmidiError(f"{option}: expected {form}, not {part!r}")
        value = value.strip()
        out[name.strip()] = int(value) if value.isdigit() else value
    return out


def _settings_text(text: str, kind) -> dict:
    """'z=3,warmup=4' -> {'z': 3.0, 'warmup': 4}, typed as ``kind``'s fields; one-line errors."""
    fields = {f.name: f for f in dataclasses_fields(kind)}
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise GradmidiError(f"--spikes: expected NAME=VALUE with NAME one of {', '.join(fields)}, not {part!r}")
        default = getattr(kind, name)
        whole_number = isinstance(default, int)
        try:
            out[name] = int(value) if whole_number else float(value)
        except ValueError:
            kind = "a whole number" if whole_number else "a number"
            raise GradmidiError(f"--spikes: {name} must be {kind}, not {value.strip()!r}") from None
    return out


@cli.command(short_help="GM programs, scales, layer families and event drums.")
def programs() -> None:
    """List the General MIDI programs, scales, layer families and event drums."""
    from .events import DOWNBEAT_KEY, registered
    from .instruments import GM_DRUMS, GM_PROGRAMS, KIND_PROGRAMS
    from .mapping import SCALES

    for i, name in enumerate(GM_PROGRAMS):
        click.echo(f"{i:3d}  {name}")
    click.echo("\nscales: " + ", ".join(SCALES))
    click.echo("layer families: " + "; ".join(
        f"{kind}: {', '.join(GM_PROGRAMS[p] for p in progs[:2])}, ..." for kind, progs in KIND_PROGRAMS.items()))
    click.echo("event drums (channel 10):")
    for kind in registered():
        click.echo(f"  {kind.name:<12} key {kind.drum_key:2d} {GM_DRUMS[kind.drum_key]:<16} {kind.label}")
    click.echo(f"  {'(epoch)':<12} key {DOWNBEAT_KEY:2d} {GM_DRUMS[DOWNBEAT_KEY]:<16} epoch downbeat (optional)")


def main() -> None:
    try:
        cli(prog_name="gradmidi")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        try:
            sys.stdout.flush()  # what is still buffered, while a closed pipe can still be told apart
        except BrokenPipeError:
            _reader_gone()


if __name__ == "__main__":
    main()
