"""Norm <-> pitch mapping: properties over every scale, key and register."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradmidi import SCALES, GradmidiError
from gradmidi.mapping import Mapping, PitchMapper, half_step_log, norms_to_pitches, pitches_to_norms

FAST = settings(max_examples=150, deadline=None)


@st.composite
def mappings(draw):
    scale = draw(st.sampled_from(sorted(SCALES)))
    key = draw(st.integers(0, 11))
    low = draw(st.integers(0, 126))
    high = draw(st.integers(low + 1, 127))
    pcs = {(key + i) % 12 for i in SCALES[scale]}
    assume(any(p % 12 in pcs for p in range(low, high + 1)))
    lo_exp = draw(st.floats(-8, 3))
    span = draw(st.floats(0.5, 8))
    return Mapping(scale=scale, key=key, low_note=low, high_note=high, norm_range=(10**lo_exp, 10 ** (lo_exp + span)))


positive_norms = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)
any_norms = st.one_of(positive_norms, st.sampled_from([0.0, -0.0, -1.0, -1e-9, math.nan, math.inf, -math.inf]))


def log_range_of(m: Mapping) -> tuple[float, float]:
    return (math.log10(m.norm_range[0]), math.log10(m.norm_range[1]))


@FAST
@given(mappings(), st.lists(positive_norms, min_size=1, max_size=50))
def test_pitches_lie_in_register_and_scale(m, norms):
    pitches = PitchMapper(m).pitches(np.array(norms))
    assert pitches.dtype.kind == "i"
    assert ((pitches >= m.low_note) & (pitches <= m.high_note)).all()
    assert all(int(p) % 12 in m.pitch_classes for p in pitches)
    expected_pcs = {(m.key + i) % 12 for i in SCALES[m.scale]}
    assert set(m.pitch_classes) == expected_pcs


@FAST
@given(mappings(), st.lists(positive_norms, min_size=2, max_size=50))
def test_pitch_is_monotone_non_decreasing_in_norm(m, norms):
    ordered = np.sort(np.array(norms))
    pitches = norms_to_pitches(ordered, log_range_of(m), m)
    assert (np.diff(pitches) >= 0).all()


@FAST
@given(mappings(), st.lists(any_norms, min_size=1, max_size=30))
def test_non_positive_or_non_finite_norms_are_silent(m, norms):
    arr = np.array(norms, dtype=np.float64)
    pitches = norms_to_pitches(arr, log_range_of(m), m)
    bad = ~np.isfinite(arr) | (arr <= 0)
    assert (pitches[bad] == -1).all()
    assert (pitches[~bad] >= m.low_note).all()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -0.0, -3.0])
def test_each_bad_norm_gives_minus_one(value):
    assert norms_to_pitches(np.array([value]), (-4.0, 2.0), Mapping()).tolist() == [-1]


@FAST
@given(mappings(), positive_norms)
def test_default_range_is_fixed_across_mappers(m, norm):
    a, b = PitchMapper(m), PitchMapper(m)
    b.pitches(np.array([norm * 1e6, norm / 1e6]))  # using a mapper does not move a fixed range
    assert b.observe(np.array([norm, norm * 10])) is None
    assert a.pitches(np.array([norm])).tolist() == b.pitches(np.array([norm])).tolist()
    assert a.log_range == b.log_range == log_range_of(m)


def test_default_mapping_pins_known_pitches():
    m = Mapping()
    pm = PitchMapper(m)
    # 1e-4 -> the bottom of the register, 1e2 -> the top, both scale notes of A minor pentatonic
    assert pm.pitches(np.array([1e-4, 1e2, 1e-9, 1e9])).tolist() == [36, 96, 36, 96]
    assert m.pitch_classes == (0, 2, 4, 7, 9)


@FAST
@given(mappings(), st.floats(0.0, 1.0))
def test_decode_round_trip_within_half_a_scale_step(m, where):
    notes = m.notes
    lr = log_range_of(m)
    per_semitone = (lr[1] - lr[0]) / (m.high_note - m.low_note)
    # a continuous pitch between the first and last scale note of the register
    continuous = notes[0] + where * (notes[-1] - notes[0])
    log_norm = lr[0] + (continuous - m.low_note) * per_semitone
    norm = 10.0**log_norm
    assume(np.isfinite(norm) and norm > 0)
    pitch = int(norms_to_pitches(np.array([norm]), lr, m)[0])
    decoded = float(pitches_to_norms(np.array([pitch]), lr, m)[0])
    assert abs(math.log10(decoded) - math.log10(norm)) <= half_step_log(pitch, m, lr) + 1e-9


@FAST
@given(mappings(), st.integers(0, 127))
def test_pitches_to_norms_inverts_the_continuous_map_on_scale_notes(m, index):
    notes = m.notes
    pitch = int(notes[index % len(notes)])
    lr = log_range_of(m)
    norm = pitches_to_norms(np.array([pitch]), lr, m)
    assert norms_to_pitches(norm, lr, m).tolist() == [pitch]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"scale": "lydian-ish"}, "unknown scale"),
        ({"key": "H"}, "unknown key"),
        ({"key": "C#x"}, "unknown key"),
        ({"key": ""}, "unknown key"),
        ({"low_note": 60, "high_note": 60}, "register"),
        ({"low_note": 70, "high_note": 60}, "register"),
        ({"low_note": -1, "high_note": 60}, "register"),
        ({"low_note": 0, "high_note": 128}, "register"),
        ({"velocity": 0}, "velocity"),
        ({"velocity": 128}, "velocity"),
        ({"velocity": "loud"}, "velocity"),
        ({"norm_range": (1.0, 1.0)}, "norm_range"),
        ({"norm_range": (0.0, 1.0)}, "norm_range"),
        ({"norm_range": (1.0, math.inf)}, "norm_range"),
        ({"scale": "major_pentatonic", "key": "C", "low_note": 65, "high_note": 66}, "no note of the scale"),
    ],
)
def test_bad_settings_raise_one_line_gradmidi_error(kwargs, fragment):
    with pytest.raises(GradmidiError) as info:
        Mapping(**kwargs)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and message.strip() == message and message


@pytest.mark.parametrize("name, expected", [("Bb", 10), ("F#", 6), ("a", 9), ("E♭", 3), (14, 2)])
def test_key_names(name, expected):
    assert Mapping(key=name, scale="major").pitch_classes == tuple(sorted((expected + i) % 12 for i in SCALES["major"]))


def test_mapping_dict_round_trip():
    m = Mapping(scale="dorian", key="D", low_note=40, high_note=80, norm_range=(1e-3, 10.0), velocity="norm")
    assert Mapping.from_dict(m.to_dict()) == m


@FAST
@given(
    st.floats(-6, 2), st.floats(0.1, 1.5), st.integers(5, 30), st.integers(4, 8), st.randoms(use_true_random=False)
)
def test_adaptive_range_moves_after_warmup_onto_observed_norms(centre, spread, warmup, width, rnd):
    # at least 20 samples, so the 2%-98% quantiles can exclude at most one sample at each end (<= 10%)
    m = Mapping(adaptive=True, adaptive_warmup=warmup, adaptive_every=1000)
    mapper = PitchMapper(m)
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    seen = []
    result = None
    for i in range(warmup):
        logs = rng.normal(centre, spread, size=width)
        seen.append(logs)
        result = mapper.observe(10.0**logs)
        if i < warmup - 1:
            assert result is None
            assert mapper.log_range == log_range_of(m)
    assert result is not None
    assert mapper.log_range == result
    lo, hi = result
    assert hi - lo >= 0.5 - 1e-9
    logs = np.concatenate(seen)
    inside = np.mean((logs >= lo - 1e-9) & (logs <= hi + 1e-9))
    assert inside >= 0.9
    # notes now spread over the register instead of sitting at one end of the fixed range
    pitches = mapper.pitches(10.0 ** np.array([lo, hi]))
    assert pitches.tolist() == [m.low_note, m.high_note]


def test_adaptive_range_ignores_bad_norms_and_updates_every_n():
    m = Mapping(adaptive=True, adaptive_warmup=3, adaptive_every=2)
    mapper = PitchMapper(m)
    bad = np.array([np.nan, np.inf, 0.0, -1.0])
    results = [mapper.observe(np.concatenate([bad, [1e-3 * (k + 1)]])) for k in range(7)]
    assert [r is not None for r in results] == [False, False, True, False, True, False, True]
    lo, hi = results[2]
    assert all(np.isfinite([lo, hi]))
    assert lo <= math.log10(1e-3) and hi >= math.log10(3e-3)
