"""Events from host values: what is an alarm and what is not."""

from __future__ import annotations

import numpy as np

from gradmidi.events import Detector, SpikeSettings, StepValues


def run(detector: Detector, norms: np.ndarray, losses=None, skipped=None) -> list:
    events = []
    for step, row in enumerate(norms):
        loss = None if losses is None else losses[step]
        events += detector.step(StepValues(step, np.asarray(row, dtype=float), np.ones(len(row), bool), loss,
                                           bool(skipped and step in skipped)))
    return events


def test_steady_noisy_norms_raise_no_spike():
    rng = np.random.default_rng(0)
    norms = 10 ** rng.normal(-1.0, 0.15, size=(2000, 3))  # small-batch jitter, +-40 %
    assert [e for e in run(Detector(["a", "b", "c"]), norms) if e.kind == "spike"] == []


def test_a_fivefold_jump_after_warm_up_is_a_spike_on_that_voice_only():
    rng = np.random.default_rng(1)
    norms = 10 ** rng.normal(-1.0, 0.05, size=(100, 2))
    norms[60, 1] *= 20
    spikes = [e for e in run(Detector(["a", "b"]), norms) if e.kind == "spike"]
    assert [(e.step, e.voices) for e in spikes] == [(60, ("b",))]


def test_an_explosion_in_the_first_steps_is_caught_before_the_warm_up_ends():
    norms = np.array([[0.3], [0.4], [0.5], [4.5], [28.0], [700.0], [1e5]])
    spikes = [e.step for e in run(Detector(["x"]), norms) if e.kind == "spike"]
    assert spikes and spikes[0] == 3


def test_a_new_plateau_stops_spiking_in_time():
    norms = np.concatenate([np.full((50, 1), 0.1), np.full((300, 1), 10.0)])
    spikes = [e.step for e in run(Detector(["x"]), norms) if e.kind == "spike"]
    assert spikes and spikes[0] == 50 and spikes[-1] < 200


def test_nan_sounds_at_onset_and_again_every_repeat_steps_while_it_lasts():
    norms = np.full((60, 2), 0.1)
    norms[10:, 0] = np.nan
    nans = [e for e in run(Detector(["a", "b"], SpikeSettings(repeat_every=16)), norms) if e.kind == "nan"]
    assert [e.step for e in nans] == [10, 26, 42, 58]
    assert all(e.voices == ("a",) for e in nans)


def test_inf_and_nan_are_told_apart():
    events = run(Detector(["a", "b"]), np.array([[np.inf, np.nan]]))
    assert {(e.kind, e.voices) for e in events} == {("inf", ("a",)), ("nan", ("b",))}


def test_skipped_step_sounds_skipped_and_not_its_inf():
    norms = np.full((5, 1), 0.1)
    norms[3, 0] = np.inf
    events = run(Detector(["a"]), norms, skipped={3})
    assert [(e.step, e.kind) for e in events] == [(3, "skipped")]


def test_loss_spike_on_a_jump_and_on_non_finite_loss_throttled():
    losses = [2.0 - 0.001 * i for i in range(40)] + [9.0] + [1.96] * 10 + [float("nan")] * 20
    events = run(Detector(["a"]), np.full((len(losses), 1), 0.1), losses=losses)
    loss_steps = [e.step for e in events if e.kind == "loss_spike"]
    assert loss_steps == [40, 51, 67]


def test_nan_and_inf_keep_their_own_alarms_on_one_voice():
    norms = np.full((40, 1), 0.1)
    norms[10:12, 0] = np.nan
    norms[12:30, 0] = np.inf  # NaN, then Inf on the same voice: both onsets sound
    events = [(e.step, e.kind) for e in run(Detector(["a"], SpikeSettings(repeat_every=16)), norms)
              if e.kind in ("nan", "inf")]
    assert events == [(10, "nan"), (12, "inf"), (28, "inf")]
