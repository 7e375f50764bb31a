"""Distributed training: real gloo process groups of 2 and 4 CPU processes (tests/distkit.py).

Each rank runs user code that is the same on every rank; rank zero's norms are compared with
a single-process run of the same model on the same global batch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import gradmidi
from distkit import launch

SCENARIOS = ("ddp", "fsdp2")


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"world{request.param}")
    return request.param, out, launch(request.param, out)


def as_float(values):
    return [float(v) for v in values]  # "nan" / "inf" were written as strings


def assert_close(got, expected, rel=1e-5):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=rel), (got, expected)


def scenarios(world):
    return SCENARIOS + (("fsdp2_deep",) if world == 2 else ("hsdp",))


def test_rank_zero_norms_equal_a_single_process_run_on_the_global_batch(run):
    world, _, results = run
    for name in scenarios(world):
        zero = results[0][name]
        *clean, last = zero["norms"]
        assert len(clean) == len(zero["reference"]) - 1 and len(clean) >= 2
        for got, expected in zip(clean, zero["reference"]):
            assert_close(as_float(got), expected)
        if name != "ddp":  # FSDP2: the layers nobody poisoned are still exact on the last step
            assert_close(as_float(last)[2:], zero["reference"][-1][2:])


def test_layer_names_carry_no_wrapper_prefix(run):
    world, _, results = run
    for name in scenarios(world):
        voices = results[0][name]["voices"]
        assert voices[:3] == ["0", "2", "4"]


def test_a_nan_in_one_ranks_shard_reaches_rank_zero_as_a_nan_event(run):
    world, _, results = run
    ddp = results[0]["ddp"]
    last_step = ddp["steps"] - 1
    assert all(math.isnan(v) for v in as_float(ddp["norms"][-1]))  # through DDP's own all-reduce
    assert [last_step, "nan", ["0", "2", "4"]] in ddp["events"]
    for name in scenarios(world)[1:]:
        zero = results[0][name]
        assert all(size > 0 for size in results[1][name]["poisoned_shards"])  # rank one really held them
        norms = as_float(zero["norms"][-1])
        assert math.isnan(norms[1]) and norms[0] == math.inf and all(map(math.isfinite, norms[2:]))
        last_step = zero["steps"] - 1
        assert [last_step, "nan", ["2"]] in zero["events"]
        assert [last_step, "inf", ["0"]] in zero["events"]


def test_gradmidi_issues_one_collective_per_fsdp2_step_whatever_the_layer_count_and_none_under_ddp(run):
    world, _, results = run
    for rank in range(world):
        assert results[rank]["ddp"]["collectives"] == [0] * 5
        # the no-sync micro-step (the second call) issues nothing
        assert results[rank]["fsdp2"]["collectives"] == [1, 0, 1, 1, 1]
        if world == 2:  # 10 layers instead of 3: still one
            assert results[rank]["fsdp2_deep"]["collectives"] == [1, 1, 1]
        else:
            assert results[rank]["hsdp"]["collectives"] == [1, 1, 1]


def test_no_sync_micro_steps_are_counted_not_sounded(run):
    world, _, results = run
    for rank in range(world):
        for name in ("ddp", "fsdp2"):
            assert results[rank][name]["unsynced_steps"] == 1
            assert results[rank][name]["steps"] == 4
    assert len(results[0]["ddp"]["norms"]) == 4


def test_only_rank_zero_sounds_and_writes_its_file(run):
    world, out, results = run
    assert [results[rank]["ddp"]["sounding"] for rank in range(world)] == [True] + [False] * (world - 1)
    names = scenarios(world)
    assert sorted(p.name for p in out.glob("*.mid")) == sorted(f"{name}-rank0.mid" for name in names)
    summary = gradmidi.read_score(out / "ddp-rank0.mid").summary()
    assert summary["steps"] == 4
    assert [v["name"] for v in summary["voices"]] == ["0", "2", "4"]
    assert summary["events"]["nan"] == 1


def test_fsdp1_is_refused_with_a_one_line_error(tmp_path):
    """FSDP1 needs an accelerator to be built. Without one, an instance is made without its
    __init__ (the only stand-in in this file): the refusal depends on the class alone."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    inner = nn.Sequential(nn.Linear(2, 2))
    if torch.cuda.is_available():
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        try:
            model = FullyShardedDataParallel(inner.cuda(), use_orig_params=True)
            with pytest.raises(gradmidi.GradmidiError, match="FSDP1") as err:
                gradmidi.Sonifier(model, None)
        finally:
            dist.destroy_process_group()
    else:
        model = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
        nn.Module.__init__(model)
        model._modules["_fsdp_wrapped_module"] = inner
        with pytest.raises(gradmidi.GradmidiError, match="FSDP1") as err:
            gradmidi.Sonifier(model, None)
    assert "\n" not in str(err.value) and "fully_shard" in str(err.value)
