"""A step captured after every gradient was scaled by a known factor (clipping) sounds the norms from before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi
from scorekit import Recorder


@pytest.mark.parametrize("as_tensor", [True, False], ids=["device tensor", "number"])
def test_unscale_gives_back_the_norms_clipping_scaled_down(as_tensor):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    recorder = Recorder()
    raw = []
    with gradmidi.Sonifier(model, None, sinks=[recorder]) as son:
        for _ in range(3):
            model.zero_grad()
            model(torch.randn(8, 6)).pow(2).mean().backward()
            raw.append([float(torch.cat([p.grad.flatten() for p in model[i].parameters()]).norm()) for i in (0, 2)])
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # as the Trainer does, before its hook
            factor = torch.clamp(0.01 / (total + 1e-6), max=1.0)
            captured = son.capture()
            captured.unscale(factor if as_tensor else float(factor))
            captured.sound(1.0)
    heard = np.array([slot.norms for slot in recorder.slots])
    assert np.sqrt((heard**2).sum(axis=1)).min() > 0.01 * 10  # far above what clipping left
    np.testing.assert_allclose(heard, raw, rtol=1e-5)
