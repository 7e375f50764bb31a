"""Tensor and pipeline parallelism: a real gloo process group of 4 CPU processes (tests/parallelkit.py).

Rank zero's norms are compared with a single-process run of the same model on the same global
batch, and the collectives each ``son.step()`` issues are counted on every rank.
"""

from __future__ import annotations

import pytest

import gradmidi
from parallelkit import STEPS, WORLD, launch

BLOCK = ["attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm", "w1", "w2",
         "norm", "output"]
STACK = ["inp", "layers.0", "layers.1", "layers.2", "layers.3", "out"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    return out, launch(out)


def assert_norms_equal_the_single_process_run(zero: dict) -> None:
    assert len(zero["norms"]) == len(zero["reference"]) == STEPS
    for got, expected in zip(zero["norms"], zero["reference"], strict=True):
        assert got == pytest.approx(expected, rel=1e-5, abs=0), (got, expected)


def test_fsdp2_with_tensor_parallelism_on_a_2x2_mesh_equals_a_single_process_run(run):
    _, results = run
    zero = results[0]["fsdp_tp"]
    assert zero["voices"] == BLOCK
    assert_norms_equal_the_single_process_run(zero)
    # the sequence-parallel norms' gradients, replicated over tp: counted once, not twice
    assert set(map(tuple, zero["norm_grad_placements"].values())) == {("S(0)", "R")}


def test_hsdp_with_tensor_parallelism_on_a_3d_mesh_sums_over_its_shard_and_tp_dimensions(run):
    _, results = run
    zero = results[0]["hsdp_tp"]
    assert set(map(tuple, zero["norm_grad_placements"].values())) == {("R", "S(0)", "R")}
    assert_norms_equal_the_single_process_run(zero)


def test_sequence_parallel_norms_with_partial_gradients_are_summed_before_they_are_squared(run):
    _, results = run
    zero = results[0]["tp"]
    assert set(map(tuple, zero["norm_grad_placements"].values())) == {("P(sum)",)}  # tensor parallel alone
    assert_norms_equal_the_single_process_run(zero)
    assert zero["losses"] == pytest.approx(zero["reference_losses"], rel=1e-5)  # every rank sees the whole batch


def test_partial_gradients_in_a_pipeline_stage_are_left_out_with_a_warning(run):
    _, results = run
    zero = results[0]["tp"]
    norm_layers = [i for i, name in enumerate(BLOCK) if name.endswith("norm")]
    assert zero["stage_norms"] == pytest.approx([0.0 if i in norm_layers else v
                                                 for i, v in enumerate(zero["reference"][0])], rel=1e-5, abs=0)
    [warning] = zero["stage_warnings"]
    assert "attention_norm, ffn_norm, norm have Partial (unreduced) gradients" in warning


def test_every_pipeline_stage_reaches_rank_zero_with_the_last_stage_loss(run):
    out, results = run
    assert [results[rank]["pipeline"]["stage"] for rank in range(WORLD)] == [0, 0, 1, 1]  # rank 0: stage 0 only
    zero = results[0]["pipeline"]
    assert zero["voices"] == STACK
    assert_norms_equal_the_single_process_run(zero)  # data-parallel replicas of a stage counted once
    # the mean of the losses the last stage's ranks gave (each its share of the batch)
    assert zero["losses"] == pytest.approx(zero["reference_losses"], rel=1e-5)
    assert [results[rank]["pipeline"]["sounding"] for rank in range(WORLD)] == [True, False, False, False]
    summary = gradmidi.read_score(out / "pipeline-rank0.mid").summary()
    assert summary["steps"] == STEPS and [v["name"] for v in summary["voices"]] == STACK
    assert not (out / "pipeline-rank2.mid").exists()


def test_a_stage_given_with_something_else_is_refused_in_one_line(run):
    _, results = run
    refused = results[0]["pipeline"]["refused"]
    assert refused.startswith("give the Sonifier this rank's pipeline stages only") and "\n" not in refused


def test_stages_built_as_separate_modules_are_told_apart_by_their_stage(run):
    _, results = run
    zero = results[0]["separate"]
    assert zero["voices"] == ["stage0.0", "stage0.2", "stage0.4", "stage1.0", "stage1.2", "stage1.4"]
    # two plain pipelines side by side, each on the whole batch: each layer counted once, not twice
    assert_norms_equal_the_single_process_run(zero)


def test_one_collective_per_step_on_every_rank(run):
    _, results = run
    for rank in range(WORLD):
        for name in ("pipeline", "separate", "fsdp_tp", "hsdp_tp", "tp"):
            assert results[rank][name]["collectives"] == [1] * STEPS, (rank, name)
            assert results[rank][name]["steps"] == STEPS
