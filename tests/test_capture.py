"""NormCapture: per-layer L2 gradient norms, compared with torch.linalg.vector_norm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradmidi
from gradmidi.capture import NormCapture, PendingNorms, discover_layers


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def capture(model, loss=None, include_frozen=False):
    layers = discover_layers(model, include_frozen=include_frozen)
    norms, present, got_loss = NormCapture(layers).launch(loss).result()
    return layers, norms, present, got_loss


def reference_norm(layer, dtype=None) -> float:
    """vector_norm of the concatenation of the layer's parameter gradients (nan if none have one)."""
    grads = []
    for p in layer.params:
        if p.grad is None:
            continue
        g = p.grad.to_dense() if p.grad.is_sparse else p.grad
        grads.append(g.reshape(-1).to(dtype or g.dtype))
    if not grads:
        return math.nan
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def assert_matches_reference(layers, norms, present, rel=1e-5, dtype=None):
    assert len(norms) == len(layers) == len(present)
    for layer, norm, here in zip(layers, norms, present):
        expected = reference_norm(layer, dtype)
        assert here == any(p.grad is not None for p in layer.params), layer.name
        if math.isnan(expected):
            assert math.isnan(norm), layer.name
        elif math.isinf(expected):
            assert norm == expected, layer.name
        else:
            assert norm == pytest.approx(expected, rel=rel, abs=1e-12), layer.name


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def cnn_with_grads():
    model = SmallCNN()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return model, loss


def test_small_cnn_norms_equal_vector_norm_of_concatenated_grads():
    model, loss = cnn_with_grads()
    layers, norms, present, _ = capture(model, loss)
    assert [layer.name for layer in layers] == ["features.0", "features.1", "features.3", "head"]
    assert present.all()
    assert np.isfinite(norms).all() and (norms > 0).all()
    assert_matches_reference(layers, norms, present)


def test_nan_in_one_grad_makes_only_that_layer_nan():
    model, loss = cnn_with_grads()
    model.features[3].weight.grad[0, 0, 0, 0] = float("nan")
    layers, norms, present, _ = capture(model, loss)
    names = [layer.name for layer in layers]
    bad = names.index("features.3")
    assert math.isnan(norms[bad])
    others = np.delete(norms, bad)
    assert np.isfinite(others).all()
    assert present.all()
    assert_matches_reference(layers, norms, present)


def test_inf_in_one_grad_makes_that_layer_inf():
    model, loss = cnn_with_grads()
    model.head.bias.grad[3] = float("inf")
    layers, norms, present, _ = capture(model, loss)
    names = [layer.name for layer in layers]
    bad = names.index("head")
    assert norms[bad] == math.inf
    assert np.isfinite(np.delete(norms, bad)).all()
    assert_matches_reference(layers, norms, present)


def test_negative_inf_grad_gives_positive_inf_norm():
    model, loss = cnn_with_grads()
    model.head.weight.grad[0, 0] = float("-inf")
    layers, norms, _, _ = capture(model, loss)
    assert norms[[layer.name for layer in layers].index("head")] == math.inf


def test_capture_never_raises_on_nan_and_inf_everywhere():
    model, loss = cnn_with_grads()
    for i, p in enumerate(model.parameters()):
        p.grad.fill_(float("nan") if i % 2 else float("inf"))
    layers, norms, present, got_loss = capture(model, torch.tensor(float("nan")))
    assert present.all()
    assert not np.isfinite(norms).any()
    assert math.isnan(got_loss)


def test_frozen_layer_is_not_discovered_by_default():
    model, _ = cnn_with_grads()
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    names = [layer.name for layer in discover_layers(model)]
    assert "features.0" not in names
    assert names == ["features.1", "features.3", "head"]


def test_frozen_layer_with_include_frozen_is_absent_and_nan():
    model = SmallCNN()
    for p in model.features[0].parameters():
        p.requires_grad_(False)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    layers, norms, present, _ = capture(model, include_frozen=True)
    names = [layer.name for layer in layers]
    frozen = names.index("features.0")
    assert not present[frozen]
    assert math.isnan(norms[frozen])
    assert present[np.arange(len(layers)) != frozen].all()
    assert_matches_reference(layers, norms, present)


def test_layer_without_grad_this_step_is_absent():
    model, loss = cnn_with_grads()
    model.features[1].weight.grad = None
    model.features[1].bias.grad = None
    layers, norms, present, _ = capture(model, loss)
    names = [layer.name for layer in layers]
    gone = names.index("features.1")
    assert not present[gone]
    assert math.isnan(norms[gone])
    assert np.isfinite(np.delete(norms, gone)).all()
    assert_matches_reference(layers, norms, present)


def test_layer_with_some_param_grads_missing_uses_the_rest():
    model, loss = cnn_with_grads()
    model.head.bias.grad = None
    layers, norms, present, _ = capture(model, loss)
    head = [layer.name for layer in layers].index("head")
    assert present[head]
    assert norms[head] == pytest.approx(float(torch.linalg.vector_norm(model.head.weight.grad)), rel=1e-5)


def test_presence_pattern_changes_between_steps_of_one_capture():
    model, loss = cnn_with_grads()
    layers = discover_layers(model)
    cap = NormCapture(layers)
    first = cap.launch(loss).result()[0]
    saved = model.head.weight.grad
    model.head.weight.grad, model.head.bias.grad = None, None
    second_norms, second_present, _ = cap.launch(loss).result()
    assert not second_present[-1] and math.isnan(second_norms[-1])
    np.testing.assert_allclose(second_norms[:-1], first[:-1], rtol=1e-12)
    model.head.weight.grad = saved * 2
    model.head.bias.grad = torch.zeros_like(model.head.bias)
    third_norms, third_present, _ = cap.launch(loss).result()
    assert third_present.all()
    assert third_norms[-1] == pytest.approx(2 * float(torch.linalg.vector_norm(saved)), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_norms_match_float32_vector_norm(dtype):
    model = SmallCNN().to(dtype)
    loss = model(torch.randn(4, 3, 8, 8, dtype=dtype)).float().pow(2).mean()
    loss.backward()
    for p in model.parameters():
        assert p.grad.dtype == dtype
    layers, norms, present, got_loss = capture(model, loss)
    assert present.all() and np.isfinite(norms).all()
    assert_matches_reference(layers, norms, present, rel=1e-2, dtype=torch.float32)
    assert got_loss == loss.item()


def test_fp16_grads_whose_fp16_norm_would_overflow_stay_finite():
    # 400 entries of 60000: the norm (1.2e6) is far beyond fp16's max (65504).
    layer = nn.Linear(20, 20, bias=False).half()
    layer.weight.grad = torch.full((20, 20), 60000.0, dtype=torch.float16)
    layers, norms, present, _ = capture(layer)
    expected = float(torch.linalg.vector_norm(layer.weight.grad.float()))
    assert math.isfinite(norms[0])
    assert norms[0] == pytest.approx(expected, rel=1e-2)


def test_model_with_more_than_200_parameter_tensors():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(120)])
    assert len(list(model.parameters())) == 240
    x = torch.randn(3, 4)
    loss = (model(x) ** 2).sum()
    loss.backward()
    layers, norms, present, _ = capture(model, loss)
    assert len(layers) == 120
    assert [layer.name for layer in layers] == [str(i) for i in range(120)]
    assert present.all()
    assert_matches_reference(layers, norms, present)


def test_sparse_embedding_grad_with_repeated_indices_equals_dense_norm():
    torch.manual_seed(1)
    emb = nn.Embedding(10, 3, sparse=True)
    idx = torch.tensor([1, 1, 4, 4, 4, 7, 1])
    (emb(idx) * torch.randn(7, 3)).sum().backward()
    grad = emb.weight.grad
    assert grad.is_sparse and not grad.is_coalesced()
    dense = float(torch.linalg.vector_norm(grad.to_dense()))
    naive = float(torch.linalg.vector_norm(grad._values()))  # what forgetting to coalesce would give
    assert not math.isclose(dense, naive, rel_tol=1e-3)
    layers, norms, present, _ = capture(emb)
    assert present.all()
    assert norms[0] == pytest.approx(dense, rel=1e-5)


def test_loss_tensor_comes_back_as_float_equal_to_item():
    model, loss = cnn_with_grads()
    _, _, _, got = capture(model, loss)
    assert isinstance(got, float)
    assert got == loss.item()


def test_loss_as_python_float_and_none():
    model, _ = cnn_with_grads()
    assert capture(model, 1.25)[3] == 1.25
    assert capture(model, None)[3] is None


def test_loss_without_grads_anywhere():
    model = SmallCNN()
    layers, norms, present, got = capture(model, torch.tensor(0.5))
    assert not present.any()
    assert np.isnan(norms).all()
    assert got == 0.5


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight  # tied: (10, 4) both ways

    def forward(self, idx):
        return self.head(self.mid(self.embed(idx)))


def test_weight_tying_counts_shared_parameter_only_at_first_owner():
    model = Tied()
    loss = nn.functional.cross_entropy(model(torch.tensor([1, 2, 3])), torch.tensor([3, 2, 1]))
    loss.backward()
    layers, norms, present, _ = capture(model, loss)
    by_name = {layer.name: layer for layer in layers}
    assert list(by_name) == ["embed", "mid", "head"]
    assert by_name["embed"].params == (model.embed.weight,)
    assert by_name["head"].params == (model.head.bias,)
    all_params = [p for layer in layers for p in layer.params]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))
    values = dict(zip(by_name, norms))
    assert values["embed"] == pytest.approx(float(torch.linalg.vector_norm(model.embed.weight.grad)), rel=1e-5)
    assert values["head"] == pytest.approx(float(torch.linalg.vector_norm(model.head.bias.grad)), rel=1e-5)
    assert_matches_reference(layers, norms, present)


def test_root_module_with_own_parameters_is_a_layer_named_empty():
    layer = nn.Linear(3, 2)
    layer(torch.randn(5, 3)).sum().backward()
    layers, norms, present, _ = capture(layer)
    assert [(lay.name, lay.class_name) for lay in layers] == [("", "Linear")]
    assert_matches_reference(layers, norms, present)


def _general(monkeypatch):
    """Captures with the per-layer sums on the device (the path of several devices, dtypes or shards)."""
    monkeypatch.setattr(NormCapture, "_segments", lambda *args: None)


@pytest.mark.parametrize("loss_dtype", [torch.float32, torch.float64, torch.bfloat16, None])
def test_the_usual_steps_per_tensor_norms_give_the_general_paths_norms_bit_for_bit(monkeypatch, loss_dtype):
    model, loss = cnn_with_grads()
    given = None if loss_dtype is None else loss.detach().to(loss_dtype)
    patterns = [(), ("head.bias",), ("features.1.weight", "features.1.bias"), ("features.0.weight",)]

    def steps(cap):
        out = []
        saved = {name: p.grad for name, p in model.named_parameters()}
        for gone in patterns:  # layers absent, a layer with one of its tensors absent, each in turn
            for name, p in model.named_parameters():
                p.grad = None if name in gone else saved[name]
            out.append(cap.launch(given))
        for name, p in model.named_parameters():
            p.grad = saved[name]
        return out

    usual = steps(NormCapture(discover_layers(model)))
    taken = loss_dtype != torch.float64  # a float64 loss would lose digits in the float32 stack
    assert all((p._parts[0].segments is not None) == taken for p in usual)
    with monkeypatch.context() as patched:
        _general(patched)
        general = steps(NormCapture(discover_layers(model)))
    assert all(p._parts[0].segments is None for p in general)
    for ours, theirs in zip(usual, general, strict=True):
        (norms, present, got), (want, want_present, want_loss) = ours.result(), theirs.result()
        np.testing.assert_array_equal(norms, want)
        np.testing.assert_array_equal(present, want_present)
        assert got == want_loss
    # read as one batch: steps of one presence pattern as a matrix, any mix one by one, the same values
    for batch in (usual, usual[:1] * 3, [usual[0], usual[0]]):
        for (norms, present, got), one in zip(PendingNorms.results(batch), batch, strict=True):
            want, want_present, want_loss = one.result()
            np.testing.assert_array_equal(norms, want)
            np.testing.assert_array_equal(present, want_present)
            assert got == want_loss


def test_gradients_of_two_dtypes_take_the_general_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).double())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    pending = NormCapture(discover_layers(model)).launch(torch.tensor(2.0))
    assert all(part.segments is None for part in pending._parts)
    norms, present, loss = pending.result()
    np.testing.assert_allclose(norms, [math.sqrt(20)] * 2)
    assert present.all() and loss == 2.0


def test_float64_gradients_are_normed_in_float64(tmp_path):
    model = SmallCNN().double()
    loss = model(torch.randn(4, 3, 8, 8, dtype=torch.float64)).pow(2).mean()
    loss.backward()
    layers, norms, present, got = capture(model, loss)
    assert_matches_reference(layers, norms, present, rel=1e-12)  # float32 norms would be off by ~1e-7
    assert got == loss.item()
    with gradmidi.Sonifier(model, tmp_path / "double.mid") as son:  # a double-precision model trains and is heard
        for _ in range(3):
            son.step(loss=loss)
    assert gradmidi.read_score(tmp_path / "double.mid").summary()["steps"] == 3
