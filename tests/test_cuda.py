"""The CUDA hot path: no host sync on the training thread, norms equal torch's.

Runs only where a CUDA device is present (it skips cleanly elsewhere); the CPU suite pins the
same property with a TorchDispatchMode in test_hot_path.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gradmidi

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_step_raises_nothing_under_sync_debug_mode_error_and_hears_torchs_norms(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64).half(), nn.Linear(64, 10).bfloat16())
    model = model.cuda()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    expected = [float(torch.linalg.vector_norm(torch.cat([p.grad.float().flatten() for p in m.parameters()])))
                for m in (model[0], model[2], model[3])]
    recorded = []

    class Recorder(gradmidi.Sink):
        def emit(self, slot):
            recorded.append(slot.norms.copy())

    loss = torch.tensor(2.5, device="cuda")
    with gradmidi.Sonifier(model, tmp_path / "cuda.mid", sinks=[Recorder()]) as son:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                son.step(loss=loss)  # any host sync here raises
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len(recorded) == 5
    torch.testing.assert_close(torch.tensor(recorded[-1]), torch.tensor(expected, dtype=torch.float64), rtol=1e-5,
                               atol=0)
