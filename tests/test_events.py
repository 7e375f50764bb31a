"""Event kinds as a registry: each kind declared once reaches the writer, the reader, the plot and
the report; a score decodes by its own drum table; scores of gradmidi 0.1.0 still read the same."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import gradmidi
from gradmidi import events
from gradmidi.cli import cli
from gradmidi.clock import Clock
from gradmidi.errors import GradmidiError
from gradmidi.events import LEGACY_DRUMS, EventKind, StepValues
from gradmidi.instruments import DRUM_CHANNEL
from gradmidi.mapping import Mapping
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import Event, ScoreHeader, StepRecord
from gradmidi.scorefile import load_tracks
from gradmidi.sinks.midifile import MidiFileSink
from gradmidi.voices import plan_voices

FIXTURES = Path(__file__).parent / "fixtures"
LAYERS = [("fc1", "Linear"), ("conv", "Conv2d")]
CLAVES, GREEN = 75, "#2ca02c"


def loss_above(threshold: float):
    """A rule factory for ``lr_warning``: fires on every step whose loss exceeds ``threshold``."""

    def make(names: tuple[str, ...], settings: events.SpikeSettings) -> events.Rule:
        def rule(values: StepValues) -> list[Event]:
            if values.loss is not None and values.loss > threshold:
                return [Event(values.step, "lr_warning", (), values.loss)]
            return []

        return rule

    return make


LR_WARNING = EventKind("lr_warning", CLAVES, GREEN, "LR warning", "Claves: the loss passed 5; lower the learning rate.",
                       loss_above(5.0))


@pytest.fixture
def lr_warning():
    """The test's own kind, registered by it alone; gone again afterwards."""
    kind = gradmidi.register_event_kind(LR_WARNING)
    yield kind
    if events.get(kind.name) is not None:
        events.unregister(kind.name)


@pytest.fixture
def restore_registry():
    """For tests that change a built-in kind: the registry as it was, in its order, afterwards."""
    before = events.registered()
    yield
    for kind in events.registered():
        events.unregister(kind.name)
    for kind in before:
        events.register(kind)


def write_score(path: Path, steps: int = 40, losses=None, nan_at: int | None = None) -> Path:
    """A score through the real pipeline and writer, as tests/scorekit.py makes them, with losses."""
    voices, assignment = plan_voices(LAYERS)
    header = ScoreHeader(voices, Mapping(), Clock(), "events", {"first_step": 0})
    builder = ScoreBuilder(header, assignment)
    sink = MidiFileSink(path, flush_interval=1e9)
    sink.open(header)
    for step in range(steps):
        norms = np.array([0.1, 0.02]) * (1 + 0.01 * step)
        if step == nan_at:
            norms[0] = np.nan
        loss = None if losses is None else losses(step)
        for slot in builder.add_step(StepRecord(step, norms, np.ones(len(LAYERS), bool), loss)):
            sink.emit(slot)
    for slot in builder.finish():
        sink.emit(slot)
    sink.close()
    return path


def drum_keys_on_channel_10(path: Path) -> list[tuple[int, int]]:
    """(tick, key) of every drum hit in the file, read from the raw tracks."""
    tracks, _ = load_tracks(path)
    return sorted((tick, e[1]) for track in tracks for tick, e in track
                  if e[0] == 0x90 | DRUM_CHANNEL and e[2] > 0)


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


# -- the registry --------------------------------------------------------------------------
def test_the_built_in_kinds_keep_the_keys_of_0_1_0_in_their_order():
    assert events.drum_table() == LEGACY_DRUMS
    assert list(events.drum_table()) == list(LEGACY_DRUMS)
    assert all(k.rule is not None and k.colour.startswith("#") for k in events.registered())


def test_the_registry_refuses_duplicates_and_key_clashes_with_one_line_errors(lr_warning):
    with pytest.raises(GradmidiError) as exc:
        events.register(dataclasses.replace(LR_WARNING, drum_key=76))
    assert "'lr_warning' is already registered" in one_line_error(exc)
    with pytest.raises(GradmidiError) as exc:
        events.register(EventKind("grad_warning", 49, GREEN, "grad warning", "Crash Cymbal 1: clashes."))
    assert "drum key 49 already sounds event kind 'nan'" in one_line_error(exc)
    with pytest.raises(GradmidiError) as exc:
        events.register(dataclasses.replace(LR_WARNING, name="other", drum_key=CLAVES))
    assert "already sounds event kind 'lr_warning'" in one_line_error(exc)
    with pytest.raises(GradmidiError) as exc:
        events.register(EventKind("beat", events.DOWNBEAT_KEY, GREEN, "beat", "Side Stick: clashes."))
    assert "epoch downbeat" in one_line_error(exc)
    with pytest.raises(GradmidiError) as exc:
        events.unregister("no_such_kind")
    assert "no event kind 'no_such_kind'" in one_line_error(exc)
    assert events.get("other") is None and events.get("lr_warning") is LR_WARNING


@pytest.mark.parametrize("change, words", [
    ({"name": "lr warning"}, "identifier-like"),
    ({"name": ""}, "identifier-like"),
    ({"name": "epoch_end"}, "must not begin with 'epoch'"),
    ({"drum_key": 90}, "from 27 to 87"),
    ({"drum_key": 75.5}, "from 27 to 87"),
    ({"colour": "green"}, "'#rrggbb'"),
    ({"label": ""}, "one non-empty line"),
    ({"meaning": "two\nlines"}, "one non-empty line"),
    ({"rule": "loss > 5"}, "callable or None"),
    ({"velocity": 0}, "from 1 to 127"),
])
def test_a_malformed_kind_is_a_one_line_error(change, words):
    with pytest.raises(GradmidiError) as exc:
        dataclasses.replace(LR_WARNING, **change)
    assert words in one_line_error(exc)


def test_replacing_a_kind_keeps_its_place_and_restoring_it_is_clean(restore_registry):
    nan = events.get("nan")
    events.register(dataclasses.replace(nan, drum_key=57), replace=True)
    assert list(events.drum_table()) == list(LEGACY_DRUMS) and events.drum_table()["nan"] == 57
    events.register(dataclasses.replace(events.get("inf"), drum_key=49), replace=True)  # nan's old key is free
    assert events.drum_table()["inf"] == 49


# -- detection -----------------------------------------------------------------------------
def test_rules_of_registered_kinds_run_in_registry_order(lr_warning):
    def kinds(norm: float, loss: float, skipped: bool) -> list[str]:
        values = StepValues(3, np.array([norm]), np.array([True]), loss, skipped)
        return [e.kind for e in events.Detector(["a"]).step(values)]

    assert kinds(np.nan, np.inf, False) == ["nan", "loss_spike", "lr_warning"]
    assert kinds(np.inf, np.inf, True) == ["loss_spike", "skipped", "lr_warning"]  # no inf alarm on a skipped step
    assert kinds(0.1, 1.0, False) == []


def test_a_kind_without_a_rule_is_only_sounded_when_an_event_of_it_is_given(restore_registry):
    events.register(dataclasses.replace(LR_WARNING, name="manual", rule=None))
    assert len(events.Detector(["a"]).rules) == len(LEGACY_DRUMS)


# -- the drum table in the score -----------------------------------------------------------
def test_a_header_round_trips_its_drum_table_and_epoch_downbeat(lr_warning):
    voices, _ = plan_voices(LAYERS)
    header = ScoreHeader(voices, Mapping(), Clock(), epoch_downbeat=True)
    assert header.drums == {**LEGACY_DRUMS, "lr_warning": CLAVES}
    data = json.loads(json.dumps(header.to_dict()))
    assert data["format"] == 2 and data["drums"] == header.drums and data["epoch_downbeat"] is True
    back = ScoreHeader.from_dict(data)
    assert back.drums == header.drums and list(back.drums) == list(header.drums) and back.epoch_downbeat is True


def test_a_format_1_header_reads_with_the_legacy_table(lr_warning):
    voices, _ = plan_voices(LAYERS)
    data = ScoreHeader(voices, Mapping(), Clock()).to_dict()
    del data["drums"], data["epoch_downbeat"]
    back = ScoreHeader.from_dict(data)
    assert back.drums == LEGACY_DRUMS and back.epoch_downbeat is False


@pytest.mark.parametrize("drums, words", [
    ([["nan", 49]], "drums must be a record"),
    ({"": 49}, "non-empty string"),
    ({"nan": 128}, "drum key of 'nan' must be a whole number from 0 to 127"),
    ({"nan": "49"}, "drum key of 'nan' must be a whole number"),
    ({"nan": True}, "drum key of 'nan' must be a whole number"),
    ({"nan": 49, "inf": 49}, "key 49 sounds both 'nan' and 'inf'"),
])
def test_a_damaged_drum_table_is_a_one_line_error(drums, words):
    voices, _ = plan_voices(LAYERS)
    data = ScoreHeader(voices, Mapping(), Clock()).to_dict()
    data["drums"] = drums
    with pytest.raises(GradmidiError) as exc:
        ScoreHeader.from_dict(data)
    assert words in one_line_error(exc)
    data["drums"], data["epoch_downbeat"] = LEGACY_DRUMS, "yes"
    with pytest.raises(GradmidiError, match="epoch_downbeat must be True or False"):
        ScoreHeader.from_dict(data)


def test_a_score_decodes_by_its_own_table_after_the_registry_changed(tmp_path, restore_registry):
    nan = events.get("nan")
    events.register(dataclasses.replace(nan, drum_key=57), replace=True)  # Crash Cymbal 2
    path = write_score(tmp_path / "remapped.mid", nan_at=12)
    events.register(nan, replace=True)  # back to the built-in table before reading
    assert events.drum_table() == LEGACY_DRUMS
    score = gradmidi.read_score(path)
    assert score.header.drums["nan"] == 57
    assert score.drums == [(12, "nan")] and score.summary()["events"]["nan"] == 1
    assert [key for _, key in drum_keys_on_channel_10(path)] == [57]


# -- scores of the previous release --------------------------------------------------------
def test_a_score_of_0_1_0_reads_exactly_as_0_1_0_read_it(tmp_path):
    """The fixture was written and read by gradmidi 0.1.0 (tests/fixtures/make_score_0_1_0.py)."""
    mid = FIXTURES / "score-0.1.0.mid"
    runner = CliRunner()
    decoded = runner.invoke(cli, ["decode", str(mid)])
    assert decoded.exit_code == 0, decoded.output
    assert decoded.output.splitlines() == (FIXTURES / "score-0.1.0.csv").read_text().splitlines()
    gradmidi.read_score(mid).write_csv(tmp_path / "norms.csv")
    assert (tmp_path / "norms.csv").read_bytes() == (FIXTURES / "score-0.1.0.csv").read_bytes()
    inspected = runner.invoke(cli, ["inspect", "--json", str(mid)])
    assert inspected.exit_code == 0, inspected.output
    summary = json.loads(inspected.output)
    assert summary.pop("file") == str(mid)
    # Keys added since 0.1.0 say the file is unedited; the rest is exactly what 0.1.0 showed.
    assert summary.pop("decodable") is True and summary.pop("changes") == []
    assert [voice.pop("undecoded") for voice in summary["voices"]] == [0] * len(summary["voices"])
    score = gradmidi.read_score(mid)  # the fixture's adaptive range moved: listed now, as read from the file
    assert summary.pop("range_changes") == [{"step": score.step_of(slot), "norms": [10**lo, 10**hi]}
                                            for slot, (lo, hi) in score.ranges[1:]]
    assert summary == json.loads((FIXTURES / "score-0.1.0.json").read_text())
    header = gradmidi.read_score(mid).header
    assert header.drums == LEGACY_DRUMS and header.epoch_downbeat is False  # format 1 recorded neither
    assert events.DOWNBEAT_KEY in {key for _, key in drum_keys_on_channel_10(mid)}  # there, and not an event


# -- a new kind, registered by a test alone, reaches everything ----------------------------
def test_a_new_kind_reaches_the_drums_markers_decoder_plot_and_report(tmp_path, lr_warning):
    from matplotlib.colors import to_hex

    from gradmidi.plot import plot_score
    from gradmidi.report import build_report

    path = write_score(tmp_path / "warned.mid", losses=lambda step: 8.0 if step in (10, 30) else 1.0)
    assert (10 * 120, CLAVES) in drum_keys_on_channel_10(path)  # a sixteenth is 120 ticks
    assert [key for _, key in drum_keys_on_channel_10(path)].count(CLAVES) == 2
    score = gradmidi.read_score(path)
    assert "lr_warning (8) @ step 10" in [text for _, text in score.markers]
    assert score.header.drums["lr_warning"] == CLAVES
    assert [slot for slot, kind in score.drums if kind == "lr_warning"] == [10, 30]
    assert score.summary()["events"]["lr_warning"] == 2

    result = plot_score(score)
    roll = result.figure.axes[0]
    assert "event: lr_warning (2)" in [t.get_text() for t in roll.get_legend().get_texts()]
    lines = [c for c in roll.collections if c.get_label() == "event: lr_warning (2)"]
    assert [to_hex(c.get_color()[0]) for c in lines] == [GREEN]
    import matplotlib.pyplot as plt

    plt.close(result.figure)

    page = build_report([path], tmp_path / "report", audio=False).read_text()
    assert f'<span style="color: {GREEN}" title="{LR_WARNING.meaning}">Claves: LR warning</span>' in page
    assert f'<td class="kind" style="color: {GREEN}">lr_warning</td>' in page
    assert "lr warning 2" in page  # the card's facts line counts it


def test_a_kind_this_process_does_not_know_reads_from_the_files_table_in_grey(tmp_path, lr_warning):
    from gradmidi.plot import plot_score
    from gradmidi.report import build_report

    path = write_score(tmp_path / "warned.mid", losses=lambda step: 8.0 if step == 10 else 1.0)
    events.unregister("lr_warning")  # as a reader without the writer's plugin
    score = gradmidi.read_score(path)
    assert (10, "lr_warning") in score.drums and score.summary()["events"]["lr_warning"] == 1
    result = plot_score(score)
    assert "event: lr_warning (1)" in [t.get_text() for t in result.figure.axes[0].get_legend().get_texts()]
    import matplotlib.pyplot as plt

    plt.close(result.figure)
    page = build_report([path], tmp_path / "report", audio=False).read_text()
    assert f'<span style="color: {events.UNKNOWN_COLOUR}">Claves: lr_warning</span>' in page
