"""Layers frozen at the start and unfrozen later (gradual unfreezing) are heard from the step they
get gradients; a score with nothing in it is said on close."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi

UNFREEZE_AT = 50
STEPS = 80


def frozen_body_model() -> nn.Module:
    """A body frozen at the start and a head that trains from step 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))
    for layer in (model[0], model[2]):
        layer.requires_grad_(False)
    return model


def train_unfreezing(son: gradmidi.Sonifier, model: nn.Module) -> list[np.ndarray]:
    """Trains STEPS steps, unfreezing the body at UNFREEZE_AT; returns each step's true norms per layer."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # frozen parameters get no gradient, so SGD skips them
    truth = []
    for step in range(STEPS):
        if step == UNFREEZE_AT:
            for layer in (model[0], model[2]):
                layer.requires_grad_(True)
        opt.zero_grad()
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        son.step(loss=loss)
        truth.append(np.array([float(m.weight.grad.norm() ** 2 + m.bias.grad.norm() ** 2) ** 0.5
                               if m.weight.grad is not None else np.nan for m in (model[0], model[2], model[4])]))
        opt.step()
    return truth


def test_a_layer_unfrozen_at_step_50_sounds_from_step_50(tmp_path):
    model = frozen_body_model()
    path = tmp_path / "unfreeze.mid"
    with gradmidi.Sonifier(model, path) as son:
        truth = train_unfreezing(son, model)
    score = gradmidi.read_score(path)
    names = [v.name for v in score.header.voices]
    assert names == ["0", "2", "4"]  # the frozen layers have voices from the start
    heard: dict[str, dict[int, float]] = {name: {} for name in names}
    for step, voice, norm in score.decode():
        heard[voice][step] = norm
    for name in ("0", "2"):
        assert sorted(heard[name]) == list(range(UNFREEZE_AT, STEPS))  # silent while frozen, then every step
    assert sorted(heard["4"]) == list(range(STEPS))
    tolerance = 1.5 * 0.1 + 1e-9  # half the widest gap of the scale (3 semitones), at 0.1 decade a semitone
    for i, name in enumerate(names):
        for step, norm in heard[name].items():
            assert abs(np.log10(norm) - np.log10(truth[step][i])) <= tolerance


def test_frozen_layers_are_captured_so_the_header_lists_them():
    son = gradmidi.Sonifier(frozen_body_model(), None)
    son.close()
    assert son.header.info["layers"] == ["0", "2", "4"]
    assert son.header.info["layer_voices"] == [0, 1, 2]


def test_closing_a_score_that_holds_no_notes_warns_where_to_call_step(tmp_path):
    model = frozen_body_model()
    with pytest.warns(UserWarning, match=r"holds no notes.*son\.step\(\) after loss\.backward\(\)"):
        with gradmidi.Sonifier(model, tmp_path / "empty.mid"):
            pass  # the loop never called step()


def test_closing_a_score_with_notes_warns_nothing(tmp_path):
    model = frozen_body_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gradmidi.Sonifier(model, tmp_path / "run.mid") as son:
            model(torch.randn(4, 6)).sum().backward()
            son.step()
