"""Layers -> voices: one channel per voice, grouping past 15, patterns and program overrides."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradmidi import GM_PROGRAMS, GradmidiError
from gradmidi.clock import Clock
from gradmidi.instruments import DRUM_CHANNEL
from gradmidi.mapping import Mapping
from gradmidi.pipeline import ScoreBuilder
from gradmidi.score import ScoreHeader
from gradmidi.voices import MAX_VOICES, plan_voices


def check_table(table, assignment, n_layers, names=None):
    """Invariants of every plan: channels unique and never the drum channel, indices in order."""
    assert 1 <= len(table) <= MAX_VOICES
    channels = [v.channel for v in table]
    assert len(set(channels)) == len(channels)
    assert DRUM_CHANNEL not in channels
    assert all(0 <= c <= 15 for c in channels)
    assert [v.index for v in table] == list(range(len(table)))
    assert all(0 <= v.program <= 127 for v in table)
    assert assignment.shape == (n_layers,)
    if names is not None:
        for v in table:
            members = [names[i] for i in np.flatnonzero(assignment == v.index)]
            assert list(v.layers) == members


def transformer_names(blocks: int, parts=("attn", "mlp")) -> list[str]:
    return ["embed"] + [f"blocks.{b}.{p}" for b in range(blocks) for p in parts] + ["head"]


def kind_for(name: str) -> str:
    return "MultiheadAttention" if "attn" in name else ("Embedding" if name == "embed" else "Linear")


@pytest.mark.parametrize("n", [1, 2, 9, 10, 14, 15])
def test_up_to_15_layers_get_one_voice_each(n):
    layers = [(f"layer{i}", "Linear") for i in range(n)]
    table, assignment = plan_voices(layers)
    assert len(table) == n
    assert assignment.tolist() == list(range(n))
    assert [v.name for v in table] == [f"layer{i}" for i in range(n)]
    assert [v.layers for v in table] == [(f"layer{i}",) for i in range(n)]
    check_table(table, assignment, n)
    assert [v.channel for v in table] == [c for c in range(16) if c != 9][:n]


@pytest.mark.parametrize(
    "names",
    [
        transformer_names(10),  # embed, blocks.0.attn ... blocks.9.mlp, head: 22 layers
        transformer_names(19),  # exactly 40 layers
        transformer_names(10, ("norm1", "attn.qkv", "norm2", "mlp")),  # 42 layers, nested
    ],
    ids=["22", "40", "42"],
)
def test_transformer_layers_group_into_at_most_15_voices(names):
    layers = [(n, kind_for(n)) for n in names]
    table, assignment = plan_voices(layers)
    check_table(table, assignment, len(names), names)
    assert len(table) <= MAX_VOICES
    # blocks of the same shape are voiced alike (whole blocks, or even runs of them), never a few
    # blocks in detail and the rest as lumps
    sizes = [len(v.layers) for v in table if re.match(r"blocks\.\d", v.name)]
    assert max(sizes) - min(sizes) <= len(names[1:-1]) // len({n.split(".")[1] for n in names[1:-1]}), sizes
    # every layer in exactly one voice
    assert (assignment >= 0).all()
    recorded = [layer for v in table for layer in v.layers]
    assert sorted(recorded) == sorted(names) and len(recorded) == len(names)
    # the top-level singletons keep their own voices
    by_name = {v.name: v for v in table}
    assert by_name["embed"].layers == ("embed",)
    assert by_name["head"].layers == ("head",)
    # voices are in model order
    firsts = [names.index(v.layers[0]) for v in table]
    assert firsts == sorted(firsts)
    # every voice name is a path prefix (or a run of siblings) of its layers
    for v in table:
        base = v.name.rsplit(".", 1)[0] if "-" in v.name.rsplit(".", 1)[-1] else v.name
        assert all(layer == base or layer.startswith(base + ".") for layer in v.layers), v


def test_22_layer_transformer_voice_names():
    names = transformer_names(10)
    table, _ = plan_voices([(n, kind_for(n)) for n in names])
    # one voice per block (splitting some blocks into attn/mlp but not others would be uneven)
    assert [v.name for v in table] == ["embed"] + [f"blocks.{i}" for i in range(10)] + ["head"]
    assert {v.name: v.layers for v in table}["blocks.3"] == ("blocks.3.attn", "blocks.3.mlp")


def test_flat_sequential_of_30_is_chunked_into_contiguous_runs():
    names = [str(i) for i in range(30)]
    table, assignment = plan_voices([(n, "Linear") for n in names])
    check_table(table, assignment, 30, names)
    assert len(table) == 15
    assert [v.name for v in table] == [f"{2 * i}-{2 * i + 1}" for i in range(15)]
    assert assignment.tolist() == [i // 2 for i in range(30)]


def test_flat_sequential_of_17_runs_are_contiguous_and_named_by_range():
    names = [str(i) for i in range(17)]
    table, assignment = plan_voices([(n, "Linear") for n in names])
    check_table(table, assignment, 17, names)
    assert len(table) == 15
    assert (np.diff(assignment) >= 0).all() and (assignment >= 0).all()
    for v in table:
        idx = [int(layer) for layer in v.layers]
        assert idx == list(range(idx[0], idx[-1] + 1))
        assert v.name == (str(idx[0]) if len(idx) == 1 else f"{idx[0]}-{idx[-1]}")


def test_prefixed_flat_run_keeps_its_prefix():
    names = [f"encoder.layers.{i}" for i in range(45)]
    table, assignment = plan_voices([(n, "Linear") for n in names])
    check_table(table, assignment, 45, names)
    assert table[0].name == "encoder.layers.0-2"
    assert table[-1].name == "encoder.layers.42-44"


def test_root_module_layer_is_named_root():
    table, _ = plan_voices([("", "Linear"), ("child", "Linear")])
    assert [v.name for v in table] == ["(root)", "child"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["a", "b", "c", "0", "1", "2", "attn", "mlp"]), min_size=1, max_size=4).map(".".join),
        min_size=1, max_size=60, unique=True,
    ),
    st.integers(1, 15),
)
def test_any_tree_gets_at_most_max_voices_and_every_layer_once(names, max_voices):
    table, assignment = plan_voices([(n, "Linear") for n in names], max_voices=max_voices)
    assert len(table) <= max_voices
    if len(names) <= max_voices:
        assert len(table) == len(names)  # room for every layer: one voice each
    check_table(table, assignment, len(names), names)
    assert (assignment >= 0).all()
    voice_names = [v.name for v in table]
    assert len(set(voice_names)) == len(voice_names), voice_names


def test_chunked_parent_that_owns_parameters_does_not_get_a_made_up_path():
    # "encoder" owns parameters itself (e.g. a positional embedding) and has 30 children.
    names = ["encoder"] + [f"encoder.{i}" for i in range(30)]
    table, assignment = plan_voices([(n, "Linear") for n in names])
    check_table(table, assignment, len(names), names)
    holder = table[assignment[0]]
    assert "encoder" in holder.layers
    # there is no module "encoder.encoder": the voice must not be named as if there were
    assert not holder.name.startswith("encoder.encoder"), holder.name


def test_voice_named_like_a_layer_holds_that_layer():
    # "a" owns parameters and has 20 children "a.a" ... "a.t": the run holding "a" itself
    # must not be called "a.a" while the real layer "a.a" sits in another voice.
    names = ["a"] + [f"a.{c}" for c in "abcdefghijklmnopqrst"]
    table, assignment = plan_voices([(n, "Linear") for n in names])
    check_table(table, assignment, len(names), names)
    voice_names = [v.name for v in table]
    assert len(set(voice_names)) == len(voice_names), voice_names
    for v in table:
        if v.name in names:
            assert v.name in v.layers, (v.name, v.layers)


def test_voice_patterns_as_mapping():
    names = transformer_names(10)
    spec = {"attention": "blocks.*.attn", "mlp": ["blocks.*.mlp"], "ends": ["embed", "head"]}
    table, assignment = plan_voices([(n, kind_for(n)) for n in names], voices=spec)
    check_table(table, assignment, len(names), names)
    assert [v.name for v in table] == ["attention", "mlp", "ends"]
    assert table[0].layers == tuple(f"blocks.{b}.attn" for b in range(10))
    assert table[0].kind == "attention"
    assert table[2].layers == ("embed", "head")


def test_voice_patterns_as_list_leave_unmatched_layers_unsounded():
    names = transformer_names(3)
    table, assignment = plan_voices([(n, "Linear") for n in names], voices=["blocks.*", "head"])
    assert [v.name for v in table] == ["blocks.*", "head"]
    assert assignment[names.index("embed")] == -1
    assert table[0].layers == tuple(names[1:-1])


def test_earlier_patterns_take_layers_first():
    names = transformer_names(2)
    table, assignment = plan_voices([(n, "Linear") for n in names], voices={"attn": "*.attn", "rest": "*"})
    assert table[1].layers == ("embed", "blocks.0.mlp", "blocks.1.mlp", "head")
    assert (assignment >= 0).all()


def test_pattern_matching_nothing_raises():
    names = transformer_names(2)
    with pytest.raises(GradmidiError, match="matches no layer") as info:
        plan_voices([(n, "Linear") for n in names], voices={"dec": "decoder.*"})
    assert "\n" not in str(info.value)


def test_too_many_pattern_voices_raises():
    names = [f"l{i}" for i in range(20)]
    with pytest.raises(GradmidiError):
        plan_voices([(n, "Linear") for n in names], voices=names[:16])


def test_programs_override_by_name_number_and_gm_name():
    names = transformer_names(10)
    table, _ = plan_voices(
        [(n, kind_for(n)) for n in names],
        programs={"head": "Flute", "embed": 40, "blocks.0": "violin", "blocks.5": "Church Organ"},
    )
    by_name = {v.name: v for v in table}
    assert by_name["head"].program == GM_PROGRAMS.index("Flute") == 73
    assert by_name["embed"].program == 40
    assert by_name["blocks.0"].program == GM_PROGRAMS.index("Violin")
    assert by_name["blocks.5"].program == GM_PROGRAMS.index("Church Organ")


def test_programs_override_by_layer_name_and_glob():
    names = transformer_names(10)
    table, _ = plan_voices([(n, kind_for(n)) for n in names], programs={"blocks.7.mlp": "Tuba", "blocks.0.*": 12})
    by_name = {v.name: v for v in table}
    assert by_name["blocks.7"].program == GM_PROGRAMS.index("Tuba")  # a member layer's name reaches its voice
    assert by_name["blocks.0"].program == 12  # a glob over member layers reaches their voice


def test_programs_pattern_matching_nothing_and_bad_program_raise():
    layers = [("a", "Linear"), ("b", "Linear")]
    with pytest.raises(GradmidiError, match="matches no voice"):
        plan_voices(layers, programs={"zzz": 1})
    with pytest.raises(GradmidiError, match="out of range"):
        plan_voices(layers, programs={"a": 128})
    with pytest.raises(GradmidiError, match="unknown General MIDI program"):
        plan_voices(layers, programs={"a": "Theremin"})
    with pytest.raises(GradmidiError, match="ambiguous"):
        plan_voices(layers, programs={"a": "Electric"})


def test_no_layers_and_bad_max_voices_raise():
    with pytest.raises(GradmidiError):
        plan_voices([])
    with pytest.raises(GradmidiError):
        plan_voices([("a", "Linear")], max_voices=16)
    with pytest.raises(GradmidiError):
        plan_voices([("a", "Linear")], max_voices=0)


def test_default_programs_follow_layer_kind_and_vary_within_a_kind():
    table, _ = plan_voices([("c1", "Conv2d"), ("c2", "Conv2d"), ("fc", "Linear"), ("bn", "BatchNorm2d")])
    assert [v.kind for v in table] == ["convolution", "convolution", "linear", "normalisation"]
    assert table[0].program != table[1].program
    assert GM_PROGRAMS[table[0].program] == "Marimba"
    assert GM_PROGRAMS[table[2].program] == "Acoustic Grand Piano"


def builder_for(names):
    table, assignment = plan_voices([(n, "Linear") for n in names])
    header = ScoreHeader(voices=table, mapping=Mapping(), clock=Clock())
    return table, assignment, ScoreBuilder(header, assignment)


def test_group_norm_is_root_of_sum_of_squares():
    names = [str(i) for i in range(30)]
    table, assignment, builder = builder_for(names)
    rng = np.random.default_rng(0)
    layer_norms = rng.uniform(0.01, 10, size=30)
    present = np.ones(30, dtype=bool)
    norms, voice_present = builder.voice_norms(layer_norms, present)
    assert voice_present.all()
    for v in table:
        members = assignment == v.index
        assert norms[v.index] == pytest.approx(np.sqrt(np.sum(layer_norms[members] ** 2)), rel=1e-12)


def test_group_norm_skips_absent_layers_and_is_nan_without_any():
    names = [str(i) for i in range(30)]
    table, assignment, builder = builder_for(names)
    layer_norms = np.full(30, 3.0)
    layer_norms[1] = np.nan  # absent layers carry NaN norms: they must not poison the voice
    present = np.ones(30, dtype=bool)
    present[[1, 2, 3]] = False
    norms, voice_present = builder.voice_norms(layer_norms, present)
    assert norms[0] == pytest.approx(3.0)  # "0-1": only layer 0 counts
    assert np.isnan(norms[1]) and not voice_present[1]  # "2-3": nobody had a gradient
    assert norms[2] == pytest.approx(np.sqrt(18.0))
    assert voice_present[[0, 2]].all()


def test_group_norm_propagates_nan_and_inf_from_present_layers():
    names = [str(i) for i in range(30)]
    _, _, builder = builder_for(names)
    layer_norms = np.full(30, 1.0)
    layer_norms[0], layer_norms[2] = np.nan, np.inf
    norms, _ = builder.voice_norms(layer_norms, np.ones(30, dtype=bool))
    assert np.isnan(norms[0])
    assert norms[1] == np.inf
    assert np.isfinite(norms[2:]).all()
