"""Pipeline parallelism (``torch.distributed.pipelining``): a rank holds only its stages' layers.

Rank 0 voices the whole model, so when the Sonifier is made every rank tells the others which
layers it holds (one ``all_gather_object``); each step then sums every layer's values in one
all-reduce over all ranks (capture.py), each rank writing its own layers' positions. Stages cut
from one model keep its names (torchtitan's way: ``layers.3`` stays ``layers.3``); stages built
as separate modules whose names collide are told apart by their stage: ``stage1.0``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch

from .capture import Layer, model_layers
from .distributed import unwrap
from .errors import GradmidiError


@dataclass(frozen=True)
class PipelineLayers:
    """Every stage's layers as this rank sees them."""

    module: torch.nn.Module  # this rank's stage module (several: a ModuleList of them)
    layers: list[Layer]  # all stages' in stage order; those of other ranks' stages have no parameters here
    holders: dict[str, int]  # per layer name: how many ranks hold it (its stage's data-parallel replicas)


def pipeline_stages(model: Any) -> list | None:
    """The pipeline stages given as the model: one ``PipelineStage``, or a list of them (a schedule
    with several stages per rank); None for anything else."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.pipelining.stage import _PipelineStageBase

    stages = list(model) if isinstance(model, (list, tuple)) else [model]
    if not stages or not all(isinstance(s, _PipelineStageBase) for s in stages):
        if any(isinstance(s, _PipelineStageBase) for s in stages):
            raise GradmidiError("give the Sonifier this rank's pipeline stages only: a PipelineStage or a list of them")
        return None
    return stages


def gather_layers(stages: list) -> PipelineLayers:
    """Every rank's stages' layers, on every rank (a collective: every rank must call it)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise GradmidiError("pipeline stages need torch.distributed: make the Sonifier after init_process_group")
    modules = [unwrap(stage.submod) for stage in stages]  # DDP inside a stage: its inner module
    own = {stage.stage_index: model_layers(module) for stage, module in zip(stages, modules, strict=True)}
    told = {index: [_public(layer) for layer in layers] for index, layers in own.items()}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, told)
    by_stage: dict[int, list[dict]] = {}
    held: Counter[tuple[int, str]] = Counter()
    for ranks_stages in everyone:
        for index, layers in ranks_stages.items():
            by_stage.setdefault(index, layers)
            held.update((index, layer["name"]) for layer in layers)
    names = [layer["name"] for index in by_stage for layer in by_stage[index]]
    prefix = len(set(names)) < len(names)  # stages built as separate modules: "0" in each
    layers, holders = [], {}
    for index in sorted(by_stage):
        local = {layer.name: layer for layer in own.get(index, [])}
        for told_layer in by_stage[index]:
            name = told_layer["name"]
            layer = local.get(name) or Layer(params=(), **told_layer)
            if prefix:
                layer = replace(layer, name=f"stage{index}.{name}", shown=f"stage{index}.{layer.shown}")
            layers.append(layer)
            holders[layer.name] = held[index, name]
    module = modules[0] if len(modules) == 1 else torch.nn.ModuleList(modules)
    return PipelineLayers(module, layers, holders)


def _public(layer: Layer) -> dict:
    """A layer without its parameters: what other ranks need to voice it."""
    return {"name": layer.name, "class_name": layer.class_name, "shown": layer.shown, "factor": layer.factor,
            "adapter": layer.adapter, "trainable": layer.trainable}
