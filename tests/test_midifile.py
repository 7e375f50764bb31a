"""End to end: train a tiny model under a Sonifier, then read the .mid back three ways."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
import mido
import numpy as np
import pretty_midi
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.events import drum_table
from gradmidi.instruments import DRUM_CHANNEL
from gradmidi.mapping import half_step_log, norms_to_pitches

STEPS = 60


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """Our own reference: vector_norm of each parameter-owning module's gradients."""
    out = {}
    for name, module in model.named_modules():
        grads = [p.grad.reshape(-1) for p in module.parameters(recurse=False) if p.grad is not None]
        if grads:
            out[name] = float(torch.linalg.vector_norm(torch.cat(grads)))
    return out


def train(model, path, steps=STEPS, poison=None, use_scaler=False, **options):
    """Trains ``steps`` steps; ``poison`` maps step -> (param, value) written into that grad.

    Returns (Sonifier, per-step reference norms).
    """
    poison = poison or {}
    torch.manual_seed(123)
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu") if use_scaler else None
    if scaler is not None:
        # Real GradScaler, no stand-in: on this torch it is enabled on CPU.
        assert scaler.is_enabled()
    recorded = []
    with gradmidi.Sonifier(model, path, **options) as son:
        for step in range(steps):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if step in poison:
                param, value = poison[step]
                param.grad.view(-1)[0] = value
            if scaler is not None:
                scaler.unscale_(opt)
            recorded.append(layer_grad_norms(model))
            son.step(loss=loss, scaler=scaler)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            elif step not in poison:
                opt.step()
    assert son.steps == steps
    assert son.dropped == 0
    return son, recorded


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "run.mid"
    son, recorded = train(tiny_model(), path)
    return path, son, recorded


def absolute(track):
    tick = 0
    for msg in track:
        tick += msg.time
        yield tick, msg


def test_file_parses_with_mido_as_type_1_with_conductor(clean_run):
    path, son, _ = clean_run
    mid = mido.MidiFile(path)  # strict: no clip
    assert mid.type == 1
    assert mid.ticks_per_beat == 480
    conductor = [m for _, m in absolute(mid.tracks[0])]
    types = [m.type for m in conductor]
    assert "set_tempo" in types and "time_signature" in types
    tempo = next(m for m in conductor if m.type == "set_tempo")
    assert tempo.tempo == 500_000  # 120 bpm
    sig = next(m for m in conductor if m.type == "time_signature")
    assert (sig.numerator, sig.denominator) == (4, 4)
    assert not any(m.type in ("note_on", "note_off") for m in conductor)
    assert len(mid.tracks) == 1 + len(son.voices) + 1
    for track in mid.tracks:
        assert track[-1].type == "end_of_track"


def test_one_named_track_per_voice_on_unique_channel_with_program_at_tick_0(clean_run):
    path, son, _ = clean_run
    assert [v.name for v in son.voices] == ["0", "2", "4"]
    mid = mido.MidiFile(path)
    channels = []
    for voice, track in zip(son.voices, mid.tracks[1:-1]):
        names = [m.name for m in track if m.type == "track_name"]
        assert names == [voice.name]
        chans = {m.channel for m in track if hasattr(m, "channel")}
        assert chans == {voice.channel}
        assert voice.channel != DRUM_CHANNEL
        channels.append(voice.channel)
        programs = [(t, m) for t, m in absolute(track) if m.type == "program_change"]
        assert len(programs) == 1
        tick, pc = programs[0]
        assert tick == 0 and pc.program == voice.program
        first_note = next(t for t, m in absolute(track) if m.type == "note_on")
        assert track.index(pc) < track.index(next(m for m in track if m.type == "note_on"))
        assert first_note >= 0
        # one note per step: every step of the clean run has a finite positive norm
        assert sum(1 for m in track if m.type == "note_on" and m.velocity > 0) == STEPS
    assert len(set(channels)) == len(channels)


def test_drum_notes_only_on_channel_10(tmp_path):
    path = tmp_path / "nan.mid"
    model = tiny_model()
    son, _ = train(model, path, poison={20: (model[2].weight, float("nan"))})
    mid = mido.MidiFile(path)
    drums = mid.tracks[-1]
    assert [m.name for m in drums if m.type == "track_name"] == ["events"]
    drum_notes = [m for m in drums if m.type in ("note_on", "note_off")]
    assert drum_notes, "the NaN should have sounded a drum"
    assert all(m.channel == DRUM_CHANNEL for m in drum_notes)
    assert all(m.note in drum_table().values() for m in drum_notes)
    for track in mid.tracks[:-1]:
        assert not any(getattr(m, "channel", None) == DRUM_CHANNEL for m in track)


def test_no_note_overlaps_itself_on_a_channel(clean_run, tmp_path):
    model = tiny_model()
    nan_path = tmp_path / "nan.mid"
    train(model, nan_path, poison={5: (model[0].weight, float("nan")), 6: (model[0].bias, float("inf"))})
    for path in (clean_run[0], nan_path):
        mid = mido.MidiFile(path)
        for track in mid.tracks:
            state: dict[tuple[int, int], int | None] = defaultdict(lambda: None)
            for tick, msg in absolute(track):
                if msg.type == "note_on" and msg.velocity > 0:
                    key = (msg.channel, msg.note)
                    assert state[key] is None, f"{path.name}: note {key} restarted at tick {tick} while sounding"
                    state[key] = tick
                elif msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
                    key = (msg.channel, msg.note)
                    assert state[key] is not None, f"{path.name}: note_off {key} at tick {tick} without a note_on"
                    assert tick > state[key]
                    state[key] = None
            assert all(v is None for v in state.values()), f"{path.name}: a note is never closed"


def test_file_parses_with_pretty_midi(clean_run):
    path, son, _ = clean_run
    pm = pretty_midi.PrettyMIDI(str(path))
    melodic = [i for i in pm.instruments if not i.is_drum]
    assert sorted(i.program for i in melodic) == sorted(v.program for v in son.voices)
    for inst in melodic:
        assert len(inst.notes) == STEPS
        starts = [n.start for n in inst.notes]
        assert starts == sorted(starts)
        assert all(n.end > n.start for n in inst.notes)
        assert all(b.start >= a.end for a, b in zip(inst.notes, inst.notes[1:]))
    _, tempi = pm.get_tempo_changes()
    assert tempi.tolist() == pytest.approx([120.0])
    # 60 sixteenths at 120 bpm = 7.5 s
    assert pm.get_end_time() == pytest.approx(STEPS * 0.125, abs=0.13)


def assert_decodes_to(score, recorded_by_step, minimum_checked):
    """Every decoded norm is within half a scale step (log space) of our own norm."""
    mapping = score.header.mapping
    lo, hi = mapping.norm_range
    rows = score.decode()
    checked = 0
    for step, voice, norm in rows:
        truth = recorded_by_step[step][voice]
        lr = score.log_range_at(score.clock.slot_of(step))
        pitch = int(norms_to_pitches(np.array([norm]), lr, mapping)[0])
        if lo <= truth <= hi:
            tol = half_step_log(pitch, mapping, lr) + 1e-9
            assert abs(math.log10(norm) - math.log10(truth)) <= tol, (step, voice, norm, truth)
            checked += 1
    assert checked >= minimum_checked
    return rows


def test_read_score_decodes_norms_within_half_a_scale_step(clean_run):
    path, son, recorded = clean_run
    score = gradmidi.read_score(path)
    assert [v.name for v in score.header.voices] == [v.name for v in son.voices]
    rows = assert_decodes_to(score, recorded, minimum_checked=STEPS * 3 * 9 // 10)
    assert len(rows) == STEPS * 3
    assert sorted({s for s, _, _ in rows}) == list(range(STEPS))
    assert score.last_slot == STEPS - 1
    assert score.drums == [] or all(kind == "spike" or kind == "loss_spike" for _, kind in score.drums)


def test_nan_at_known_step_gives_nan_drum_and_marker(tmp_path):
    path = tmp_path / "nan.mid"
    model = tiny_model()
    son, recorded = train(model, path, poison={20: (model[2].weight, float("nan"))})
    assert math.isnan(recorded[20]["2"])
    score = gradmidi.read_score(path)
    assert (20, "nan") in score.drums
    assert [s for s, kind in score.drums if kind == "nan"] == [20]
    nan_markers = [(slot, text) for slot, text in score.markers if "nan" in text]
    assert nan_markers and all(slot == 20 for slot, _ in nan_markers)
    assert any("2" in text and "step 20" in text for _, text in nan_markers)
    # the NaN voice is silent at that step; the others still sound
    decoded = {(step, voice) for step, voice, _ in score.decode()}
    assert (20, "2") not in decoded
    assert (20, "0") in decoded and (20, "4") in decoded
    assert any(e.kind == "nan" and e.step == 20 for e in son.events)
    good = [r if i != 20 else {k: v for k, v in r.items() if k != "2"} for i, r in enumerate(recorded)]
    assert_decodes_to(score, good, minimum_checked=150)


def test_gradscaler_skipped_step_is_skipped_not_inf(tmp_path):
    path = tmp_path / "skip.mid"
    model = tiny_model()
    son, recorded = train(model, path, steps=40, poison={30: (model[4].weight, float("inf"))}, use_scaler=True)
    assert recorded[30]["4"] == math.inf
    score = gradmidi.read_score(path)
    kinds_at_30 = [kind for slot, kind in score.drums if slot == 30]
    assert "skipped" in kinds_at_30
    assert "nan" not in kinds_at_30 and "inf" not in kinds_at_30
    assert not any(kind in ("nan", "inf") for _, kind in score.drums)
    assert [s for s, kind in score.drums if kind == "skipped"] == [30]
    texts_at_30 = [text for slot, text in score.markers if slot == 30]
    assert any(t.startswith("skipped") for t in texts_at_30)
    assert not any(t.startswith(("nan", "inf")) for t in texts_at_30)
    # the scaler really skipped: training carried on with finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_every_4_aggregates_steps_into_ceil_steps_over_4_slots(tmp_path):
    path = tmp_path / "every.mid"
    steps = 30
    son, recorded = train(tiny_model(), path, steps=steps, every=4)
    expected = math.ceil(steps / 4)
    assert son.slots == expected == 8
    score = gradmidi.read_score(path)
    assert score.last_slot + 1 == expected
    assert score.summary()["slots"] == expected
    assert score.clock.every == 4
    for voice in score.header.voices:
        assert [slot for slot, _, _ in score.notes[voice.index]] == list(range(expected))
    rows = score.decode()
    assert sorted({s for s, _, _ in rows}) == list(range(0, steps, 4))
    # the default aggregate is the max over the slot's steps
    slot_max = {
        first: {name: max(r[name] for r in recorded[first:first + 4]) for name in recorded[0]}
        for first in range(0, steps, 4)
    }
    assert_decodes_to(score, slot_max, minimum_checked=expected * 3 * 9 // 10)


class Cyrillic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.слой = nn.Linear(4, 8)
        self.выход = nn.Linear(8, 2)

    def forward(self, x):
        return self.выход(torch.tanh(self.слой(x)))


def test_non_latin_layer_names_survive_exactly_in_the_header(tmp_path):
    path = tmp_path / "unicode.mid"
    model = Cyrillic()
    son, recorded = train(model, path, steps=12, poison={3: (model.слой.weight, float("nan"))})
    assert [v.name for v in son.voices] == ["слой", "выход"]
    score = gradmidi.read_score(path)
    assert [v.name for v in score.header.voices] == ["слой", "выход"]
    assert score.header.voices[0].layers == ("слой",)
    assert score.header.info["layers"] == ["слой", "выход"]
    assert (3, "nan") in score.drums
    assert any(slot == 3 and "nan" in text for slot, text in score.markers)
    mid = mido.MidiFile(path)
    assert len(mid.tracks) == 4
    pretty_midi.PrettyMIDI(str(path))
    good = [{k: v for k, v in r.items() if not (i == 3 and k == "слой")} for i, r in enumerate(recorded)]
    assert_decodes_to(score, good, minimum_checked=20)


def test_adaptive_range_changes_are_recorded_and_decode_stays_within_half_a_step(tmp_path):
    path = tmp_path / "adaptive.mid"
    son, recorded = train(tiny_model(), path, steps=40, adaptive=True, adaptive_warmup=10, adaptive_every=10)
    score = gradmidi.read_score(path)
    # warm-up at slot 9, then every 10 slots: 9, 19, 29, 39
    assert [slot for slot, _ in score.ranges] == [0, 9, 19, 29, 39]
    default = (math.log10(1e-4), math.log10(1e2))
    assert score.ranges[0][1] == pytest.approx(default)
    assert all(hi - lo < default[1] - default[0] for _, (lo, hi) in score.ranges[1:])
    # decode against the range in force at each slot (only norms inside that range are checked)
    mapping = score.header.mapping
    checked = 0
    for step, voice, norm in score.decode():
        lr = score.log_range_at(step)
        truth = recorded[step][voice]
        if lr[0] <= math.log10(truth) <= lr[1]:
            pitch = int(norms_to_pitches(np.array([norm]), lr, mapping)[0])
            assert abs(math.log10(norm) - math.log10(truth)) <= half_step_log(pitch, mapping, lr) + 1e-9
            checked += 1
    assert checked >= 100


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 96, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28]),
                          st.tuples(*[st.integers(0, 255)] * 3)), min_size=1, max_size=40),
       st.integers(0, 1000))
def test_vectorised_track_encoding_equals_event_by_event_encoding(events, last_tick):
    from gradmidi.smf import encode_block, vlq

    deltas = np.array([d for d, _ in events], dtype=np.int64)
    data = np.array([e for _, e in events], dtype=np.uint8)
    expected = b"".join(vlq(int(d)) + bytes(e) for d, e in zip(deltas, data))
    assert encode_block(last_tick + np.cumsum(deltas), data, last_tick) == expected


def test_aggregate_last_over_logged_steps_takes_each_voices_last_present_value():
    from gradmidi.pipeline import _aggregate

    rows = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 4.0], [2.0, 7.0, 9.0]])
    present = np.array([[True, True, True], [True, True, False], [False, False, False]])
    # voice 0: its last present step is the second; voice 1's NaN step alarms the slot; voice 2: the first
    np.testing.assert_array_equal(_aggregate(rows, present, "last"), [3.0, np.nan, 2.0])
    assert np.isnan(_aggregate(rows, np.zeros_like(present), "last")).all()
