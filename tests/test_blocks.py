"""The worker takes the steps it holds as one block: the same slots and events as one step at a time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradmidi.clock import Clock
from gradmidi.mapping import Mapping
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import Event, ScoreHeader, StepRecord
from gradmidi.voices import plan_voices

LAYERS = [("a", "Linear"), ("b", "Linear"), ("c", "Conv2d"), ("d", "LayerNorm"), ("e", "Embedding")]


def records(seed: int, n: int, *, nan_at=None, spike_at=(), absent=0.0, losses=True) -> list[StepRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        norms = 10 ** rng.normal(-1, 0.15, len(LAYERS))
        if step in spike_at:
            norms[rng.integers(len(LAYERS))] *= 10 ** rng.uniform(1, 3)
        if nan_at is not None and step >= nan_at:
            norms[:2] = np.nan
        present = rng.random(len(LAYERS)) >= absent
        loss = float(10 ** rng.normal(0, 0.05)) * (50 if step in spike_at else 1) if losses else None
        out.append(StepRecord(step, norms, present, loss, skipped=bool(step % 97 == 50)))
    return out


def builder(every: int = 1, aggregate: str = "max", adaptive: bool = False) -> ScoreBuilder:
    voices, assignment = plan_voices(LAYERS, voices={"ab": ["a", "b"], "c": ["c"], "de": ["d", "e"]})
    mapping = Mapping(adaptive=adaptive, adaptive_warmup=20, adaptive_every=40)
    return ScoreBuilder(ScoreHeader(voices, mapping, Clock(every=every), "t"), assignment, aggregate=aggregate)


def one_by_one(b: ScoreBuilder, recs):
    return [slot for r in recs for slot in b.add_step(r)] + b.finish()


def in_blocks(b: ScoreBuilder, recs, sizes):
    slots, i = [], 0
    for size in sizes:
        slots += b.add_steps(recs[i:i + size])
        i += size
    return slots + b.add_steps(recs[i:]) + b.finish()


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.index, x.first_step, x.steps, x.loss, x.markers) == (y.index, y.first_step, y.steps, y.loss, y.markers)
        np.testing.assert_allclose(x.norms, y.norms, rtol=1e-12)
        np.testing.assert_array_equal(x.pitches, y.pitches)
        np.testing.assert_array_equal(x.velocities, y.velocities)
        np.testing.assert_array_equal(x.present, y.present)
        assert x.log_range == y.log_range
        assert [(e.step, e.kind, e.voices) for e in x.events] == [(e.step, e.kind, e.voices) for e in y.events]


@pytest.mark.parametrize("every, aggregate, adaptive", [(1, "max", False), (4, "rms", False), (3, "last", True)])
def test_a_block_gives_the_same_slots_and_events_as_its_steps_one_by_one(every, aggregate, adaptive):
    recs = records(1, 600, spike_at={40, 41, 300, 451}, nan_at=520)
    expected = one_by_one(builder(every, aggregate, adaptive), recs)
    kinds = {e.kind for slot in expected for e in slot.events}
    assert {"spike", "loss_spike", "nan", "skipped"} <= kinds  # the blocks meet every built-in rule
    assert_same(in_blocks(builder(every, aggregate, adaptive), recs, [1, 7, 300, 33, 2]), expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 80), max_size=8), absent=st.sampled_from([0, 0.1]),
       losses=st.booleans())
def test_any_cut_into_blocks_gives_the_same_score(seed, sizes, absent, losses):
    recs = records(seed, 200, spike_at={30, 150}, absent=absent, losses=losses)
    assert_same(in_blocks(builder(2, "rms"), recs, sizes), one_by_one(builder(2, "rms"), recs))


def test_a_block_with_a_step_out_of_order_is_refused_whole():
    b = builder()
    recs = records(2, 5)
    with pytest.raises(Exception, match="steps must increase"):
        b.add_steps([recs[0], recs[2], recs[1]])


def test_captured_steps_read_as_a_batch_equal_each_read_alone():
    import torch

    from gradmidi.capture import NormCapture, PendingNorms, discover_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3), torch.nn.Linear(3, 2))
    capture = NormCapture(discover_layers(model))
    pendings = []
    for step in range(6):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(5, 4))
        loss = out.square().mean()
        loss.backward()
        if step == 2:
            model[0].weight.grad[0, 0] = float("nan")
        if step == 4:
            model[3].weight.grad = None  # a layer without a gradient this step
            model[3].bias.grad = None
        pendings.append(capture.launch(loss))
    batch = PendingNorms.results(pendings)
    alone = [p.result() for p in pendings]
    for (norms, present, loss), (norms1, present1, loss1) in zip(batch, alone, strict=True):
        np.testing.assert_array_equal(norms, norms1)  # NaN where NaN, bit for bit elsewhere
        np.testing.assert_array_equal(present, present1)
        assert loss == loss1
    assert not batch[4][1][2] and np.isnan(batch[2][0][0])
    # a batch with host losses (no device loss) reads them too
    hosted = [capture.launch(0.5 + i) for i in range(3)]
    assert [loss for _, _, loss in PendingNorms.results(hosted)] == [0.5, 1.5, 2.5]


def general_only(b: ScoreBuilder) -> ScoreBuilder:
    """The builder without its one-step path: every step through the block machinery."""
    b._quick = False
    return b


def detector_state(b: ScoreBuilder) -> list:
    state = []
    for rule in b.detector.rules:
        for name, value in sorted(vars(rule).items()):
            if hasattr(value, "mean"):  # a ZScore: its statistics, bit for bit
                state += [name, value.mean.tolist(), value.var.tolist(), value.count.tolist(), value._settled]
            elif name.startswith("_"):
                state += [name, value]
    return state


@pytest.mark.parametrize("every, aggregate, velocity", [(1, "max", 80), (1, "rms", "norm"), (4, "last", 80)])
def test_the_one_step_path_gives_the_general_paths_slots_and_state_bit_for_bit(every, aggregate, velocity):
    """A live run's steps arrive one at a time and mostly take the scalar one-step path; its slots, and every
    rule's state after them, equal the general path's exactly, through spikes, NaNs, skips and absent layers."""
    recs = records(3, 700, spike_at={40, 41, 300, 451}, nan_at=620, absent=0.01)
    if aggregate == "last":  # as a Sonifier samples: only each slot's last step is captured
        recs = [r for r in recs if r.step % every == every - 1]

    def make():
        voices, assignment = plan_voices(LAYERS, voices={"ab": ["a", "b"], "c": ["c"], "de": ["d", "e"]})
        header = ScoreHeader(voices, Mapping(velocity=velocity), Clock(every=every), "t")
        return ScoreBuilder(header, assignment, aggregate=aggregate)

    quick, general = make(), general_only(make())
    got, expected = one_by_one(quick, recs), one_by_one(general, recs)
    for x, y in zip(got, expected, strict=True):
        assert (x.index, x.first_step, x.steps, x.loss, x.markers, x.log_range) == \
            (y.index, y.first_step, y.steps, y.loss, y.markers, y.log_range)
        np.testing.assert_array_equal(x.norms, y.norms)  # bit for bit, NaN where NaN
        for field in ("pitches", "velocities", "present"):
            assert getattr(x, field).tolist() == getattr(y, field).tolist()
            assert getattr(x, field).dtype == getattr(y, field).dtype
        assert [(e.step, e.kind, e.voices, e.value) for e in x.events] == \
            [(e.step, e.kind, e.voices, e.value) for e in y.events]
    assert detector_state(quick) == detector_state(general)
    # and the path was really taken: most steps are plain ones, alone in their slot (every one with every=1)
    slots_of_one = sum(1 for r in recs if r.step % every == every - 1)
    assert general.quick_slots == 0 and quick.quick_slots > 0.7 * slots_of_one
    kinds = {e.kind for slot in expected for e in slot.events}
    assert {"spike", "nan", "skipped"} <= kinds


def test_the_one_step_path_leaves_every_odd_step_to_the_general_path():
    """A step it cannot take (zero, huge, absent or non-finite norms, a skip, a marker's slot, an adaptive
    range, a user's rule without ``quiet``) is built by the general path, with nothing changed before."""
    from gradmidi import events
    from gradmidi.events import EventKind

    def steps(b, recs):
        return [s for r in recs for s in b.add_step(r)]

    base = records(4, 40, losses=True)
    odd = {12: dict(norms=np.r_[0.0, base[12].norms[1:]]), 13: dict(norms=np.r_[1e200, base[13].norms[1:]]),
           14: dict(present=np.r_[False, base[14].present[1:]]), 15: dict(norms=np.r_[np.inf, base[15].norms[1:]]),
           16: dict(skipped=True), 17: dict(loss=float("nan")), 18: dict(norms=base[18].norms.astype(np.float32))}
    recs = [StepRecord(r.step, **{"norms": r.norms, "present": np.ones(5, bool), "loss": r.loss,
                                  "skipped": False, **odd.get(r.step, {})}) for r in base]
    b = builder()
    before = b.quick_slots
    steps(b, recs[:12])
    taken = b.quick_slots
    steps(b, recs[12:19])
    assert b.quick_slots == taken  # none of the odd steps
    b.add_marker(19, "epoch 1")
    steps(b, recs[19:20])
    assert b.quick_slots == taken  # the marker's slot
    steps(b, recs[20:])
    assert taken > before and b.quick_slots > taken  # plain steps again
    adaptive = builder(adaptive=True)
    assert len(steps(adaptive, recs)) == len(recs) and adaptive.quick_slots == 0
    events.register(EventKind("always", 75, "#123456", "always", "Claves: a test's rule.",
                              lambda names, settings: lambda values: []))
    try:
        b = builder()
        steps(b, recs)
        assert b.quick_slots == 0
    finally:
        events.unregister("always")


def test_a_users_rule_with_quiet_keeps_the_one_step_path_and_sees_every_step():
    """The README's extension point: a rule that says when a step is quiet for it keeps live steps on the
    one-step path; its state changes on those steps and it is called on the others."""
    from gradmidi import events
    from gradmidi.events import EventKind

    class LossHigh:
        def __init__(self, names, settings):
            self.quiet_steps, self.called = [], []

        def __call__(self, values):
            self.called.append(values.step)
            return [Event(values.step, "loss_high", (), values.loss)] if values.loss and values.loss > 2 else []

        def quiet(self, values):
            if values.loss is not None and values.loss > 2:
                return None  # it sounds: the general path takes the step
            return lambda: self.quiet_steps.append(values.step)

    recs = [StepRecord(r.step, r.norms, np.ones(5, bool), 3.0 if r.step == 30 else r.loss) for r in records(5, 40)]
    events.register(EventKind("loss_high", 75, "#123456", "loss high", "Claves: a test's rule.", LossHigh))
    try:
        b = builder()
        slots = [s for r in recs for s in b.add_step(r)]
    finally:
        events.unregister("loss_high")
    rule = next(r for r in b.detector.rules if isinstance(r, LossHigh))
    assert b.quick_slots == len(rule.quiet_steps) > 20
    assert sorted(rule.quiet_steps + rule.called) == list(range(40))  # every step seen once, one way or the other
    assert 30 in rule.called and [e.kind for e in slots[30].events].count("loss_high") == 1
