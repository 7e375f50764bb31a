"""The ``gradmidi`` command: thin; parses, calls the library, prints.

Every user mistake ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GradmidiError


class _Group(click.Group):
    """Turns library errors into click's one-line ``Error: ...`` and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GradmidiError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradmidi")
def cli() -> None:
    """Listen to neural networks train: gradient norms as MIDI notes, NaNs and spikes as drums."""


def _console(quiet: bool = False):
    from rich.console import Console

    console = Console(stderr=False, quiet=quiet, highlight=False)
    if not console.is_terminal:
        console.width = 160  # piped or logged: do not squeeze tables into 80 columns
    return console


@cli.command()
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("gradmidi-demo"), show_default=True, help="Folder for the .mid files.")
@click.option("--steps", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Training steps per setting.")
@click.option("--setting", "settings", multiple=True, metavar="NAME",
              help="Run only these settings (repeatable); default: all five.")
@click.option("--mnist", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Read MNIST from this local folder (torchvision layout) instead of the bundled digits.")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Training seed. Batch-256 divergence is chaotic: about half of seeds overflow to NaN, the rest explode and die.")
@click.option("--scale", default="minor_pentatonic", show_default=True)
@click.option("--key", default="A", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print only the output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(out_dir, steps, settings, mnist, seed, scale, key, quiet, as_json) -> None:
    """Train the seed experiment's CNN in its five settings and write one score per setting."""
    from . import demo as demo_mod
    from .mapping import Mapping

    Mapping(scale=scale, key=key)  # reject a bad scale or key before any training
    chosen = demo_mod.pick_settings(list(settings))
    data = demo_mod.load_mnist(mnist) if mnist else demo_mod.load_digits_28()
    out_dir.mkdir(parents=True, exist_ok=True)
    console = _console(quiet or as_json)
    results = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        for setting in chosen:
            task = progress.add_task(setting.label, total=steps)
            results.append(demo_mod.train_setting(
                setting, data, out_dir, steps=steps, seed=seed, scale=scale, key=key,
                on_step=lambda t=task: progress.advance(t),
            ))
    if as_json:
        click.echo(json.dumps([_result_json(r) for r in results], indent=2))
        return
    if quiet:
        click.echo(str(out_dir))
        return
    console.print(_summary_table(results))
    console.print(f"Scores written to [bold]{out_dir}/[/]  (open them in any DAW, or: gradmidi inspect FILE)")


def _result_json(result) -> dict:
    return {
        "setting": result.setting.name, "label": result.setting.label, "file": str(result.path),
        "final_loss": result.final_loss, "first_divergence_step": result.first_divergence, **{
            k: result.summary[k] for k in ("steps", "events", "voices")
        },
    }


def _summary_table(results):
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


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file, as_json) -> None:
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
        f"{summary['bpm']:g} bpm, {summary['seconds']:g} s, {summary['scale']}"
    )
    table = Table("voice", "ch", "program", "kind", "layers", "notes", "pitches")
    for v in summary["voices"]:
        pitches = f"{v['pitch_range'][0]}-{v['pitch_range'][1]}" if v["pitch_range"] else "-"
        table.add_row(v["name"], str(v["channel"]), f"{v['program']} {v['instrument']}", v["kind"],
                      str(v["layers"]), str(v["notes"]), pitches)
    console.print(table)
    events = ", ".join(f"{k} {n} (first at step {summary['first_event_step'][k]})"
                       for k, n in summary["events"].items() if n)
    console.print(f"events: {events or 'none'}")
    if summary["markers"]:
        shown = summary["markers"][:20]
        console.print("markers: " + "; ".join(f"{text}" for _, text in shown)
                      + (f"; ... {len(summary['markers']) - 20} more" if len(summary["markers"]) > 20 else ""))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV to write (columns step, voice, norm); default: standard output.")
def decode(file, out) -> None:
    """Recover every sounded norm from a score (within half a scale step)."""
    from .scorefile import read_score

    score = read_score(file)
    if out is None or str(out) == "-":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["step", "voice", "norm"])
        for step, name, norm in score.decode():
            writer.writerow([step, name, f"{norm:.6g}"])
        return
    if out.exists() and out.resolve() == Path(file).resolve():
        raise GradmidiError(f"{out}: refusing to overwrite the score being decoded")
    if out.suffix.lower() in (".mid", ".midi"):
        raise GradmidiError(f"{out}: decode writes CSV; refusing to write it over a .mid name")
    rows = score.write_csv(out)
    click.echo(f"{rows} norms written to {out}", err=True)


@cli.command()
def programs() -> None:
    """List the General MIDI programs, scales, layer families and event drums."""
    from .instruments import DRUM_KEYS, GM_PROGRAMS, KIND_PROGRAMS
    from .mapping import SCALES

    for i, name in enumerate(GM_PROGRAMS):
        click.echo(f"{i:3d}  {name}")
    click.echo("\nscales: " + ", ".join(SCALES))
    click.echo("layer families: " + "; ".join(
        f"{kind}: {', '.join(GM_PROGRAMS[p] for p in progs[:2])}, ..." for kind, progs in KIND_PROGRAMS.items()))
    click.echo("event drums (channel 10): " + ", ".join(f"{k} = key {v}" for k, v in DRUM_KEYS.items()))


def main() -> None:
    try:
        cli(prog_name="gradmidi")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
