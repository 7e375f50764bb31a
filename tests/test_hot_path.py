"""The training step is sacred: a fixed handful of fused ops per step, and no host read.

Every torch op that ``son.step`` dispatches is recorded with a TorchDispatchMode (the real
dispatcher, on the CPU). A host sync on any device goes through ``aten._local_scalar_dense``
(``.item()``, ``float(t)``, ``bool(t)``) or a device-to-host copy that is waited on; neither may appear, and
the number of ops must not grow with the number of layers.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import gradmidi


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(n_layers: int, dtype=torch.float32, loss_dtype=torch.float32) -> Counter[str]:
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(n_layers)]).to(dtype)
    with gradmidi.Sonifier(model, None, max_voices=15) as son:
        model(torch.randn(4, 8, dtype=dtype)).float().pow(2).mean().backward()
        loss = torch.tensor(1.5, dtype=loss_dtype)
        son.step(loss=loss)  # first step builds and caches the plan (index tensors)
        recorder = OpRecorder()
        with recorder:
            son.step(loss=loss)
    return recorder.ops


def test_step_dispatches_no_host_read():
    ops = _ops_per_step(40)
    assert "_local_scalar_dense" not in ops
    assert "item" not in ops


def test_step_cost_does_not_grow_with_the_number_of_layers():
    few, many = _ops_per_step(3), _ops_per_step(300)
    assert few == many, (few, many)
    # the usual step: the fused norms and one stack, the loss riding along (and the loss's detach)
    assert many == Counter({"_foreach_norm": 1, "stack": 1, "detach": 2}), many
    assert _ops_per_step(3, torch.bfloat16) == many  # half-precision gradients: their norms are float32 all the same


def test_a_loss_of_another_dtype_takes_the_general_path_still_without_a_host_read():
    few, many = _ops_per_step(3, loss_dtype=torch.float64), _ops_per_step(300, loss_dtype=torch.float64)
    assert few == many, (few, many)
    assert sum(many.values()) <= 12  # zeros, norm, stack, cast, square, index_add, loss write, copy
    assert many["_foreach_norm"] == 1 and "_local_scalar_dense" not in many


def test_one_fused_norm_per_dtype_group():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16), nn.Linear(8, 8).half())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with gradmidi.Sonifier(model, None) as son:
        son.step()
        recorder = OpRecorder()
        with recorder:
            son.step()
    assert recorder.ops["_foreach_norm"] == 3
    assert "_local_scalar_dense" not in recorder.ops


def test_aggregate_last_captures_one_step_in_every_and_sounds_it(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    recorder = OpRecorder()
    with gradmidi.Sonifier(model, tmp_path / "last.mid", every=4, aggregate="last") as son:
        for step in range(12):
            for p in model.parameters():
                p.grad = torch.full_like(p, 10.0 ** (step / 4 - 2))  # a different norm every step
            with recorder:
                son.step()
    assert recorder.ops["_foreach_norm"] == 3  # steps 3, 7 and 11 only: a quarter of the cost
    score = gradmidi.read_score(tmp_path / "last.mid")
    sounded = [norm for _, name, norm in score.decode() if name == "0"]
    expected = [float(torch.full((8 * 8 + 8,), 10.0 ** (s / 4 - 2)).norm()) for s in (3, 7, 11)]
    assert len(sounded) == 3
    for heard, value in zip(sounded, expected):  # within half a scale step (at most 0.15 decades)
        assert abs(torch.tensor(heard / value).log10()) <= 0.15
