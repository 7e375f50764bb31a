"""DeepSpeed ZeRO stages 1, 2 and 3: real DeepSpeed on 2 CPU ranks under torchrun (tests/dskit.py).

Every configuration accumulates gradients over 2 micro-steps; fp16 starts from a loss scale that
overflows, so DeepSpeed skips its first steps; bf16 runs as it is. Rank zero's norms are compared
with a single-process fp32 run on the same global batch (exact for fp32; for fp16 and bf16 within
what their arithmetic allows) and, for every precision, with the layer norms of DeepSpeed's own
full gradients (gathered in the test, never by gradmidi).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
from dskit import ACCUMULATE, CONFIGS, ROOT, launch
from jackkit import free_port

import gradmidi

# Looked up, not imported: DeepSpeed runs in the ranks only, never in the pytest process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed: pip install 'gradmidi[deepspeed]'")

NAMES = [name for name, *_ in CONFIGS]
# fp16 and bf16 compute the gradients themselves in fewer bits than the fp32 reference
PRECISION_TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 2e-2, "bf16+fp32": 2e-2}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(2, tmp_path_factory.mktemp("deepspeed"))


def as_float(values):
    return [float(v) for v in values]  # "nan" / "inf" were written as strings


def assert_close(got, expected, rel):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, rel=rel), (got, expected)


def test_rank_zero_norms_equal_deepspeeds_own_full_gradients_in_every_stage_and_precision(results):
    for name in NAMES:
        zero = results[0][name]
        sounded = [as_float(n) for n, skipped in zip(zero["norms"], zero["skipped"], strict=True) if not skipped]
        gathered = [as_float(n) for n, skipped in zip(zero["gathered"], zero["skipped"], strict=True) if not skipped]
        assert len(sounded) >= 2, name
        for got, expected in zip(sounded, gathered, strict=True):
            assert_close(got, expected, 1e-5)


def test_rank_zero_norms_equal_a_single_process_run_on_the_global_batch(results):
    for name, _, precision, *_ in CONFIGS:
        zero = results[0][name]
        pairs = [(as_float(n), r) for n, r, skipped in zip(zero["norms"], zero["reference"], zero["skipped"],
                                                                  strict=True) if not skipped]
        if precision.startswith("bf16"):  # bf16 weights drift from the fp32 reference's after the first update
            pairs = pairs[:1]
        for got, expected in pairs:
            assert_close(got, expected, PRECISION_TOLERANCE[precision])


def test_the_layers_together_make_deepspeeds_own_global_norm(results):
    """engine.get_global_grad_norm() is unscaled by DeepSpeed itself: the loss scale is removed right."""
    for name in NAMES:
        zero = results[0][name]
        for norms, total, skipped in zip(zero["norms"], zero["global_norms"], zero["skipped"], strict=True):
            if not skipped:
                assert math.sqrt(sum(v * v for v in as_float(norms))) == pytest.approx(float(total), rel=1e-5)


def test_fp16_overflow_skipped_steps_are_heard_as_skipped_and_nothing_else(results):
    for name in NAMES:
        zero = results[0][name]
        skipped_steps = [step for step, skipped in enumerate(zero["skipped"]) if skipped]
        if name.endswith("fp16"):
            assert skipped_steps and skipped_steps[0] == 0 and len(skipped_steps) < len(zero["skipped"])
        else:
            assert skipped_steps == []
        assert zero["events"] == [[step, "skipped", []] for step in skipped_steps]


def test_one_all_reduce_of_the_layer_squares_per_optimizer_step_whatever_the_layer_count(results):
    """No gathering: inside son.step() the only collective is one all-reduce of one number per layer;
    the micro-step before each boundary issues nothing."""
    for rank in range(2):
        for name in NAMES:
            run = results[rank][name]
            steps = len(run["skipped"])
            assert run["collectives"] == ([0] * (ACCUMULATE - 1) + [1]) * steps
            assert run["reduced_sizes"] == ([[]] * (ACCUMULATE - 1) + [[run["layers"]]]) * steps
    assert {results[0][name]["layers"] for name in NAMES} == {3, 10}


def test_only_accumulation_boundaries_sound(results):
    for rank in range(2):
        for name in NAMES:
            run = results[rank][name]
            steps = len(run["skipped"])
            assert run["steps"] == steps and run["unsynced_steps"] == steps * (ACCUMULATE - 1)
    assert all(len(results[0][name]["norms"]) == len(results[0][name]["skipped"]) for name in NAMES)


def test_only_rank_zero_sounds_and_layers_are_named_as_written(results):
    assert all(results[0][name]["sounding"] and not results[1][name]["sounding"] for name in NAMES)
    assert results[0]["zero3_fp32"]["voices"] == ["0", "2", "4"]


def test_what_gradmidi_cannot_read_is_refused_in_one_line(results):
    said = results[0]["refusals"]
    assert "ZeRO stages 1, 2 and 3" in said["stage0"] and "SGD" in said["stage0"]  # the engine's optimizer, named
    assert "ZeRO-Offload" in said["offload"]
    assert "managed_gradient_accumulation=false" in said["unmanaged"]
    assert all("\n" not in message for message in said.values())


def test_the_zero3_fp16_example_runs_under_torchrun_on_the_cpu(tmp_path):
    out = tmp_path / "zero.mid"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         str(ROOT / "examples" / "deepspeed_zero.py"), "--out", str(out), "--epochs", "1", "--stage", "3", "--fp16",
         "--batch-size", "64"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 1,797 digits over 2 ranks in micro-batches of 64: 14 micro-steps, every second one a boundary
    assert "7 steps sounded" in result.stdout and "7 micro-steps before a boundary skipped" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["zero.mid"]  # one file: rank zero's
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 7 and [v["name"] for v in summary["voices"]] == ["0", "2", "3"]
    skipped = int(result.stdout.split(" overflow steps")[0].rsplit(" ", 1)[1])
    assert skipped > 0 and summary["events"]["skipped"] == skipped
    assert sum(summary["events"].values()) == skipped  # the overflow is heard as skipped, nothing else


def test_the_transformers_callback_hears_a_trainer_running_zero3(results):
    """Accelerate's backward runs engine.step() before on_pre_optimizer_step: the callback still
    hears every optimizer step, and its layers make the grad_norm the Trainer logs (DeepSpeed's)."""
    zero = results[0]["trainer_zero3"]
    assert results[1]["trainer_zero3"]["steps"] == 3
    assert zero["steps"] == len(zero["norms"]) == len(zero["grad_norms"]) == 3
    assert zero["voices"] == ["encoder", "head"]
    for norms, logged in zip(zero["norms"], zero["grad_norms"], strict=True):
        assert all(v > 0 for v in norms)
        assert math.sqrt(sum(v * v for v in norms)) == pytest.approx(logged, rel=1e-5)


def test_a_fault_in_the_hook_before_the_optimizer_step_is_a_warning_and_the_step_still_runs():
    import torch

    from gradmidi.zero import call_before_step

    weight = torch.nn.Parameter(torch.ones(2))
    weight.grad = torch.ones(2)
    optimizer = torch.optim.SGD([weight], lr=0.5)

    def broken():
        raise RuntimeError("partitions moved")

    call_before_step(optimizer, broken)
    with pytest.warns(RuntimeWarning, match="not sounded: partitions moved"):
        optimizer.step()
    assert weight.tolist() == [0.5, 0.5]
